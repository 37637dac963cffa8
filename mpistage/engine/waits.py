"""The engine's waits on its MPI requests: how long it may sleep, and whom a stall blames.

:mod:`mpistage.engine.waiting` polls without spinning; this module decides the engine's
pauses from the plan (the links must not idle while a rank sleeps) and from the pace
chunks have had, and turns a wait that made no progress, or MPI's error, into a
:class:`~mpistage.errors.Stalled` that names the peer the transfer was waiting on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mpi4py import MPI

from ..errors import Stalled
from ..plan import Plan
from .buffers import PhaseClock
from .forward import Forward
from .schedules import Schedule
from .waiting import Pace, poll, poll_any

#: Bytes the links may carry while this rank sleeps in a wait (:meth:`Waits.wait`'s
#: longest pause is the time they take).  MPI's TCP transports move a message's data
#: only inside MPI calls (MPICH over libfabric's tcp provider progresses manually), so
#: a pause longer than the socket buffers take to drain (a sender) or fill (a receiver)
#: idles the link.  A chain to 8 hosts at 100 Mbit/s, 64 MiB in 256 KiB chunks: pauses
#: up to 20 ms 6.85 s, 5 ms 5.86 s, 2 ms 5.77 s, 0.5 ms 5.83 s; CPU per rank 0.6, 0.6,
#: 0.7, 1.0 s (point-to-point 5.61 s).  64 KiB take 5 ms at 100 Mbit/s.
SLEEP_BYTES = 64 * 1024
#: Bytes/s to take a link for when the plan does not know (a small file is sent without
#: probing the link first): pauses of 0.5 ms at most.
UNKNOWN_LINK_RATE = 125e6

#: ``blame(receiving, failed)``: who a stalled wait was on, as the message's start
#: ("no data from node 2 (host b)"); ``failed`` is the chunk's sends MPI failed.
Blame = Callable[[bool, Forward | None], str]


def longest_pause(chunk: int, message: int, chunk_seconds: float, link_rate: float,
                  collective: bool = False) -> float:
    """How long a rank may sleep in a wait: the time the links take to carry
    :data:`SLEEP_BYTES` (or, for a ``collective``, an eighth of MPI's largest ``message``
    if less: its next step is begun only when this rank wakes), by ``link_rate`` (the
    plan's, known from the start: a rank waiting for its first chunk far down a chain
    would otherwise sleep ever longer and see it late, hop after hop; 0:
    :data:`UNKNOWN_LINK_RATE`) and by ``chunk_seconds`` (the pace of such waits, 0
    unknown: a chunk's wait is about as long as the link needs for it); the shorter.

    Point-to-point sends wake no more often: a message up to a socket buffer's size is in
    the kernel once posted, and a larger one keeps :data:`SLEEP_BYTES` queued there.  An
    eighth of a message made a relaying rank wake ~6 times per 64 KiB chunk at 100 Mbit/s
    (8 hosts, 64 MiB: 6300 wake-ups, 1.11-1.17 s of CPU; with 64 KiB 3100, 0.74-0.93 s,
    transfer 5.67 s either way; at 1 Gbit/s, 256 MiB in 1 MiB chunks, 1.03x p2p)."""
    wake = min(SLEEP_BYTES, message / 8) if collective else SLEEP_BYTES
    by_link = wake / (link_rate or UNKNOWN_LINK_RATE)
    return min(by_link, chunk_seconds * min(1.0, wake / chunk)) if chunk_seconds else by_link


def stalled_on(schedule: Schedule, peer_name: Callable[[int], str], receiving: bool,
               awaited: int, suspects: list[int]) -> str:
    """Whom a stalled wait was on, as its message begins: the parent of the ``awaited``
    chunk (a receive), the ``suspects`` or else every child (a send), or MPI itself."""
    parent = schedule.parent_for(awaited)
    children = getattr(schedule, "children", None)
    if receiving and parent is not None:
        return f"no data from {peer_name(parent)}"
    if not receiving and (suspects or children):
        return f"{', '.join(peer_name(c) for c in suspects or children)} took no data"
    return "MPI's broadcast made no progress"


class Waits:
    """Every wait of one engine: receives and sends each keep their own pace (how long
    such waits have been taking), the time waited counts as the ``wait`` phase, and
    ``on_wake`` runs at every wake-up that is not the wait's end (the engine moves its
    other sends on there, and looks for signs of a round called off)."""

    def __init__(self, plan: Plan, schedule: Schedule, clock: PhaseClock, timeout: float,
                 on_wake: Callable[[], None], blame: Blame) -> None:
        self.plan, self.schedule, self.clock, self.timeout = plan, schedule, clock, timeout
        self._on_wake, self._blame = on_wake, blame
        self.receive_pace, self.send_pace = Pace(), Pace()

    def wait(self, requests: list[MPI.Request], receiving: bool,
             on: Forward | None = None, any_of: bool = False,
             status: MPI.Status | None = None) -> int:
        """Wait for ``requests`` (``on``'s, if they are one chunk's sends; with
        ``any_of``, for one of them: its index is returned; ``status``: a receive's,
        or the one that arrived) without spinning, at the pace such waits have had
        (see :mod:`mpistage.engine.waiting`).

        Raises:
            Stalled: no progress within the timeout, or MPI reported a lost peer; the
                message names the peer (node and host) the transfer was waiting on.
        """
        started = time.perf_counter()
        pace = self.receive_pace if receiving else self.send_pace
        longest = self.longest_pause(pace)
        try:
            if any_of:
                arrived = poll_any(requests, self.timeout, expected=pace.expected,
                                   on_wake=self._on_wake, longest=longest, status=status)
                done = arrived is not None
            else:
                done, arrived = poll(requests, self.timeout, expected=pace.expected,
                                     on_wake=self._on_wake, longest=longest,
                                     statuses=None if status is None else [status]), 0
        except MPI.Exception as exc:
            raise Stalled(f"{self._blame(receiving, on)}: {exc.Get_error_string()}") from exc
        finally:
            waited = time.perf_counter() - started
            self.clock.add("wait", waited)
            pace.add(waited)
        if not done:
            raise Stalled(f"{self._blame(receiving, None)} for {self.timeout:g} s")
        return arrived or 0

    def longest_pause(self, pace: Pace) -> float:
        """:func:`longest_pause` for this plan, schedule and kind of wait."""
        chunk = self.plan.chunk_size
        return longest_pause(chunk, self.schedule.message_bytes(chunk), pace.expected,
                             self.plan.link_rate,
                             collective=not self.schedule.point_to_point)
