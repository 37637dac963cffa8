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
from dataclasses import dataclass
from pathlib import Path

from mpi4py import MPI

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


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


def last_level_cache(caches: Path = _CACHES) -> int | None:
    """Bytes of this machine's last-level cache (the highest level sysfs lists for
    ``cpu0``: on most CPUs the L3 its cores share), ``None`` where it is not told."""
    deepest: tuple[int, int] | None = None
    for index in caches.glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
            size = int(text.rstrip("KMG")) * _UNITS[text[len(text.rstrip("KMG")):]]
        except (OSError, ValueError, KeyError):
            continue
        if deepest is None or level > deepest[0]:
            deepest = (level, size)
    return deepest[1] if deepest else None


@dataclass(frozen=True)
class Placement:
    """Where the transfer's ranks run, as the model needs it.

    Attributes:
        share: ranks per core on the most crowded kernel (:func:`share_of`).
        crowd: ranks on the most crowded kernel.
        cache: that kernel's last-level cache in bytes (``None``: unknown).
    """

    share: float
    crowd: int
    cache: int | None

    def cache_chunk(self, depth: int) -> int | None:
        """The largest chunk whose buffers (``depth`` per rank) of every rank on the
        most crowded kernel fit in its last-level cache together: beyond it a chunk's
        bytes leave the cache between MPI's copy, the digest and the write, and each
        pass reads memory instead (one host, 1 GiB to 2 ranks, depth 4: 4 MiB chunks
        0.85 s, 16 MiB 1.07 s, in a 32 MiB L3)."""
        return None if self.cache is None else self.cache // (self.crowd * max(depth, 1))


def placement_of(kernels: list[tuple[str, frozenset[int], int | None]]) -> Placement:
    """The :class:`Placement` of ranks that reported ``(kernel, cores, cache)`` each."""
    counts = Counter(kernel for kernel, _, _ in kernels)
    cores: dict[str, set[int]] = {}
    for kernel, usable, _ in kernels:  # one pass: 4096 ranks are 4096 kernels
        cores.setdefault(kernel, set()).update(usable)
    crowded = max(counts, key=lambda kernel: counts[kernel] / len(cores[kernel]))
    caches = [cache for kernel, _, cache in kernels if kernel == crowded and cache]
    return Placement(share_of([(k, c) for k, c, _ in kernels]), counts[crowded],
                     min(caches) if caches else None)


def placement(comm: MPI.Comm, root: int) -> Placement | None:
    """:func:`placement_of` the ranks of ``comm`` (collective; on ``root``, ``None``
    elsewhere)."""
    kernels = comm.gather((*this_kernel(), last_level_cache()), root=root)
    return placement_of(kernels) if kernels is not None else None
