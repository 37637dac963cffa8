#!/usr/bin/env bash
# Set up (once) and run every test of mpistage:
#   1. pytest: pure logic and the command line (spawns mpiexec itself);
#      the emulated-cluster tests too when root (they skip with a reason otherwise);
#   2. the collectives under `mpiexec -n 2` and `mpiexec -n 4` (pytest-mpi);
# then one closing line with the totals. Exits non-zero if any test failed.
#
#   bash tests/run.sh [extra pytest arguments for step 1]
#   MPISTAGE_MPI=openmpi|site bash tests/run.sh ...   # another MPI (see jobscripts/env.sh)
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
source jobscripts/env.sh || exit 1
export MPIEXEC_TIMEOUT=${MPIEXEC_TIMEOUT:-900}  # no run hangs forever, tests included
if [ "$(id -u)" = 0 ]; then  # CI runs as root; Open MPI's mpiexec refuses root unless told
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

results=$(mktemp -d "${TMPDIR:-/tmp}/mpistage-tests.XXXXXX")
status=0

echo "== pytest (pure logic, command line, emulated cluster)"
python -m pytest -p no:cacheprovider -m "not mpi" --junitxml="$results/serial.xml" "$@" || status=1

for ranks in 2 4; do
    echo "== mpiexec -n $ranks pytest --with-mpi -m mpi"
    # Every rank runs the session; rank 0 prints, the others keep logs for a post-mortem.
    # Each rank gets its own --basetemp: pytest's clean-up of old temp dirs would race.
    mpiexec -n "$ranks" sh -c '
        rank=${PMI_RANK:-${OMPI_COMM_WORLD_RANK:-0}}  # MPICH (hydra), Open MPI
        base="'"$results"'/tmp-n'"$ranks"'-rank$rank"
        if [ "$rank" = 0 ]; then exec "$@" --basetemp="$base"; fi
        exec "$@" --basetemp="$base" > "'"$results"'/n'"$ranks"'-rank$rank.log" 2>&1' sh \
        python -m pytest -p no:cacheprovider -q --with-mpi -m mpi \
            --junitxml="$results/mpi$ranks-rankRANK.xml" tests || {
        status=1
        tail -n 40 "$results"/n"$ranks"-rank*.log 2>/dev/null
    }
done

python tests/totals.py "$results"/serial.xml "$results"/mpi*-rank0.xml || status=1
rm -rf "$results"
exit $status
