"""The engine's receive side (engine/inbox.py): receives posted ahead, chunks taken in
order, and a chunk cut short by its sender's death never passed on."""

from __future__ import annotations

import pytest
from mpi4py import MPI

from mpistage.engine.buffers import BufferPool, PhaseClock
from mpistage.engine.frames import framing_for
from mpistage.engine.inbox import Inbox
from mpistage.engine.outbox import Outbox, Progress
from mpistage.engine.waits import Waits
from mpistage.errors import Stalled
from mpistage.plan import Plan

CHUNK = 1024
TAG = 300


class _FromSelf:
    """A schedule whose parent is this very process."""

    children: list[int] = []
    point_to_point = True
    forwards_as_received = False

    def post_receive(self, view: memoryview, k: int) -> MPI.Request:
        return MPI.COMM_SELF.Irecv(view, source=0, tag=TAG + k)

    def parent_for(self, k: int) -> int | None:
        return 0

    def message_bytes(self, chunk: int) -> int:
        return chunk


def _inbox(chunks: int) -> tuple[Inbox, BufferPool]:
    plan = Plan(source="/x/src", size=chunks * CHUNK, mode=0o644, mtime_ns=0,
                chunk_size=CHUNK, algorithm="chain", dest="/d")
    schedule, pool, framing = _FromSelf(), BufferPool(2, CHUNK), framing_for(plan)
    blame = lambda receiving, failed: "no data from node 0"  # noqa: E731
    waits = Waits(plan, schedule, PhaseClock(), 5.0, on_wake=lambda: None, blame=blame)
    outbox = Outbox(schedule, pool, framing, waits, lambda: None, blame,
                    Progress(lambda done, total: None, 0, plan.size))
    inbox = Inbox(schedule, pool, framing, waits, outbox, buffer_back=lambda: pool.take(),
                  peer_name="node {}".format, chunks=iter(range(plan.nchunks)))
    return inbox, pool


def test_chunks_come_in_order_into_buffers_posted_ahead() -> None:
    inbox, pool = _inbox(3)
    messages = [bytes([k]) * CHUNK for k in (0, 1)]
    # out of order on the wire: the tags keep them apart
    sends = [MPI.COMM_SELF.Isend(messages[k], dest=0, tag=TAG + k) for k in (1, 0)]
    k, index = inbox.next()
    assert k == 0 and bytes(pool.buffers[index][:CHUNK]) == b"\0" * CHUNK
    assert inbox.posted == 2, "as many posted ahead as there are buffers"
    pool.release(index)
    k, index = inbox.next()
    assert k == 1 and bytes(pool.buffers[index][:CHUNK]) == b"\1" * CHUNK
    assert inbox.posted == 3 and inbox.awaited == 1
    pool.release(index)
    MPI.Request.Waitall(sends)
    inbox.cancel()  # chunk 2 never comes: its receive is cancelled, its buffer freed


def test_a_chunk_cut_short_is_a_stall_naming_its_sender() -> None:
    inbox, _ = _inbox(2)
    short = b"x" * (CHUNK // 2)
    send = MPI.COMM_SELF.Isend(short, dest=0, tag=TAG)
    with pytest.raises(Stalled, match=r"^chunk 0 from node 0 arrived cut short \(512 bytes\)"):
        inbox.next()
    send.Wait()
    inbox.cancel()
