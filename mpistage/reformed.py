"""A re-formed round's schedule and its sources (:mod:`mpistage.recovery`): the algorithm's
shape laid over the survivors, each edge carrying only what the child lacks, and a
survivor's own copy read back for the chunks it passes on."""

from __future__ import annotations

import os

from mpi4py import MPI

from .buffers import Buffer, BufferPool, PhaseClock, pieces
from .plan import Plan
from .schedules import DATA_TAG, Forward, Schedule, TreeSchedule
from .source import ChunkSource, _pread_full


class Reformed(Schedule):
    """An algorithm's shape laid over the survivors (``members``, the root first), on the
    first round's communicator with a tag of the round's own (no message of a broken
    round can match one of this round), each edge carrying only what the child lacks:
    chunk ``k`` goes to a child only if it holds fewer than ``k + 1`` chunks."""

    def __init__(self, shape: type[TreeSchedule], comm: MPI.Comm, members: list[int],
                 held: dict[int, int], arity: int, round_: int) -> None:
        super().__init__(comm, members[0])
        self.name = shape.name
        self.tag = DATA_TAG + round_
        size, me = len(members), members.index(comm.rank)
        parent = shape.parent_of(me, size, arity)
        self.parent = None if parent is None else members[parent]
        self.children = [members[c] for c in shape.children_of(me, size, arity)]
        self.child_held = {child: held[child] for child in self.children}

    def parent_for(self, k: int) -> int | None:
        return self.parent

    def post_receive(self, buf: Buffer, k: int) -> MPI.Request:
        assert self.parent is not None, "the root receives nothing"
        return self.comm.Irecv(buf, source=self.parent, tag=self.tag)

    def post_forward(self, buf: Buffer, k: int) -> Forward:
        lacking = [child for child in self.children if self.child_held[child] <= k]
        return Forward([lambda child=child: self.comm.Isend(buf, dest=child, tag=self.tag)
                        for child in lacking], peers=lacking)


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
            if _pread_full(self._fd, piece, offset) < len(piece):
                self.error = f"{self.path} is shorter than the chunks it held"
                return
            offset += len(piece)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


