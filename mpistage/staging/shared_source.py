"""Before every node reads a share of the source: is it the same file on every node, and
how fast do they read it, one alone and all together?

``--read-by all`` (the ``ring`` schedule, :mod:`mpistage.engine.ring`) has every node read
the chunks it is dealt from the source path as it sees it; that is only right where the
path names the same file everywhere.  Each node that takes part reports the size, the
modification time and a digest of the first and last :data:`SAMPLE` bytes as it sees
them; a node that sees anything else (no such file, another size, another mtime, other
bytes: a node-local copy of an older version) refuses the run with one line from rank 0,
before any byte moves.  ``--read-by auto`` asks only where the root's source is on a
network or parallel file system (:data:`SHARED_FILE_SYSTEMS`, read from
``/proc/self/mountinfo``), and takes a node that sees another file as a reason to read
on the root.

The model then needs the read rates (:func:`read_rates`): the root reads three
half-blocks alone (one client's rate, the model's ``R``: the best of three), then every
node reads a block of its own at once (the rate all of them get together, ``A``): a few
hundred milliseconds where one client reads 25 Mbit/s, nothing to speak of from a page
cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from mpi4py import MPI

from ..digest import new_digest
from ..engine.reader import pread_full
from ..engine.waiting import quiet_barrier
from ..errors import UsageError
from ..model.decide import AUTO
from ..plan import SourceInfo
from .options import StageOptions

#: Bytes read at each end of the file for its identity check.
SAMPLE = 64 << 10
#: Bytes each node reads to measure the read rates all together (the root reads half as
#: much :data:`ALONE_READS` times alone first).
PROBE_BLOCK = 256 << 10
ALONE_READS = 3

#: File system types (``/proc/self/mountinfo``) whose files other machines see too: where
#: ``--read-by auto`` looks whether every node should read a share.
SHARED_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "cephfs", "ceph", "beegfs", "cifs", "smb3", "9p",
    "panfs", "pvfs2", "orangefs", "wekafs", "glusterfs", "fuse.glusterfs", "fuse.sshfs",
    "fuse.cephfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "virtiofs",
})


@dataclass(frozen=True)
class ReadRates:
    """Bytes/s the source is read at by the root alone, and by every node together."""

    alone: float
    together: float


def file_system_type(path: str) -> str:
    """The type of the file system holding ``path`` (the mount with the longest prefix
    in ``/proc/self/mountinfo``), or ``""`` where that cannot be read."""
    real = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[4].replace("\\040", " ")
                dash = fields.index("-")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[dash + 1]
    except (OSError, ValueError, IndexError):
        return ""
    return kind


def seen_as(path: str, size: int) -> tuple[int, int, str] | str:
    """What this node sees at ``path``: its size, modification time and a digest of its
    first and last :data:`SAMPLE` bytes; or why it sees nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        info = os.fstat(fd)
        digest = new_digest()
        digest.update(os.pread(fd, SAMPLE, 0))
        if size > SAMPLE:
            digest.update(os.pread(fd, SAMPLE, max(SAMPLE, size - SAMPLE)))
        return info.st_size, info.st_mtime_ns, digest.hexdigest()
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)


def _difference(mine: tuple[int, int, str], theirs: tuple[int, int, str] | str) -> str | None:
    """How another node's view of the source differs from the root's, or ``None``."""
    if isinstance(theirs, str):
        return f"cannot read it ({theirs})"
    if theirs[0] != mine[0]:
        return f"sees {theirs[0]} bytes, not {mine[0]}"
    if theirs[1] != mine[1]:
        return "sees another modification time"
    if theirs[2] != mine[2]:
        return "sees other bytes"
    return None


