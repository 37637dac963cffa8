"""The engine's send side (engine/outbox.py): a chunk's buffer is held until every child
has it, progress is told once it left, and a send MPI refuses is a stall that blames."""

from __future__ import annotations

import pytest
from mpi4py import MPI

from mpistage.engine.buffers import BufferPool, PhaseClock
from mpistage.engine.forward import Forward
from mpistage.engine.frames import framing_for
from mpistage.engine.outbox import Outbox, Progress
from mpistage.engine.waits import Waits
from mpistage.errors import Stalled
from mpistage.plan import Plan

CHUNK = 1024


class _ToSelf:
    """A schedule whose one child is this very process (synchronous sends, so a send
    completes only once the test receives it)."""

    children = [0]
    point_to_point = True

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    def post_forward(self, message: memoryview, k: int) -> Forward:
        def post() -> MPI.Request:
            if self.refuse:
                raise MPI.Exception(MPI.ERR_OTHER)
            return MPI.COMM_SELF.Issend(message, dest=0, tag=k)
        return Forward([post], peers=[0])

    def parent_for(self, k: int) -> int | None:
        return None

    def message_bytes(self, chunk: int) -> int:
        return chunk


def _outbox(schedule: _ToSelf, told: list[tuple[int, int]]) -> tuple[Outbox, BufferPool]:
    plan = Plan(source="/x/src", size=3 * CHUNK, mode=0o644, mtime_ns=0, chunk_size=CHUNK,
                algorithm="chain", dest="/d")
    pool = BufferPool(3, CHUNK)
    blame = lambda receiving, failed: "node 0 took no data"  # noqa: E731
    waits = Waits(plan, schedule, PhaseClock(), 5.0, on_wake=lambda: None, blame=blame)
    progress = Progress(lambda done, total: told.append((done, total)), 0, plan.size)
    return Outbox(schedule, pool, framing_for(plan), waits, lambda: None, blame, progress), pool


def test_a_chunk_leaves_once_its_child_has_it_and_its_buffer_comes_back() -> None:
    told: list[tuple[int, int]] = []
    outbox, pool = _outbox(_ToSelf(), told)
    index = pool.take(block=False)
    pool.buffers[index][:CHUNK] = b"x" * CHUNK
    assert outbox.forward(0, index) is False, "chunk 0 of 3 is not the last"
    pool.release(index)  # the dispatch's hold: the writer is done with it
    outbox.retire(block=False)
    assert outbox and told == [], "the child has not taken it"
    got = bytearray(CHUNK)
    MPI.COMM_SELF.Recv(got, source=0, tag=0)
    outbox.retire(block=True)
    assert not outbox and told == [(CHUNK, 3 * CHUNK)] and got == b"x" * CHUNK
    assert outbox.wire_bytes == CHUNK
    assert index in {pool.take(block=False) for _ in range(3)}, "its buffer is free again"


def test_a_send_mpi_refuses_is_a_stall_naming_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Forward, "POST_GRACE", 0.0)
    outbox, pool = _outbox(_ToSelf(refuse=True), [])
    index = pool.take(block=False)
    with pytest.raises(Stalled, match="^node 0 took no data: "):
        outbox.forward(0, index)
        outbox.retire(block=True)
    assert outbox.suspects() == [0]
