"""The model's per-byte CPU rate ρ, measured in a few milliseconds where no calibration
gave it.

A relaying rank's per-byte work on a chunk is one copy into fresh pages (the write into
the page cache, which the kernel must first allocate), two copies through
memory already in use (MPI's: out of the sender's buffer, into the receiver's) and one
digest.  A chunk has two message ends at such a rank, so one end costs half a fresh
copy, one warm copy and half a digest.  Timed on :data:`PROBE_BYTES` with this thread's
CPU clock, that is ρ.

Why not a constant: on the machine that built this, ``mpistage calibrate`` measured ρ
at 1.0-1.5 GB/s on days when the VM handed freed memory back to its host (every fresh
page a fault to the host) and 2.6-3.0 GB/s on a quiet day; with the constant the demo's
prediction was 80-92 % too slow on the quiet day.  The fresh copy is what moves, and the
probe times it as the run finds it.
"""

from __future__ import annotations

import mmap
import os
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..digest import new_digest

if TYPE_CHECKING:
    from mpi4py import MPI

#: Bytes the probe copies and digests: past the small caches, a few milliseconds.
PROBE_BYTES = 4 << 20
#: Probes taken; the fastest counts (a probe pre-empted by another process is slow).
PROBES = 2


def per_end_rate(nbytes: int = PROBE_BYTES, probes: int = PROBES,
                 clock: Callable[[], float] = time.thread_time) -> float:
    """Bytes/s one rank's CPU carries per message end (the model's ``cpu_rate``):
    ``nbytes / (fresh/2 + warm + digest/2)``, each part timed by ``clock`` over
    ``nbytes``, the fastest of ``probes``.  The fresh copy is a write into a file in
    memory (``memfd_create``: page-cache pages, as the sink's write takes; an anonymous
    mapping's fresh pages are also zeroed first, and took 1.8x as long here)."""
    source = b"\x5a" * nbytes  # not numpy: importing it would cost every start ~50 ms
    best = float("inf")
    with mmap.mmap(-1, nbytes) as buffer:
        buffer[:] = source  # memory in use from here on, as MPI's buffers are
        for _ in range(probes):
            started = clock()
            _fresh_copy(source)
            copied = clock()
            buffer[:] = source
            recopied = clock()
            digest = new_digest()
            digest.update(buffer)
            digest.digest()
            ended = clock()
            seconds = (copied - started) / 2 + (recopied - copied) + (ended - recopied) / 2
            best = min(best, seconds)
    return nbytes / max(best, 1e-9)


def _fresh_copy(data: bytes) -> None:
    """Copy ``data`` into fresh pages: a file in memory where the system has
    ``memfd_create`` and the process may write a file that large (``ulimit -f``), else
    an anonymous mapping (whose pages are zeroed first)."""
    if hasattr(os, "memfd_create"):
        try:  # a buffered file writes all of it, however the kernel splits the write
            with open(os.memfd_create("mpistage-probe"), "wb") as file:
                file.write(data)
            return
        except OSError:  # EFBIG under a file-size limit: the mapping times it instead
            pass
    with mmap.mmap(-1, len(data)) as pages:
        pages[:] = data


def ranks_per_end_rate(comm: MPI.Comm, root: int) -> float | None:
    """:func:`per_end_rate` as the ranks find it all copying at once, as they do in a
    transfer: every rank of ``comm`` probes at the same time, and ``root`` gets their
    median (collective; ``None`` elsewhere).  One rank probing alone, while the others
    were still starting, read 1.2-3.2 GB/s on 4 ranks of 2 cores from run to run; the
    median of all four at once 2.2-2.6 (~25 ms, the probes sharing the cores)."""
    comm.Barrier()
    rates = comm.gather(per_end_rate(), root=root)
    return statistics.median(rates) if rates is not None else None
