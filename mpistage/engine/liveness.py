"""Telling a slow node from a dead one: signs of life while local work goes on.

After the transfer, a node may still spend long on its own: writing the last chunks,
``--fsync``, ``--verify`` (100 GiB re-read at 500 MB/s is 200 s).  It is healthy as long
as that work makes progress, and dead or stuck (a hung file server, a dead disk) when it
does not.  So local work runs in a worker thread under :func:`watch`: the main thread
(the only one making MPI calls) samples the work's progress, sends rank 0 a
:class:`Heartbeat` whenever it advanced, and gives up only when it stood still for the
timeout.  Rank 0 counts heartbeats as news (:func:`drain_heartbeats`), so it waits for
every node that is still making progress, however long that takes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from mpi4py import MPI

from ..errors import Stalled
from . import stuck
from .waiting import poll

_HEARTBEAT_TAG = 7105
#: Longest pause between two looks at a watched work's progress.
_LONGEST_LOOK = 0.25

T = TypeVar("T")


class Heartbeat:
    """Sends rank ``dest`` (rank 0, who collects the statuses, or the transfer's root, who
    collects the surveys of :mod:`mpistage.engine.recovery`) a small message (no pickling) at
    most every ``interval`` seconds, and only when the progress it is given has changed."""

    def __init__(self, comm: MPI.Comm, interval: float, dest: int = 0,
                 pulse: bool = False) -> None:
        """
        Args:
            pulse: send whether or not the progress changed: a sign of life, not of
                progress (:mod:`mpistage.engine.rollcall`: the node judges its own progress;
                the one it tells only needs to know it still runs).
        """
        self.comm = comm
        self.interval = interval
        self.dest = dest
        self.pulse = pulse
        self._last: Hashable = None
        self._sent_at = time.monotonic()
        self._message = bytearray(8)
        self._requests: list[MPI.Request] = []

    def __call__(self, progress: Hashable) -> None:
        now = time.monotonic()
        if (self.comm.rank == self.dest or (progress == self._last and not self.pulse)
                or now - self._sent_at < self.interval):
            return
        self._requests = [r for r in self._requests if not r.Test()]
        if self._requests:  # never more than one in flight (rank 0 may be busy): the
            return          # next call tries again, and sends as soon as that one left
        self._last, self._sent_at = progress, now
        try:
            self._requests.append(self.comm.Isend(self._message, dest=self.dest,
                                                  tag=_HEARTBEAT_TAG))
        except MPI.Exception:
            pass  # it is gone; whoever waits on it finds out

    def send_next(self) -> None:
        """Let the next call send, whatever the interval: a round of
        :mod:`mpistage.engine.rollcall` begins, and the root must hear at once that this rank
        is in it."""
        self._sent_at = -math.inf

    def settled(self, timeout: float) -> bool:
        """Whether the last heartbeat left within ``timeout`` seconds: before another
        message to the same rank, which must never be a second one in flight to a rank
        that may have died (see :class:`mpistage.engine.forward.Forward`)."""
        try:
            done = poll(self._requests, timeout)
        except MPI.Exception:
            return False
        if done:
            self._requests = []
        return done

    def close(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the last heartbeat to leave."""
        try:
            poll(self._requests, timeout)
        except MPI.Exception:
            pass
        self._requests = []


def no_heartbeat(progress: Hashable) -> None:
    """For work that nobody waits on."""


def drain_heartbeats(comm: MPI.Comm) -> set[int]:
    """Rank 0 (or a heartbeat's other ``dest``): receive every heartbeat that has arrived; the ranks that sent one."""
    senders: set[int] = set()
    status = MPI.Status()
    sink = bytearray(8)
    acknowledged = False
    while True:
        try:
            if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=_HEARTBEAT_TAG, status=status):
                return senders
            comm.Recv(sink, source=status.Get_source(), tag=_HEARTBEAT_TAG)
        except MPI.Exception:
            # With MPI's fault-tolerance extensions (Open MPI's ULFM), a wildcard probe
            # fails while a process failure is not acknowledged; others: nothing to do.
            if acknowledged or not hasattr(comm, "Ack_failed"):
                return senders
            try:
                comm.Ack_failed()
            except (MPI.Exception, NotImplementedError):
                return senders
            acknowledged = True
            continue
        senders.add(status.Get_source())


def watch(work: Callable[[], T], progress: Callable[[], Hashable], *, timeout: float,
          heartbeat: Callable[[Hashable], None], what: str) -> T:
    """Run ``work`` in a worker thread under :func:`follow`; return its result or raise
    its exception (or :class:`Stalled`)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="mpistage-watched", daemon=True)
    worker.start()
    follow(worker, progress, timeout=timeout, heartbeat=heartbeat, what=what)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def follow(thread: threading.Thread, progress: Callable[[], Hashable], *, timeout: float,
           heartbeat: Callable[[Hashable], None], what: str) -> None:
    """Wait for ``thread`` to end, as long as ``progress()`` keeps changing; pass it to
    ``heartbeat`` at every look (a :class:`Heartbeat` sends only changes, or, as a
    pulse, a sign of life at its interval).

    Raises:
        Stalled: ``progress()`` stood still for ``timeout`` seconds; ``what`` names the
            work.  The thread is left behind (a daemon, in a call that may never
            return); the caller must make sure its outcome is ignored.
    """
    last, still_since = progress(), time.monotonic()
    pause = 1e-3
    while True:
        thread.join(pause)
        stuck.alive()  # back from waiting, not held inside MPI (mpistage.engine.stuck)
        if not thread.is_alive():
            return
        pause = min(pause * 2, _LONGEST_LOOK, timeout / 4)
        now = progress()
        heartbeat(now)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= timeout:
            raise Stalled(f"{what} made no progress for {timeout:g} s")


def writeback_activity() -> tuple[str, ...]:
    """The kernel's counts of dirty and in-writeback pages (``/proc/meminfo``): they
    change while an ``fsync`` flushes, whatever the file system (NFS included), and
    stand still when the device or server behind it does."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            return tuple(line for line in meminfo
                         if line.startswith(("Dirty:", "Writeback:", "NFS_Unstable:")))
    except OSError:
        return ()
