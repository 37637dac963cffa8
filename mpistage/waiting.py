"""Waiting on MPI without spinning a core and without hanging forever.

A blocking ``MPI_Wait`` spins (a core the writer thread and other ranks need) and never
gives up (a dead peer or a cut link hangs the job).  These helpers poll with a back-off
from 20 us to 1 ms instead, and stop at a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from mpi4py import MPI

from .errors import Stalled

_FIRST_PAUSE = 20e-6
_LONGEST_PAUSE = 1e-3


def poll(requests: Sequence[MPI.Request], timeout: float | None) -> bool:
    """Wait for every request; ``False`` if ``timeout`` seconds pass first.

    Raises:
        MPI.Exception: a request failed (a peer died, a connection was reset).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while not MPI.Request.Testall(list(requests)):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)
    return True


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
        if not arrived:
            time.sleep(pause)
            pause = min(pause * 2, longest_pause)
        else:
            pause = _FIRST_PAUSE
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
