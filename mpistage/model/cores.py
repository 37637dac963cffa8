"""How many of a transfer's ranks share each core: the cost model's ``share``.

Ranks that run under one kernel share its cores, whatever MPI calls a node: 4 ranks
staged "as nodes" on a 2-core host, or emulated hosts that are network namespaces of one
machine, each get half a core or less, and every chunk message's CPU costs them that
much more wall time.  A kernel is told apart by its boot id (Linux's
``/proc/sys/kernel/random/boot_id``, new at every boot, distinct between machines); its
cores are those its ranks may run on, together: four ranks that MPI pins to a core each
see one usable core apiece, and are one rank per core, not four.
"""

from __future__ import annotations

import os
from collections import Counter

from mpi4py import MPI

_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def this_kernel() -> tuple[str, frozenset[int]]:
    """``(kernel id, the cores this process may run on)`` (the host name where the boot
    id cannot be read: then ranks on one machine count as one kernel only if their
    hosts' names agree)."""
    try:
        with open(_BOOT_ID, encoding="ascii") as source:
            kernel = source.read().strip()
    except OSError:
        kernel = os.uname().nodename
    try:
        cores = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = frozenset(range(os.cpu_count() or 1))
    return kernel, cores or frozenset({0})


def share_of(kernels: list[tuple[str, frozenset[int]]]) -> float:
    """Ranks per core on the most crowded kernel (``kernels``: every rank's
    :func:`this_kernel`; a kernel's cores are those any of its ranks may use)."""
    counts = Counter(kernel for kernel, _ in kernels)
    cores: dict[str, set[int]] = {}
    for kernel, usable in kernels:
        cores.setdefault(kernel, set()).update(usable)
    return max(count / len(cores[kernel]) for kernel, count in counts.items())


def core_share(comm: MPI.Comm, root: int) -> float:
    """:func:`share_of` the ranks of ``comm`` (collective; the result on ``root``,
    0 elsewhere)."""
    kernels = comm.gather(this_kernel(), root=root)
    return share_of(kernels) if kernels is not None else 0.0
