"""Telling the lost node from the nodes merely blocked behind it, during a transfer round.

Back-pressure is not death.  When a node stops (killed, cut off, frozen), its parent's
sends to it stall, the parent's few buffers fill within milliseconds, and the parent
stops taking data from its own parent: soon every node upstream waits on its child and
every node downstream starves.  Progress cannot tell the one node that stopped from the
others, so signs of life travel apart from the data:

* every participant sends the transfer's root a **pulse** (an 8-byte message, no
  pickling) as its round begins and then every :func:`pulse_interval` seconds while
  its main thread runs, whatever its progress (:class:`~mpistage.engine.liveness.Heartbeat`
  as a pulse);
* the root **calls the round off** as soon as a participant reports a stall or falls
  silent for the timeout, and tells every participant yet to report (:meth:`RollCall.call_off`);
* a participant that hears the call passes it on to its parents and ends its round
  (:class:`~mpistage.errors.RoundEnded`).  It passes it on because the root's own call
  may be stuck: with MPICH's TCP transport a message that no receive matches holds back
  every later message on its connection, and the root's data to a child whose buffers
  are full is such a message; a child's message to its parent never is (data flows the
  other way);
* a participant whose round ended receives, and drops, the data its parents still have
  in flight to it (:class:`Drain`), for the same reason: the root's verdict and the
  next round's data to it travel on those connections.

The root then counts lost exactly the participants silent for the timeout: a node
blocked behind a lost one goes on pulsing, so the blame lands on the node that stopped
(:mod:`mpistage.engine.recovery`).
"""

from __future__ import annotations

import mmap
import time
from array import array
from collections.abc import Callable, Iterable

from mpi4py import MPI

from ..errors import RoundEnded
from .liveness import Heartbeat, drain_heartbeats
from .waiting import BACKGROUND


def _round_message(round_number: int) -> array:
    """A call's message: the round's number, one 64-bit integer (a buffer, no pickle;
    ``array`` rather than numpy, which a run that only moves bytes never imports)."""
    return array("q", [round_number])


_CALL_TAG = 7110  # the root → participants, child → parent: round r is over

#: Seconds between two looks for calls, pulses and surveys during a transfer: a call
#: is heard within this, and the looks cost a few probes each.
LOOK_EVERY = 0.05
#: Seconds between two takings-in of calls between looks (a call left unreceived would
#: hold back a later message on its connection, the root's verdict among them).
ABSORB_EVERY = 0.01


def pulse_interval(timeout: float) -> float:
    """Seconds between two pulses: four to a timeout, at least one a second."""
    return min(timeout / 4, 1.0)


#: Every :class:`Drain` of the run, kept for the life of the process: MPI holds their
#: receives (a parent cut off may never send) and must never find that memory freed.
KEPT: list[Drain] = []


def run_over() -> None:
    """The run is over: no more chores, and every drain's receives withdrawn (a receive
    left posted can hold ``MPI_Finalize`` up: Open MPI's ULFM waited for ever)."""
    BACKGROUND.clear()
    for drain in KEPT:
        drain.cancel()


def draining(comm: MPI.Comm) -> bool:
    """Whether receives of a :class:`Drain` are posted on ``comm``: then it must not be
    freed (MPI would free it under them, and the closing exchange still needs them)."""
    return any(drain.comm is comm for drain in KEPT)


