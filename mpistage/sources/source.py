"""The source of one file: the root's file, read ahead into free buffers and digested
as it goes by the engine's reader thread (:class:`mpistage.engine.reader.ChunkSource`).

It checks that the file is still the one the plan describes (device, inode,
size, mtime, ctime) before and after reading, so a file replaced or rewritten meanwhile
is never staged as a mix of old and new bytes.  After an error it zero-fills the rest,
so that the pipeline still completes and every rank learns the outcome at the end.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ..digest import new_digest
from ..engine.buffers import Buffer, BufferPool, PhaseClock, pieces
from ..engine.reader import ChunkSource, pread_full
from ..plan import Plan, file_identity, identity_change

if TYPE_CHECKING:
    import xxhash


class FileSource(ChunkSource):
    """Reads :attr:`Plan.source`, the one file of the plan, chunk by chunk."""

    def __init__(self, plan: Plan, pool: BufferPool, clock: PhaseClock) -> None:
        super().__init__(plan, pool, clock)
        self._digest = new_digest()
        self._digest_from = 0  # chunks before it were digested by an earlier reader
        self._fd = -1

    @classmethod
    def resumed(cls, previous: FileSource, first: int, pool: BufferPool,
                clock: PhaseClock) -> FileSource:
        """A reader for a re-formed run (:mod:`mpistage.engine.recovery`): it starts at chunk
        ``first`` and digests on from where ``previous`` (ended, without an error)
        stopped, into the same running digest, so the source's digest is still of one
        sequential read of every byte.  Chunks read again are not digested twice; the
        file's identity, checked at the end as always, tells if they changed."""
        assert first <= previous.chunks_read, "no chunk may be skipped by the digest"
        source = cls(previous.plan, pool, clock)
        source.first = first
        source._digest = previous._digest
        source._digest_from = source.chunks_read = previous.chunks_read
        source.bytes_read = first * previous.plan.chunk_size
        return source

    def _open(self) -> None:
        try:
            self._fd = os.open(self.plan.source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            self.error = self._changed(self._fd, "since it was checked")
        except OSError as exc:
            self.error = f"cannot open source {self.plan.source}: {exc.strerror}"

    def _fill(self, k: int, view: Buffer) -> None:
        self._read_chunk(self._fd, k, view, self._digest if k >= self._digest_from else None)

    def _finish(self) -> None:
        self.error = self._changed(self._fd, "while it was read")
        if self.error is None:
            self.digest = self._digest.hexdigest()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read_chunk(self, fd: int, k: int, view: Buffer,
                    digest: xxhash.xxh3_128 | None) -> None:
        """Read chunk ``k`` into ``view`` piece by piece, digesting each piece while it
        is still in the CPU's cache."""
        plan = self.plan
        offset = k * plan.chunk_size
        for piece in pieces(view):
            started = time.perf_counter()
            try:
                got = pread_full(fd, piece, offset)
            except OSError as exc:
                self.error = f"reading {plan.source} failed: {exc.strerror}"
                return
            finally:
                self.clock.add("read", time.perf_counter() - started)
            if got < len(piece):
                self.error = (f"source {plan.source} shrank during the read "
                              f"(ended at byte {offset + got} of {plan.size})")
                return
            if digest is not None:
                started = time.perf_counter()
                digest.update(piece)
                self.clock.add("digest", time.perf_counter() - started)
            offset += got

    def _changed(self, fd: int, when: str) -> str | None:
        """Why the open source is not the file the plan describes, or ``None``.

        Device, inode, size, modification and change time are compared, so a file
        replaced, truncated, appended to or rewritten in place (``rsync --inplace``, a
        job still writing it) is never staged as a mix of old and new bytes.
        """
        planned = self.plan.identity
        if planned is None:
            return None
        now = file_identity(os.fstat(fd))  # what is being read
        try:
            path_now = os.stat(self.plan.source)  # what the path names now
        except FileNotFoundError:
            path_now = None
        if path_now is None:
            what: str | None = "was removed"
        elif file_identity(path_now)[:2] != planned[:2]:
            what = "was replaced by another file"
        else:
            what = identity_change(planned, now)
        if what is None:
            return None
        return (f"source {self.plan.source} {what} {when}; no copy was kept "
                "(stage it again once it is complete)")
