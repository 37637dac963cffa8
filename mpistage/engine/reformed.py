"""A re-formed round's schedule (:mod:`mpistage.engine.recovery`): the algorithm's shape
laid over the survivors, each edge carrying only what the child lacks (what a survivor
passes on it reads back from its own copy: :class:`mpistage.sources.held.HeldChunks`)."""

from __future__ import annotations

from mpi4py import MPI

from .buffers import Buffer
from .forward import Forward
from .schedules import DATA_TAG, Schedule, TreeSchedule


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
