"""Waiting on MPI without spinning a core and without hanging forever.

A blocking ``MPI_Wait`` spins (a core the writer thread and other ranks need) and never
gives up (a dead peer or a cut link hangs the job).  These helpers poll with a back-off
from 20 us instead, and stop at a deadline.

Every wake-up costs CPU (a pass through MPI's progress engine, a thread switch): at
1 ms a 64 MiB relay over 100 Mbit/s would wake some 6000 times.  So the pauses grow
with the wait: up to an eighth of the time waited so far, or of the time the caller
``expected`` (the pipeline knows: chunk after chunk takes about as long; its first
pause is then half of that).  A wait then costs a few dozen wake-ups whatever its
length, and a completion is seen at most about an eighth of a wait late.  MPI data
keeps flowing meanwhile: the kernel's socket buffers take what arrives while the rank
sleeps, and no pause exceeds 20 ms, or the ``longest`` the caller allows (the pipeline:
the time its links take to carry 64 KiB, :data:`mpistage.engine.waits.SLEEP_BYTES`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mpi4py import MPI

from ..errors import Stalled
from . import stuck

#: Work that must go on at every wake-up of every wait for the rest of the run, whatever
#: the wait is for (:class:`mpistage.engine.rollcall.Drain`: receiving the data a broken round
#: still has in flight, which would otherwise hold back every later message on its
#: connection).  Each is cheap (a few ``MPI_Test``) and never raises.
BACKGROUND: list[Callable[[], object]] = []

_FIRST_PAUSE = 20e-6
_LONGEST_PAUSE = 1e-3
#: However long waits have been, never sleep longer than this at once: a socket buffer
#: must not run dry (or full) while the rank sleeps.
_PAUSE_CAP = 20e-3


def poll(requests: Sequence[MPI.Request], timeout: float | None, expected: float = 0.0,
         on_wake: Callable[[], object] | None = None, longest: float | None = None,
         statuses: list[MPI.Status] | None = None) -> bool:
    """Wait for every request; ``False`` if ``timeout`` seconds pass first.

    Args:
        expected: seconds the caller expects this wait to take (see the module's
            docstring); 0 when it does not know.
        on_wake: called at every wake-up that did not end the wait (other work that
            must not wait for this, e.g. posting the next send of a chunk).
        longest: the longest pause (seconds; ``None``, or more than 20 ms: 20 ms).
        statuses: filled with the requests' statuses once they completed.

    Raises:
        MPI.Exception: a request failed (a peer died, a connection was reset).
    """
    requests = list(requests)
    return _sleep_until(lambda: True if MPI.Request.Testall(requests, statuses) else None,
                        timeout, expected, on_wake, longest) is not None


def poll_any(requests: Sequence[MPI.Request], timeout: float | None, expected: float = 0.0,
             on_wake: Callable[[], object] | None = None,
             longest: float | None = None, status: MPI.Status | None = None) -> int | None:
    """Wait for one of ``requests`` (any); the index of one that completed (its request
    object is now complete and null; its status in ``status``), or ``None`` if
    ``timeout`` seconds pass first.  Sleeps between polls as :func:`poll` does.

    Raises:
        MPI.Exception: a request failed (a peer died, a connection was reset).
    """
    def arrived() -> int | None:
        index, done = MPI.Request.Testany(requests, status)
        return index if done and index != MPI.UNDEFINED else None

    return _sleep_until(arrived, timeout, expected, on_wake, longest)


_T = TypeVar("_T")


def _sleep_until(check: Callable[[], _T | None], timeout: float | None, expected: float,
                 on_wake: Callable[[], object] | None, cap: float | None = None) -> _T | None:
    """``check()``'s first result that is not ``None``, asleep between checks, with
    pauses that grow (see the module's docstring); ``None`` after ``timeout`` seconds."""
    stuck.alive()  # back from the last MPI call (mpistage.engine.stuck)
    if (result := check()) is not None:
        return result
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    cap = _PAUSE_CAP if cap is None else min(cap, _PAUSE_CAP)
    pause = min(expected / 2, cap) if expected > 4 * _LONGEST_PAUSE else _FIRST_PAUSE
    while True:
        if deadline is not None:
            pause = min(pause, max(deadline - time.monotonic(), 0.0))
        time.sleep(pause)
        tend_background()
        if (result := check()) is not None:
            return result
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return None
        if on_wake is not None:
            on_wake()
        longest = min(max(_LONGEST_PAUSE, max(expected, now - started) / 8), cap)
        pause = min(pause * 2, longest)


def tend_background() -> None:
    """Run every :data:`BACKGROUND` chore once (at every wake-up of every wait: the
    main thread is back from MPI, :func:`mpistage.engine.stuck.alive`)."""
    stuck.alive()
    for chore in BACKGROUND:
        chore()


def post(start: Callable[[], MPI.Request], timeout: float) -> MPI.Request:
    """``start()`` (the posting of a send), tried again while MPI refuses to post it
    (MPICH's bounded retries while the peer's queue is full: at start-up on a machine
    with more ranks than cores, a peer may be busy for longer), for ``timeout`` seconds.

    Raises:
        MPI.Exception: still refused after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while True:
        try:
            return start()
        except MPI.Exception:
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _PAUSE_CAP)


def quiet_barrier(comm: MPI.Comm) -> None:
    """Wait for every rank of ``comm`` to get here, asleep between polls.

    Before a collective that follows long work on one rank (the root walking a tree of a
    million entries, digesting its files): a blocking collective would spin every other
    rank meanwhile, and on a node whose cores they share, slow that one rank down."""
    poll([comm.Ibarrier()], None)


class Pace:
    """How long the waits of one kind have been lately (a moving average), as
    :func:`poll`'s ``expected``."""

    def __init__(self) -> None:
        self.expected = 0.0

    def add(self, seconds: float) -> None:
        self.expected = seconds if self.expected == 0.0 else 0.75 * self.expected + 0.25 * seconds


def send_objects(comm: MPI.Comm, obj: Any, dests: Sequence[int], tag: int) -> list[MPI.Request]:
    """Start sending a small pickled object to each of ``dests``; a rank to which the
    send cannot even be posted (it died: :func:`mpistage.mpi_library.fail_fast`) is
    left out.  Keep the requests until they complete."""
    requests = []
    for dest in dests:
        try:
            requests.append(comm.isend(obj, dest=dest, tag=tag))
        except MPI.Exception:
            pass
    return requests


def send_object(comm: MPI.Comm, obj: Any, dest: int, tag: int, timeout: float) -> bool:
    """Send a small pickled object (status, not data); ``False`` if not taken in time."""
    try:
        return poll([comm.isend(obj, dest=dest, tag=tag)], timeout)
    except MPI.Exception:
        return False


def receive_objects(
    comm: MPI.Comm, sources: Sequence[int], tag: int, timeout: float | None,
    longest_pause: float = _LONGEST_PAUSE,
) -> dict[int, Any]:
    """Receive one pickled object from each of ``sources``; those that do not send within
    ``timeout`` seconds (dead, unreachable, stuck) are simply absent from the result.
    ``None`` waits as long as it takes; ``longest_pause`` caps the polling back-off."""
    deadline = float("inf") if timeout is None else time.monotonic() + timeout
    pending = set(sources)
    received: dict[int, Any] = {}
    pause = _FIRST_PAUSE
    while pending:
        arrived = False
        for source in sorted(pending):
            try:
                if comm.Iprobe(source=source, tag=tag):
                    # The message is here: this receive matches it and returns at once.
                    received[source] = comm.recv(source=source, tag=tag)
                    pending.discard(source)
                    arrived = True
            except MPI.Exception:
                pending.discard(source)
        if not pending or time.monotonic() >= deadline:
            break
        tend_background()
        if not arrived:
            time.sleep(pause)
            pause = min(pause * 2, longest_pause)
        else:
            pause = _FIRST_PAUSE
    return received


def receive_arrived(comm: MPI.Comm, tag: int) -> list[tuple[int, Any]]:
    """Every small pickled object of ``tag`` that has arrived, from any rank, as
    ``(source, object)`` in the order received, without waiting (one probe per object,
    whatever the number of ranks)."""
    received: list[tuple[int, Any]] = []
    status = MPI.Status()
    try:
        while comm.Iprobe(source=MPI.ANY_SOURCE, tag=tag, status=status):
            source = status.Get_source()
            received.append((source, comm.recv(source=source, tag=tag)))
    except MPI.Exception:
        pass  # Open MPI's ULFM: a wildcard probe fails until a failure is acknowledged
    return received


def receive_object(
    comm: MPI.Comm, source: int, tag: int, timeout: float | None, what: str,
    longest_pause: float = _LONGEST_PAUSE,
) -> Any:
    """One pickled object from ``source``.

    Raises:
        Stalled: nothing came within ``timeout`` seconds; ``what`` names the missing thing.
    """
    got = receive_objects(comm, [source], tag, timeout, longest_pause)
    if source not in got:
        raise Stalled(f"{what} did not arrive within {timeout or 0:g} s")
    return got[source]
