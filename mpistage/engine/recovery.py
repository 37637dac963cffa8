"""Surviving a lost node: the transfer re-formed among the nodes still there.

A node whose rank is killed, whose link goes down or whose process freezes stops passing
chunks on: in a chain everyone behind it starves, and everyone before it soon waits on
its child.  Without MPI's fault-tolerance extensions (the MPICH wheel has none; see
docs/failures.md, "When a node dies") mpistage survives it with point-to-point messages and
deadlines alone, in rounds:

1. **Roll call.**  During a round every participant pulses to the root, whatever its
   progress (:mod:`mpistage.engine.rollcall`); the root calls the round off as soon as one
   reports a stall or falls silent for the timeout, and the call reaches every
   participant, also those blocked behind the lost node.
2. **Survey.**  Each participant, its round over (ended, stalled or called off), lets
   its writes end and tells the root a :class:`Survey`: how many chunks it holds,
   written cleanly, whether its copy failed, and why its round ended.
3. **Verdict.**  The root waits for every survey; a participant that sends none and
   gives no sign of life for the timeout is *lost*, and no other: a node blocked behind
   the lost one goes on pulsing.  If nobody stalled, the :class:`Verdict` carries the
   source's outcome and the run closes as before.  Otherwise it names the survivors and
   what each holds.
4. **Re-formed run.**  The survivors (the root and every node whose copy is still good)
   run the algorithm's shape laid over them (:class:`~mpistage.engine.reformed.Reformed`; twotree's survivors
   go on as a chain; no new communicator, whose creation would wait for ever on a
   survivor that dies meanwhile: a tag of the round's own, so no message of the broken
   run can match), the same engine, resumed: each edge carries only the chunks the
   child lacks, and a parent sends the ones it already holds from its own copy on disk
   (:class:`~mpistage.sources.held.HeldChunks`), so a node after the lost one gets what it missed from the
   nearest node that has it, never from the start of the file.  Writes go on where
   they stopped, into the same temp file and running digest.  Then back to 1.

MPI must let the survivors go on: the launcher must not end the job when one process
dies (hydra's ``-disable-auto-cleanup``, ``srun``'s default, Open MPI's ``--with-ft
ulfm``), and communication errors are returned, not fatal (mpi4py's default).  Where
the launcher ends the job, the run fails as before, cleanly.  A lost root ends the run
(it alone has the source); one file of known size only (a stream cannot be read
twice, a tree's or a command's sink cannot be resumed, MPI's own broadcast cannot
leave a member out, and in a ring, where every node reads a share, each survivor would
lack other chunks: :func:`can_recover`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mpi4py import MPI

from .. import interrupt
from ..errors import RootLost, RoundEnded, Stalled
from ..plan import Plan
from .pipeline import Engine, EngineResult
from .rollcall import RollCall
from .schedules import Schedule
from .waiting import (poll, receive_arrived, receive_objects, send_object, send_objects,
                      tend_background)

_SURVEY_TAG = 7106   # participant → root: a Survey
_VERDICT_TAG = 7107  # root → participants: a Verdict (``None``: still collecting)

#: Re-formed runs at most (each survives at least one more lost node).
MAX_ROUNDS = 3
#: Seconds the root waits at most for the verdict's sends (a dead member's never end).
ANNOUNCE_GRACE = 0.05

#: Engines of broken rounds, kept for the life of the process: MPI may still hold
#: requests on their buffers (a send to a host cut off that comes back) that never
#: complete, and must never find that memory freed.
STRANDED: list[Engine] = []

#: The source's outcome: ``(digest, read error, size)`` (:data:`mpistage.staging.copies.SourceOutcome`).
Outcome = tuple[str | None, str | None, int | None]


@dataclass(frozen=True)
class Survey:
    """What a participant tells the root after a round.

    Attributes:
        held: chunks ``0 .. held-1`` are in its copy, written cleanly (the root: every
            chunk, from its file).
        good: its copy can still become complete (no write failed).
        stall: why its round ended before its transfer did, if it did.
        suspects: the nodes (ranks of the communicator) its stall names: the children
            whose sends stalled or failed, the members the root found silent.
    """

    held: int
    good: bool
    stall: str | None = None
    suspects: tuple[int, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The root's decision after a round.

    Attributes:
        outcome: the run is over: the source's outcome (``None``: another round).
        survivors: ranks of the next round, the root first, in order.
        held: chunks each of them holds.
        lost: every rank counted lost so far, and why.
    """

    outcome: Outcome | None
    survivors: tuple[int, ...] = ()
    held: dict[int, int] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)


def can_recover(plan: Plan, schedule: Schedule, tree: bool, pipe: bool) -> bool:
    """Whether a run like this one can be re-formed after a lost node (see above)."""
    return (schedule.point_to_point and not plan.stream and plan.codec == "none"
            and not tree and not pipe and not schedule.every_node_reads)


# -- the exchange ---------------------------------------------------------------------------

