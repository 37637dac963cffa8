#!/usr/bin/env bash
# Property-based fuzzing of mpistage.stage(): N randomised transfers (nodes 1-9, root,
# algorithm, chunk, depth, sizes around chunk boundaries, --ranks-as-nodes or not, old
# copies and symlinks at DEST, failed writes, corrupted chunks, bad nodes with and without
# --skip-bad-nodes), each checked against what the options promise, in one MPI job of 9
# ranks (tests/fuzz.py). Ends with the line "N transfers, M mismatches"; exit 0 iff M = 0.
#
#   bash tests/fuzz.sh [N] [fuzz.py options]   # N defaults to 100; the README runs 1000
#   FUZZ_SEED=S bash tests/fuzz.sh N           # repeat a run (the seed is on stderr)
#   MPISTAGE_MPI=openmpi bash tests/fuzz.sh N  # another MPI (see jobscripts/env.sh)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
source jobscripts/env.sh || exit 1  # the venv; MPI's yield and oversubscription knobs
count=${1:-100}
shift $(( $# > 0 ? 1 : 0 ))
# No run hangs forever: a few seconds a transfer is ample (most take a fraction of one).
export MPIEXEC_TIMEOUT=${MPIEXEC_TIMEOUT:-$(( 300 + 5 * count ))}
if [ "$(id -u)" = 0 ]; then  # CI runs as root; Open MPI's mpiexec refuses root unless told
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
exec mpiexec -n 9 python tests/fuzz.py "$count" "$@"
