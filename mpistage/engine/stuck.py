"""Leaving a rank that MPI holds for good.

A transfer waits on MPI only in short calls (``MPI_Test``, ``MPI_Iprobe``) that
:mod:`mpistage.engine.waiting` polls, so that a deadline can end any wait.  But after a peer
died, an MPI library may never return from such a call.  MPICH's OFI transport (the
wheel's ``ofi/tcp``, 5.0.2) does so once a connection to a killed process is reset: it
marks the error fatal, and the rank then spins inside ``MPI_Abort`` (in libfabric), or
another rank spins inside ``MPI_Iprobe``.  Seen in the randomised kills (root killed:
rank 1 in ``MPID_Abort``, rank 2 in ``MPI_Iprobe``, both until ``mpiexec``'s own limit
of 120 s, while the others had long reported the root lost).  No timeout in Python
can end a call that never returns; a second thread can end the process, as MPI calls
release the GIL.

So the command arms a :class:`Watchdog` around the transfer's rounds (the region where
every wait is a polled one: :func:`polled`); :func:`alive`, called at every wake-up of
every wait there (:mod:`mpistage.engine.waiting`'s polls, :func:`mpistage.engine.liveness.follow`'s
looks at a writer that is still flushing), tells it the main thread came back.  When it has not for ``limit`` seconds, the watchdog calls
its ``on_stuck`` (the command's :func:`leave`: this rank's temp files removed, one
line from rank 0 or 1, exit status 1).  Outside that region (the plan's collectives, the closing exchange, a
library caller's own code) nothing is watched.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .. import interrupt

#: When the main thread last came back to a polled wait (``time.monotonic()``), and
#: whether it is inside a polled region at all.
_last_seen = 0.0
_in_region = False


def alive() -> None:
    """The main thread is back in a polled wait (cheap: one clock read)."""
    global _last_seen
    _last_seen = time.monotonic()


@contextmanager
def polled() -> Iterator[None]:
    """The region in which every wait on MPI is a polled one (a watchdog may judge it)."""
    global _in_region
    alive()
    _in_region = True
    try:
        yield
    finally:
        _in_region = False


class Watchdog:
    """A daemon thread that calls ``on_stuck(seconds)`` once the main thread has spent
    ``limit`` seconds inside one call of a :func:`polled` region."""

    def __init__(self, limit: float, on_stuck: Callable[[float], None]) -> None:
        self.limit = limit
        self.on_stuck = on_stuck
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mpistage-watchdog",
                                        daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        interval = min(1.0, self.limit / 4)
        looked = time.monotonic()
        while not self._stop.wait(interval):
            now = time.monotonic()
            if now - looked > interval + 1.0:
                # This thread itself did not run (the process was stopped, SIGSTOP, or
                # starved): the main thread had no chance either; it gets a new one.
                alive()
            looked = now
            if _in_region and (held := now - _last_seen) >= self.limit:
                self.on_stuck(held)
                return


def limit_for(timeout: float) -> float:
    """Seconds in one MPI call after which a rank counts as stuck: twice the transfer's
    ``--timeout`` and 2 s more (a send to a dead peer gives up within about a second,
    :data:`mpistage.mpi_library.SEND_RETRIES`; every other call is a test or a probe)."""
    return 2 * timeout + 2


def leave(rank: int) -> Callable[[float], None]:
    """The command's ``on_stuck``: ranks 0 and 1 (the speaker when rank 0 is the one
    lost) say why in one line; every stuck rank removes its temp files and ends with
    exit status 1 (:func:`mpistage.interrupt.give_up`)."""
    def on_stuck(seconds: float) -> None:
        if rank <= 1:
            sys.stderr.write(
                f"mpistage: transfer failed: rank {rank} was held inside one MPI call for "
                f"{seconds:.0f} s after a peer stopped answering (its MPI library gave up on "
                "the connection); it removed its unfinished copy (exit status 1)\n")
            sys.stderr.flush()
        interrupt.give_up(None)
    return on_stuck
