"""The engine's receive side: receives posted ahead, chunks taken from the parent in order.

Several receives stay posted (as many as free buffers allow), so a chunk's data lands
while the engine forwards and hands on the one before it.  A schedule whose chunks come
from several parents (:attr:`Schedule.forwards_as_received`) forwards each chunk the
moment it arrives, ahead of its turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from mpi4py import MPI

from ..errors import Stalled
from .buffers import BufferPool
from .frames import Framing
from .outbox import Outbox
from .schedules import Schedule
from .waits import Waits


class Inbox:
    """The ``chunks`` received from the parent, ``first`` of them first, in the order
    they come (an iterator, taken as receives are posted: a stream's never ends, its
    last frame does).
    ``buffer_back()`` waits for a buffer from the writer when every one is there;
    ``peer_name`` names a rank for messages."""

    def __init__(self, schedule: Schedule, pool: BufferPool, framing: Framing,
                 waits: Waits, outbox: Outbox,
                 buffer_back: Callable[[], int], peer_name: Callable[[int], str],
                 chunks: Iterator[int], first: int = 0) -> None:
        self.schedule, self.pool, self.framing = schedule, pool, framing
        self.waits, self.outbox, self._buffer_back = waits, outbox, buffer_back
        self.peer_name = peer_name
        self._chunks = chunks
        self._upcoming: int | None = -1  # -1: not taken yet; None: no more
        self._recvs: deque[tuple[int, int, MPI.Request]] = deque()
        #: Receives posted so far.
        self.posted = 0
        #: The chunk a receive is waiting for.
        self.awaited = first
        #: Chunks forwarded as they arrived, ahead of their turn.
        self.early: set[int] = set()

    def next(self) -> tuple[int, int]:
        """Keep receives posted ahead; return the oldest (chunk, buffer) once it arrived."""
        self._post_ahead()
        k, index, request = self._recvs.popleft()
        self.awaited = k
        if self.schedule.forwards_as_received:
            self._wait_forwarding(k, index, request)
        else:
            status = MPI.Status()
            self.waits.wait([request], receiving=True, status=status)
            self._check_whole(k, index, status)
        return k, index

    def _post_ahead(self) -> None:
        """Post receives into every free buffer; where none is free and none is posted,
        free one: from the oldest sends, else from the writer."""
        while (self._next_post() is not None
               and len(self._recvs) < len(self.pool.buffers)):
            index = self.pool.take(block=False)
            if index is None:
                if self._recvs:
                    break
                if self.outbox:
                    self.outbox.retire(block=True)
                    continue
                index = self._buffer_back()
            k = self._next_post()
            assert k is not None
            view = self.framing.receive_space(self.pool.buffers[index], k)
            self._recvs.append((k, index, self.schedule.post_receive(view, k)))
            self._upcoming = -1
            self.posted += 1

    def _next_post(self) -> int | None:
        """The next chunk to post a receive for (``None``: every one is posted)."""
        if self._upcoming == -1:
            self._upcoming = next(self._chunks, None)
        return self._upcoming

    def _check_whole(self, k: int, index: int, status: MPI.Status) -> None:
        """Chunk ``k`` arrived whole in buffer ``index``.

        Raises:
            Stalled: it arrived short (its sender was killed in mid-message): the chunk
                is neither forwarded nor written, and the next round sends it again.
        """
        if not self.schedule.point_to_point:  # a collective's status has no count
            return
        count = status.Get_count(MPI.BYTE)
        if not self.framing.whole(self.pool.buffers[index], k, count):
            parent = self.schedule.parent_for(k)
            sender = "MPI" if parent is None else self.peer_name(parent)
            raise Stalled(f"chunk {k} from {sender} arrived cut short ({count} bytes): "
                          "its sender stopped mid-message")

    def _wait_forwarding(self, k: int, index: int, oldest: MPI.Request) -> None:
        """Wait for chunk ``k``'s receive, forwarding every later chunk the moment it
        arrives (:attr:`Schedule.forwards_as_received`: chunks that come from several
        parents; were they forwarded in order, each tree would wait for the other's
        chunks, and the pipeline would step at the pace of both trees' depths)."""
        status = MPI.Status()
        while k not in self.early:
            later = [(j, i, r) for j, i, r in self._recvs if j not in self.early]
            arrived = self.waits.wait([oldest, *(r for *_, r in later)], receiving=True,
                                      any_of=True, status=status)
            if arrived == 0:
                self._check_whole(k, index, status)
                return
            j, i, _ = later[arrived - 1]
            self._check_whole(j, i, status)
            self.early.add(j)
            self.outbox.forward(j, i)

    def cancel(self) -> None:
        """A stream ended: the receives posted ahead for chunks that never come are
        cancelled (MPI completes a cancelled receive at once) and their buffers freed."""
        while self._recvs:
            _, index, request = self._recvs.popleft()
            request.Cancel()
            request.Wait()
            self.pool.release(index)
