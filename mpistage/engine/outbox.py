"""The engine's send side: chunks forwarded to the schedule's children, until every
child has them.

A chunk's buffer stays held while any of its sends is in flight; the chunks leave in
order, and a child never has more than :data:`SENDS_IN_FLIGHT` of them in flight
(:class:`mpistage.engine.forward.Forward` posts each chunk's sends one child after
another).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mpi4py import MPI

from ..errors import Stalled
from .buffers import Buffer, BufferPool
from .forward import Forward, HeldBack, suspects
from .frames import Framing
from .schedules import Schedule
from .waits import Blame, Waits

#: Sends in flight to one child at most (:class:`mpistage.engine.forward.Forward`).  One
#: cost throughput at large chunks while ranks slept long between polls (a chain to 8
#: hosts at 100 Mbit/s, 64 MiB in 256 KiB chunks: 6.86 s, 5.83 s with two in flight);
#: with pauses bounded by :data:`mpistage.engine.waits.SLEEP_BYTES`, 5.82-6.06 s
#: (point-to-point 5.61 s).  Two are unsafe: a second send to a child that died blocks
#: inside ``MPI_Isend`` until MPICH's retry limit, again at every retry, and its parent,
#: silent meanwhile, was counted lost with it (a randomised kill, seed 614042548, run 22).
SENDS_IN_FLIGHT = 1


@dataclass
class Progress:
    """Source bytes that left this node (``done``), told to ``callback(done, total)``
    (``total`` 0: a stream's, unknown until it ended)."""

    callback: Callable[[int, int], None]
    done: int
    total: int

    def sent(self, length: int) -> None:
        self.done += length
        self.callback(self.done, self.total)

    def ended(self) -> None:
        """A stream ended: its total is what was sent."""
        self.callback(self.done, self.done)


class Outbox:
    """The chunks whose sends are not all done, oldest first: ``(buffer, source bytes,
    sends)`` each.  ``progress`` is told of each chunk once every child has it."""

    def __init__(self, schedule: Schedule, pool: BufferPool, framing: Framing, waits: Waits,
                 watch: Callable[[], None], blame: Blame, progress: Progress) -> None:
        self.schedule, self.pool, self.framing, self.waits = schedule, pool, framing, waits
        self._watch, self._blame, self.progress = watch, blame, progress
        self._sends: deque[tuple[int, int, Forward]] = deque()
        #: Bytes of the messages that came through this node (each chunk once, as it travelled).
        self.wire_bytes = 0

    def __bool__(self) -> bool:
        return bool(self._sends)

    def frame(self, k: int, index: int) -> tuple[Buffer, int, bool]:
        """Chunk ``k``'s message as it travels, its length in source bytes, and
        whether it is the last.

        Raises:
            Stalled: a frame's header is damaged (the stream cannot go on).
        """
        buffer = self.pool.buffers[index]
        try:
            return (self.framing.message(buffer, k), self.framing.raw_length(buffer, k),
                    self.framing.is_last(buffer, k))
        except ValueError as exc:
            raise Stalled(f"chunk {k}: {exc}") from None

    def forward(self, k: int, index: int) -> bool:
        """Post chunk ``k``'s sends to the schedule's children, as it came; its buffer
        is held by them and by the chunk's dispatch (then the writer); whether it was
        the last."""
        message, length, last = self.frame(k, index)
        self.wire_bytes += len(message)
        forward = self.schedule.post_forward(message, k)
        sends = not forward.done
        self.pool.hold(index, sends + 1)
        if sends:
            self._sends.append((index, length, forward))
        else:
            self.progress.sent(length)
        return last

    def advance(self) -> None:
        """Post each chunk's next send where the last one is done (also while waiting
        for something else, so the next child need not wait for that), never ahead of
        the chunk before it, and never more than :data:`SENDS_IN_FLIGHT` to a child."""
        held = HeldBack(SENDS_IN_FLIGHT)
        for *_, forward in self._sends:
            self._advance(forward, held.peers)
            held.add(forward)

    def retire(self, block: bool) -> None:
        """Move every chunk's sends on and release the buffers of chunks sent to all
        children, oldest first; with ``block``, wait until the oldest chunk is."""
        self.advance()
        if block and self._sends:
            oldest = self._sends[0][2]
            while not self._advance(oldest):
                if not oldest.requests:  # its next send could not be posted yet (MPI
                    time.sleep(0.001)    # retried it up to a second): still alive
                    self._watch()
                self.waits.wait(oldest.requests, receiving=False, on=oldest)
        while self._sends and self._sends[0][2].done:
            index, length, _ = self._sends.popleft()
            self.pool.release(index)
            self.progress.sent(length)

    def suspects(self, failed: Forward | None = None) -> list[int]:
        """The children the stalled (or ``failed``) sends were for (:func:`suspects`)."""
        children = getattr(self.schedule, "children", None) or []
        return suspects([f for *_, f in self._sends], children, failed)

    def _advance(self, forward: Forward, blocked: set[int | None] | None = None) -> bool:
        """:meth:`Forward.advance`; a send that could not even be posted (MPI's error
        after :data:`mpistage.mpi_library.SEND_RETRIES`: its peer is gone) is a stall."""
        try:
            return forward.advance(blocked or frozenset())
        except MPI.Exception as exc:
            raise Stalled(f"{self._blame(False, forward)}: {exc.Get_error_string()}") from exc