class Drain:
    """Receives, dropped as they complete and posted again, for a broken round's data
    that ``sources`` (this node's parents in that round) may still have in flight to
    this node; tended at every wake-up of every wait (:data:`mpistage.engine.waiting.BACKGROUND`)
    for the rest of the run.  A parent posts a child's next send only when the one
    before completed, so one receive per parent is enough."""

    def __init__(self, comm: MPI.Comm, sources: Iterable[int], tag: int, capacity: int) -> None:
        self.comm = comm
        self.tag = tag
        self._posted: dict[int, tuple[memoryview, MPI.Request]] = {}
        self._cancelled = False
        for source in sources:
            self._post(source, memoryview(mmap.mmap(-1, max(capacity, 1))))
        KEPT.append(self)
        BACKGROUND.append(self.tend)

    def _post(self, source: int, buffer: memoryview) -> None:
        try:
            self._posted[source] = (buffer, self.comm.Irecv(buffer, source=source, tag=self.tag))
        except MPI.Exception:
            self._posted.pop(source, None)  # that parent is gone: nothing more comes

    def cancel(self) -> None:
        """The run is over: withdraw the receives (MPI completes a cancelled receive;
        the buffers stay referenced here, in :data:`KEPT`, whatever MPI does)."""
        if self._cancelled:
            return
        self._cancelled = True
        for _, request in self._posted.values():
            try:
                request.Cancel()
                request.Test()
            except MPI.Exception:
                pass

    def tend(self) -> None:
        """Drop what arrived and post the receive again."""
        if self._cancelled or self.comm == MPI.COMM_NULL:
            return
        for source, (buffer, request) in list(self._posted.items()):
            try:
                arrived = request.Test()
            except MPI.Exception:
                self._posted.pop(source, None)
                continue
            if arrived:
                self._post(source, buffer)


class Calls:
    """Messages that call a round off: the root's to the members, a child's relayed to
    its parents.  Each is a buffer (no pickling) kept alive until the run ends."""

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        self._sent: list[tuple[array, MPI.Request]] = []
        #: The rounds called off, as far as this rank heard.
        self.heard: set[int] = set()

    def send(self, round_: int, ranks: Iterable[int]) -> None:
        """Tell ``ranks`` that round ``round_`` is over."""
        for rank in ranks:
            message = _round_message(round_)
            try:
                self._sent.append((message, self.comm.Isend(message, dest=rank, tag=_CALL_TAG)))
            except MPI.Exception:
                pass  # gone: it will be counted silent

    def absorb(self) -> None:
        """Receive every call that came (one left unreceived would hold back every later
        message on its connection)."""
        if self.comm == MPI.COMM_NULL:  # freed: the run is over
            return
        status = MPI.Status()
        message: array | None = None
        try:
            while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_CALL_TAG, status=status):
                message = _round_message(0) if message is None else message
                self.comm.Recv(message, source=status.Get_source(), tag=_CALL_TAG)
                self.heard.add(int(message[0]))
        except MPI.Exception:
            pass  # Open MPI's ULFM: a wildcard probe fails until a failure is acknowledged


