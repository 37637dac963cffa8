# Source me: sets up (once) and activates the project's virtualenv with mpistage, the PyPI
# MPICH wheel (which provides mpiexec) and the test tools, and sets MPICH's yield knobs.
#
#   source jobscripts/env.sh            # from the repository's top directory
#
# MPISTAGE_VENV picks the venv's place (default .venv); MPISTAGE_EXTRAS the extras
# (default mpich,test). On a site with its own MPI, set MPISTAGE_EXTRAS=test and make
# sure its mpicc is on PATH: pip then builds mpi4py against that MPI.

_mpistage_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_mpistage_venv=${MPISTAGE_VENV:-$_mpistage_top/.venv}
if [ ! -x "$_mpistage_venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$_mpistage_venv" || {
        echo "mpistage: cannot create a virtualenv; on Debian: apt-get install python3-venv" >&2
        return 1 2>/dev/null || exit 1
    }
fi
if ! "$_mpistage_venv/bin/python" -c "import mpistage, mpi4py, pytest_mpi" 2>/dev/null \
        || [ "$_mpistage_top/pyproject.toml" -nt "$_mpistage_venv/.mpistage-installed" ]; then
    "$_mpistage_venv/bin/pip" install --quiet --disable-pip-version-check \
        -e "$_mpistage_top[${MPISTAGE_EXTRAS:-mpich,test}]" || { return 1 2>/dev/null || exit 1; }
    touch "$_mpistage_venv/.mpistage-installed"
fi
export PATH="$_mpistage_venv/bin:$PATH"
# More ranks than cores (laptops, CI, the emulated cluster): make MPICH yield the core
# while it waits instead of spinning (see ../shared/docs/emulated-cluster.md).
export MPIR_CVAR_POLLS_BEFORE_YIELD=${MPIR_CVAR_POLLS_BEFORE_YIELD:-10}
export MPIR_CVAR_ENABLE_HEAVY_YIELD=${MPIR_CVAR_ENABLE_HEAVY_YIELD:-1}
unset _mpistage_top _mpistage_venv
