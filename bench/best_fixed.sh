#!/usr/bin/env bash
# The default's choice against fixed choices, side by side in one run: one line per run
# with the whole command's seconds, the transfer's (median over nodes), the CPU of a
# rank (median / max), the model's prediction, and the plan that ran.
#
#   bash bench/best_fixed.sh shm     # one host, 2 ranks as nodes, 1 GiB tmpfs -> tmpfs, and 2 x cp
#   bash bench/best_fixed.sh demo    # one host, 4 ranks as nodes, 64 MiB (the demo's case)
#   bash bench/best_fixed.sh c8      # 8 emulated hosts at 100 Mbit/s, 64 MiB   (root: a cluster)
#   bash bench/best_fixed.sh c16     # 16 hosts at 100 Mbit/s, 64 MiB
#   bash bench/best_fixed.sh c8g     # 8 hosts at 1 Gbit/s, 256 MiB
#
# ROUNDS=2 (default) repeats the whole set; the runs of a round are interleaved with the
# default's, so a slow spell of the machine does not land on one setting only.
# FIXED='OPTIONS;OPTIONS…' replaces the fixed settings (e.g. FIXED='-c 4M;-c 16M --depth 2').
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
source "$top/jobscripts/env.sh" >/dev/null
case=${1:?usage: best_fixed.sh shm|demo|c8|c16|c8g}
rounds=${ROUNDS:-2}
work=$(mktemp -d /dev/shm/mpistage-best.XXXXXX)
cluster=""
cleanup() {
    [ -n "$cluster" ] && python -m mpistage.cluster --name "$cluster" down >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

fixed=("-a chain -c 64K" "-a chain -c 256K" "-a chain -c 1M" "-a chain -c 4M" "-a chain -c 16M"
       "-a twotree -c 1M" "-a binomial -c 4M")
if [ -n "${FIXED:-}" ]; then  # FIXED='-c 4M;-c 16M --depth 2': other settings, ;-separated
    IFS=';' read -ra fixed <<< "$FIXED"
fi
case $case in
    shm) size=1024 ranks=2 ;;
    demo) size=64 ranks=4 ;;
    c8) size=64 hosts=8 rate=100mbit ;;
    c16) size=64 hosts=16 rate=100mbit ;;
    c8g) size=256 hosts=8 rate=1gbit ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
esac
head -c $((size << 20)) /dev/urandom > "$work/in.dat"

show() {  # OPTIONS START END: one line from the run's report
    python - "$1" "$2" "$3" "$work/report.json" <<'PY'
import json, sys
options, start, end, path = sys.argv[1:]
r = json.load(open(path))
p, ph = r.get("prediction") or {}, r["phases"]
bound = (p.get("bounds") or {}).get(r["algorithm"], "-")
print(f"{options or '(default)':>20}  whole {float(end) - float(start):6.2f} s  transfer "
      f"{ph['transfer']['median']:6.3f} s  cpu {ph['cpu']['median']:.3f}/{ph['cpu']['max']:.3f} s"
      f"  predicted {p.get('predicted', 0):6.3f} s  {r['algorithm']} {r['chunk_size'] >> 10} KiB"
      f" ({bound})", flush=True)
PY
}

run_local() {  # OPTIONS
    rm -rf "$work"/n*; for ((n = 0; n < ranks; n++)); do mkdir "$work/n$n"; done
    local start end
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    mpiexec -n "$ranks" mpistage --ranks-as-nodes --report "$work/report.json" $1 \
        "$work/in.dat" "$work/n{node}/" >/dev/null
    end=$(date +%s.%N)
    show "$1" "$start" "$end"
}

run_cluster() {  # OPTIONS
    python -m mpistage.cluster --name "$cluster" mpiexec -- rm -f /scratch/in.dat >/dev/null
    local start end
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    python -m mpistage.cluster --name "$cluster" mpiexec -- mpistage --report "$work/report.json" \
        $1 "$work/in.dat" /scratch >/dev/null
    end=$(date +%s.%N)
    show "$1" "$start" "$end"
}

if [ -n "${hosts:-}" ]; then
    cluster=best$$
    python -m mpistage.cluster --name "$cluster" up --hosts "$hosts" --rate "$rate" >/dev/null
    runner=run_cluster
else
    runner=run_local
fi
echo "== $case: ${size} MiB; $(nproc) cores; mpistage $(git -C "$top" rev-parse --short HEAD)"
for ((round = 1; round <= rounds; round++)); do
    for options in "" "${fixed[@]}"; do
        $runner "$options"
    done
    if [ "$case" = shm ]; then  # the bound: two cp, each reading and writing once
        start=$(date +%s.%N)
        cp "$work/in.dat" "$work/cp1" & cp "$work/in.dat" "$work/cp2"; wait
        end=$(date +%s.%N)
        python -c "import sys; print(f'{\"2 x cp\":>20}  whole {float(sys.argv[2]) - float(sys.argv[1]):6.2f} s')" "$start" "$end"
        rm -f "$work/cp1" "$work/cp2"
    fi
done