class RollCall:
    """One participant's side of the signs of life of a transfer round (see the module's
    doc); :meth:`look` is the engine's chore, called at every wake-up of its waits.

    Attributes:
        round: the round under way (0, then each re-formed one).
        members: its participants, ranks of ``comm``.
        reported: the root: members whose survey of this round arrived.
    """

    def __init__(self, comm: MPI.Comm, root: int, timeout: float,
                 peer_name: Callable[[int], str]) -> None:
        self.comm, self.root, self.timeout, self.peer_name = comm, root, timeout, peer_name
        self.round = 0
        self.members: list[int] = list(range(comm.size))
        self.reported: set[int] = set()
        self._parents: tuple[int, ...] = ()
        self._heard: dict[int, float] = {}
        self._pulse = Heartbeat(comm, pulse_interval(timeout), dest=root, pulse=True)
        self._next_look = 0.0
        self._calls = Calls(comm)
        self._called = False
        self._next_absorb = 0.0
        self.start(0, self.members, ())
        if not self.is_root:
            # Calls must be received whenever they come, also after this node left its
            # round: one left unreceived would hold back the root's verdict behind it.
            BACKGROUND.append(self._absorb_calls_now_and_then)

    @property
    def is_root(self) -> bool:
        return self.comm.rank == self.root

    def start(self, round_: int, members: list[int], parents: Iterable[int]) -> None:
        """A round begins: every member counts as just heard from."""
        now = time.monotonic()
        self.round, self.members = round_, list(members)
        self._parents = tuple(parents)
        self._heard = dict.fromkeys(self.members, now)
        self._spoke: set[int] = set()  # heard from since the round began
        self.reported = set()
        self._called = False
        # The first look of the round pulses: a member lost early in the round has
        # then spoken, and is counted lost after one timeout of silence, not two (two
        # nodes killed side by side: the first's parent may fail at once and the round
        # be called off before the second's child could name it).
        self._pulse.send_next()

    # -- the root --------------------------------------------------------------------------

    def listen(self) -> None:
        """The root: take in the pulses that arrived."""
        now = time.monotonic()
        for rank in drain_heartbeats(self.comm):
            self._heard[rank] = now
            self._spoke.add(rank)

    def heard(self, rank: int) -> None:
        """The root: a message from ``rank`` (its survey) is a sign of life too."""
        self._heard[rank] = time.monotonic()
        self._spoke.add(rank)

    def silent(self, named: Iterable[int] = ()) -> list[int]:
        """The root: members yet to report that gave no sign of life for the timeout:
        since they last spoke, or since the round began for those ``named`` by a stall
        (their parent could not send to them, or their child got nothing from them);
        any other not heard from yet, twice the timeout (on a machine with more ranks
        than cores a node may reach its part seconds late)."""
        now, named = time.monotonic(), set(named)
        return [rank for rank in self.members
                if rank != self.root and rank not in self.reported
                and now - self._heard.get(rank, now)
                >= (self.timeout if rank in self._spoke or rank in named
                    else 2 * self.timeout)]

    def call_off(self, ranks: Iterable[int]) -> None:
        """The root: tell ``ranks`` that this round is over (once a round)."""
        if self._called:
            return
        self._called = True
        self._calls.send(self.round, ranks)

    # -- every participant -----------------------------------------------------------------

    def look(self) -> bool:
        """The engine's chore: at most every :data:`LOOK_EVERY` seconds, the root takes
        in pulses and ends its round if a member fell silent; another participant sends
        its pulse and ends its round if the round was called off.  Whether it looked.

        Raises:
            RoundEnded: this node's part in the round is over.
        """
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + LOOK_EVERY
        if self.is_root:
            self.listen()
            if lost := self.silent():
                names = ", ".join(self.peer_name(rank) for rank in lost)
                raise RoundEnded(f"{names}: no sign of life for {self.timeout:g} s",
                                 suspects=tuple(lost))
            return True
        self._pulse(None)
        if self.called():
            raise RoundEnded(f"the round was called off by {self.peer_name(self.root)}")
        return True

    def called(self) -> bool:
        """Whether this round was called off (by the root, or relayed by a child); the
        call is passed on to this node's parents."""
        self._absorb_calls()
        return self.round in self._calls.heard

    def _absorb_calls_now_and_then(self) -> None:
        """:meth:`_absorb_calls`, at most every :data:`ABSORB_EVERY` seconds (a chore of
        every wake-up of every wait: a wildcard probe at each was ~10 % of a relaying
        rank's Python time)."""
        now = time.monotonic()
        if now >= self._next_absorb:
            self._next_absorb = now + ABSORB_EVERY
            self._absorb_calls()

    def _absorb_calls(self) -> None:
        """Receive every call that came; pass this round's on to the parents, once."""
        if self.comm == MPI.COMM_NULL:  # freed: the run is over
            return
        self._calls.absorb()
        if self.round in self._calls.heard and not self._called:
            self._called = True
            self._calls.send(self.round, [p for p in self._parents if p != self.root])

    def drain(self, tag: int, capacity: int) -> None:
        """This node's round ended: receive what its parents still send in it."""
        if self._parents:
            Drain(self.comm, self._parents, tag, capacity)

    def pulse(self) -> None:
        """A sign of life (at most one an interval)."""
        self._pulse(None)

    def settled(self, timeout: float) -> bool:
        """Whether the last pulse left within ``timeout`` seconds (before the survey: never
        a second message in flight to a root that may have died)."""
        return self._pulse.settled(timeout)

    def close(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the last pulse to leave."""
        self._pulse.close(timeout)
