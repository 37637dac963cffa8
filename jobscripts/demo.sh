#!/usr/bin/env bash
# Try mpistage on this machine: set up, make a 64 MiB sample, stage it to 4 emulated nodes
# (4 ranks, each its own node, each with its own directory), show the summary, check it.
#
#   bash jobscripts/demo.sh [SIZE_MIB] [RANKS]
set -euo pipefail
source "$(dirname "$0")/env.sh"
size_mib=${1:-64}
ranks=${2:-4}
work=$(mktemp -d "${TMPDIR:-/tmp}/mpistage-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
head -c "$((size_mib << 20))" /dev/urandom > "$work/sample.bin"
for ((node = 0; node < ranks; node++)); do mkdir "$work/node$node"; done

echo "\$ mpiexec -n $ranks mpistage --ranks-as-nodes --verify --report report.json sample.bin 'node{node}/'"
mpiexec -n "$ranks" mpistage --ranks-as-nodes --verify --report "$work/report.json" \
    "$work/sample.bin" "$work/node{node}/"
for ((node = 0; node < ranks; node++)); do
    cmp "$work/sample.bin" "$work/node$node/sample.bin"
done
echo "checked with cmp: all $ranks copies are identical to the sample"