def same_everywhere(comm: MPI.Comm, root: int, info: SourceInfo, names: list[str],
                    required: bool) -> bool:
    """Whether every rank of ``comm`` (a node each, named by ``names``) sees the root's
    source as the root does (collective).

    Raises:
        UsageError: on every rank, where one does not and ``required``.
    """
    views = comm.gather(seen_as(info.source, info.size), root=root)
    verdict: str | None = None
    if comm.rank == root:
        assert views is not None
        mine = views[root]
        if isinstance(mine, str):
            verdict = f"the root cannot read {info.source} again ({mine})"
        else:
            for rank, view in enumerate(views):
                differs = _difference(mine, view)
                if differs is not None:
                    verdict = f"{names[rank]} {differs} at {info.source}"
                    break
    verdict = comm.bcast(verdict, root=root)
    if verdict is not None and required:
        raise UsageError(f"--read-by all needs the same source on every node: {verdict}")
    return verdict is None


def read_rates(comm: MPI.Comm, root: int, info: SourceInfo) -> ReadRates | None:
    """The source's read rates, the root's alone and every node's together (collective;
    on the root, ``None`` elsewhere).  Each reads blocks no other reads, from the end of
    the file back, so no block comes from a cache another read filled."""
    block = max(1, min(PROBE_BLOCK, info.size // (2 * comm.size + 2 * ALONE_READS)))
    alone = alone_rate(info.source, info.size, block) if comm.rank == root else 0.0
    quiet_barrier(comm)
    offset = info.size - block * (2 * ALONE_READS + 1 + (comm.rank - root) % comm.size)
    mine = _timed_read(info.source, max(0, offset), block)
    slowest = comm.reduce(mine, op=MPI.MAX, root=root)
    if comm.rank != root or not (alone > 0 and slowest < float("inf")):
        return None  # elsewhere, or a read failed: the run's own reads will tell why
    return ReadRates(alone=alone, together=comm.size * block / max(slowest, 1e-9))


def alone_rate(path: str, size: int, block: int) -> float:
    """Bytes/s one client reads ``path`` at (0: a read failed): the best of
    :data:`ALONE_READS` reads of half a ``block`` each, from the file's end back.  One read
    of a hundred KiB is at the mercy of one stall (a delayed acknowledgement costs 40 ms:
    128 KiB then read at 19 Mbit/s on a 50 Mbit/s link), three rarely all are."""
    half = max(1, block // 2)
    times = [_timed_read(path, max(0, size - i * half), half)
             for i in range(1, ALONE_READS + 1)]
    best = min(times)
    return half / max(best, 1e-9) if best < float("inf") else 0.0


def _timed_read(path: str, offset: int, length: int) -> float:
    """Seconds to read ``length`` bytes of ``path`` at ``offset`` (inf: it failed)."""
    started = time.perf_counter()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            pread_full(fd, memoryview(bytearray(length)), max(0, offset))
        finally:
            os.close(fd)
    except OSError:
        return float("inf")
    return time.perf_counter() - started


def look_at_source(comm: MPI.Comm, root: int, info: SourceInfo, options: StageOptions,
                   names: list[str], files: int) -> tuple[bool, tuple[float, float] | None]:
    """Whether every node may read a share of the source (``--read-by all`` demands it,
    ``auto`` looks where the root's source is on a shared file system), and the source's
    read rates on the root: alone and all nodes together (where only the root may read,
    alone; ``None`` where the source is not on a shared file system).  Collective over
    the transfer's ``comm``.

    Raises:
        UsageError: on every rank, for ``--read-by all`` where a node sees another file.
    """
    required = options.every_node_reads
    if not required:
        on_shared = (comm.rank == root and not info.stream and not files and info.size > 0
                     and file_system_type(info.source) in SHARED_FILE_SYSTEMS)
        may_share = (options.read_by == AUTO and options.auto_algorithm and comm.size > 1
                     and options.pipe is None and options.compress == "none")
        if not comm.bcast(on_shared and may_share, root=root):
            if not on_shared:
                return False, None
            # the root reads alone: the model must still know how fast
            alone = alone_rate(info.source, info.size, min(PROBE_BLOCK, info.size))
            return False, (alone, float("inf")) if alone > 0 else None
    if not same_everywhere(comm, root, info, names, required):
        return False, None
    rates = read_rates(comm, root, info) if info.size > 0 else None
    return True, None if rates is None else (rates.alone, rates.together)