class Rounds:
    """One participant's side of the survey and verdict exchange, round after round, over
    the first round's communicator ``comm``, whose connections root <-> every participant
    were opened at start-up (:func:`mpistage.staging.closing.connect_early`).

    Attributes:
        members: this round's ranks (of ``comm``), the root first after round 0.
        lost: every rank counted lost so far, and why.
        roll: the signs of life of the round under way.
    """

    def __init__(self, comm: MPI.Comm, root: int, timeout: float,
                 peer_name: Callable[[int], str]) -> None:
        self.comm = comm
        self.root = root
        self.timeout = timeout
        self.peer_name = peer_name
        self.members = list(range(comm.size))
        self.lost: dict[int, str] = {}
        self.round = 0
        self.roll = RollCall(comm, root, timeout, peer_name)
        self._surveys: dict[int, Survey] = {}  # the root: this round's, as they came
        self._last_ping = 0.0
        self._requests: list[MPI.Request] = []  # sends nobody waits on, kept alive

    @property
    def is_root(self) -> bool:
        return self.comm.rank == self.root

    def begin(self, schedule: Schedule) -> None:
        """This node's engine is about to run the round on ``schedule``."""
        self.roll.start(self.round, self.members, schedule.senders())

    def watch(self) -> None:
        """The engine's chore, at every wake-up of its waits: signs of life and calls
        (:meth:`RollCall.look`); the root also takes in the surveys of members whose
        round ended, ends its own round at the first that reports a stall, and tells
        the members waiting for the verdict that it lives.

        Raises:
            RoundEnded: this node's part in the round is over.
        """
        if not self.roll.look() or not self.is_root:
            return
        self._take_surveys()
        self._ping()
        for rank, survey in self._surveys.items():
            if survey.stall:
                raise RoundEnded(f"{self.peer_name(rank)}: {survey.stall}")

    def _take_surveys(self) -> None:
        """The root: keep this round's surveys that arrived; a survey of an earlier
        round comes from a node counted lost meanwhile (a frozen process that woke up):
        it is told so, and drops its copy."""
        for rank, (round_, survey) in receive_arrived(self.comm, _SURVEY_TAG):
            if round_ == self.round and rank in self.members and rank not in self.lost:
                self._surveys[rank] = survey
                self.roll.reported.add(rank)
                self.roll.heard(rank)
            else:
                survivors = tuple(r for r in self.members if r not in self.lost)
                self._send(Verdict(None, survivors, lost=dict(self.lost)), [rank])

    def _ping(self) -> None:
        """The root: "still working" to the members waiting for the verdict."""
        now = time.monotonic()
        if now - self._last_ping >= min(self.timeout / 4, 1.0):
            self._last_ping = now
            self._send(None, [r for r in self._surveys if r != self.root])

    def report(self, survey: Survey) -> Verdict:
        """A participant: send the root this round's survey and return its verdict.

        Raises:
            RootLost: the root did not take the survey, or went silent.
        """
        lost = f"lost the root, {self.peer_name(self.root)}"
        with interrupt.deadline(self.timeout + 2 * ANNOUNCE_GRACE, lost):
            sent = send_object(self.comm, (self.round, survey), self.root, _SURVEY_TAG,
                               self.timeout)
        if not sent:
            raise RootLost(f"{lost}: it took no message for {self.timeout:g} s")
        # The root pings while it collects; before, it may be busy for up to a timeout
        # noticing a stall of its own (on another lost node).
        patience = 2 * self.timeout + 2.0
        while True:
            got = receive_objects(self.comm, [self.root], _VERDICT_TAG, patience,
                                  longest_pause=0.02)
            if self.root not in got:
                raise RootLost(f"{lost}: no word from it for {patience:g} s")
            if got[self.root] is not None:
                verdict: Verdict = got[self.root]
                self.lost = dict(verdict.lost)
                return verdict

    def collect(self, own: Survey) -> dict[int, Survey]:
        """The root: this round's surveys.  Once any member stalled, the round is
        called off for those yet to report; a member is waited for as long as it shows
        signs of life, and counted lost (added to :attr:`lost`) once it was silent for
        the timeout."""
        surveys = self._surveys
        surveys[self.root] = own
        self.roll.reported.add(self.root)
        pause = 1e-3
        while True:
            self._take_surveys()
            self.roll.listen()
            pending = [r for r in self.members if r not in surveys and r not in self.lost]
            if not pending:
                break
            named = self._named(surveys)
            if any(s.stall for s in surveys.values()):
                # Not to a node named in a stall or silent already: a send to a dead
                # process blocks inside MPI until its retries run out.
                self.roll.call_off(r for r in pending
                                   if r not in named and r not in self.roll.silent(named))
            self._ping()
            for rank in self.roll.silent(named):
                if rank not in self.lost:
                    self.lost[rank] = self._why_lost(rank, surveys)
            time.sleep(pause)
            tend_background()
            pause = min(2 * pause, 0.02)
        self._surveys = {}
        return surveys

    def _named(self, surveys: dict[int, Survey]) -> set[int]:
        """The members a stall names: the suspects, and the parents a stall's message
        names as sending nothing."""
        named = {r for s in surveys.values() for r in s.suspects}
        stalls = [s.stall for s in surveys.values() if s.stall]
        return named | {r for r in self.members
                        if any(f"from {self.peer_name(r)} " in stall for stall in stalls)}

    def _why_lost(self, rank: int, surveys: dict[int, Survey]) -> str:
        seen = [f"{self.peer_name(r)}: {s.stall}" for r, s in sorted(surveys.items())
                if s.stall and (rank in s.suspects or self.peer_name(rank) in s.stall)]
        return (f"lost mid-transfer: no sign of life for {self.timeout:g} s"
                + (f" ({'; '.join(seen)})" if seen else ""))

    def announce(self, verdict: Verdict, to: list[int]) -> None:
        """The root: send ``verdict`` to ``to``, waiting on none of them for long."""
        self._send(verdict, to)
        try:
            poll(list(self._requests), ANNOUNCE_GRACE)
        except MPI.Exception:
            pass

    def _send(self, obj: Verdict | None, to: list[int]) -> None:
        self._requests = [r for r in self._requests if not _done(r)]
        self._requests += send_objects(self.comm, obj, to, _VERDICT_TAG)

    def next_round(self, verdict: Verdict) -> None:
        """On to the next round, among the survivors the verdict names."""
        self.round += 1
        self.members = list(verdict.survivors)


