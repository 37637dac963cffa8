"""A survivor's own copy read back, as the source of a re-formed round
(:mod:`mpistage.engine.recovery`): the chunks it holds and a child of the new round lacks."""

from __future__ import annotations

import os

from ..engine.buffers import Buffer, BufferPool, PhaseClock, pieces
from ..engine.reader import ChunkSource, pread_full
from ..plan import Plan


class HeldChunks(ChunkSource):
    """A survivor's own copy read back (its temp file), for the chunks it holds and a
    child of the re-formed run lacks.  Not digested: the node digested them when it
    wrote them, and the child digests what it writes."""

    def __init__(self, plan: Plan, pool: BufferPool, clock: PhaseClock, path: str) -> None:
        super().__init__(plan, pool, clock)
        self.path = path
        self._fd = -1

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.error = f"cannot read back {self.path}: {exc.strerror}"

    def _fill(self, k: int, view: Buffer) -> None:
        offset = k * self.plan.chunk_size
        for piece in pieces(view):
            if pread_full(self._fd, piece, offset) < len(piece):
                self.error = f"{self.path} is shorter than the chunks it held"
                return
            offset += len(piece)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