def _done(request: MPI.Request) -> bool:
    try:
        return bool(request.Test())
    except MPI.Exception:
        return True


# -- the rounds -----------------------------------------------------------------------------

@dataclass
class Attempt:
    """One round's engine and what it says about this node.

    Attributes:
        engine: the round's engine (its ``transfer`` not yet called).
        held: chunks of this node's copy written cleanly so far, after the round.
        good: whether this node's copy can still become complete.
    """

    engine: Engine
    held: Callable[[], int]
    good: Callable[[], bool]


def run_rounds(rounds: Rounds, first: Attempt, recoverable: bool, count: int,
               next_attempt: Callable[[Rounds, Verdict, Attempt], Attempt],
               ) -> tuple[EngineResult, Outcome, str | None, list[Engine]]:
    """Run the transfer, re-formed among the survivors as long as that helps.  Each
    engine must call :meth:`Rounds.watch` at every wake-up of its waits.

    Returns this node's engine result (its writes ended), the source's outcome, why this
    node's transfer stalled if it could not be repaired (else ``None``), and every
    engine used (the earlier ones may still be named by MPI requests that never end:
    keep them until the run is over).
    """
    attempt, engines = first, [first.engine]
    roll = rounds.roll
    while True:
        stall: str | None = None
        suspects: tuple[int, ...] = ()
        engine = attempt.engine
        rounds.begin(engine.schedule)
        try:
            engine.transfer()
        except Stalled as exc:
            stall = str(exc)
            suspects = exc.suspects if isinstance(exc, RoundEnded) else tuple(engine.suspects)
            roll.drain(engine.schedule.tag, engine.framing.capacity)
        result = engine.finish_writes(lambda progress: roll.pulse())
        survey = Survey(held=count if rounds.is_root else attempt.held(),
                        good=attempt.good(), stall=stall, suspects=suspects)
        if rounds.is_root:
            verdict = _decide(rounds, survey, result, recoverable)
        elif not roll.settled(rounds.timeout):
            raise RootLost(f"lost the root, {rounds.peer_name(rounds.root)}: it took no "
                           f"message for {rounds.timeout:g} s")
        else:
            verdict = rounds.report(survey)
        if verdict.outcome is not None:
            return result, verdict.outcome, stall, engines
        if rounds.comm.rank in verdict.lost:  # counted lost (it froze, then woke up)
            why = verdict.lost[rounds.comm.rank]
            return result, (None, None, None), f"counted lost by the root ({why})", engines
        if rounds.comm.rank not in verdict.survivors:  # this copy failed: nothing to add
            return result, (None, None, None), None, engines
        rounds.next_round(verdict)
        STRANDED.append(engine)
        attempt = next_attempt(rounds, verdict, attempt)
        engines.append(attempt.engine)


def _decide(rounds: Rounds, own: Survey, result: EngineResult,
            recoverable: bool) -> Verdict:
    """The root, after a round: close the run, or re-form it among the survivors."""
    surveys = rounds.collect(own)
    outcome: Outcome = (result.source_digest, result.read_error, result.source_size)
    answered = [r for r in rounds.members if r in surveys and r != rounds.root]
    stalled = any(s.stall for s in surveys.values())
    repair = (stalled and recoverable and result.read_error is None
              and rounds.round < MAX_ROUNDS)
    if not repair:
        verdict = Verdict(outcome, lost=dict(rounds.lost))
    else:
        survivors = (rounds.root, *(r for r in answered if surveys[r].good))
        verdict = Verdict(None, survivors, {r: surveys[r].held for r in survivors},
                          dict(rounds.lost))
    rounds.announce(verdict, answered)
    return verdict
