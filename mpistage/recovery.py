"""Surviving a lost node: the transfer re-formed among the nodes still there.

A node whose rank is killed, or whose link goes down, stops passing chunks on: in a chain
everyone behind it, and soon everyone before it, stalls.  Without MPI's fault-tolerance
extensions (the MPICH wheel has none; see README "When a node dies") mpistage survives
it with point-to-point messages and deadlines alone, in rounds:

1. **Survey.**  After its transfer ends (or stalls), each participant lets its writes
   end and tells the root a :class:`Survey`: how many chunks it holds, written cleanly,
   whether its copy failed, and on whom its transfer stalled.
2. **Verdict.**  The root waits for every survey, as long as there is news (surveys,
   signs of life from nodes still writing); a node that sends none while its parent
   could not send to it, or that stays silent for the timeout, is *lost*.  If nobody stalled, the :class:`Verdict` carries the source's outcome and
   the run closes as before.  Otherwise it names the survivors and what each holds.
3. **Re-formed run.**  The survivors (the root and every node whose copy is still good)
   run the same algorithm's shape laid over them (:class:`Reformed`; no new communicator,
   whose creation would wait for ever on a survivor that dies meanwhile: a tag of the
   round's own, so no message of the broken run can match), the same engine, resumed:
   each edge carries only the chunks the
   child lacks, and a parent sends the ones it already holds from its own copy on disk
   (:class:`HeldChunks`), so a node after the lost one gets what it missed from the
   nearest node that has it, never from the start of the file.  Writes go on where
   they stopped, into the same temp file and running digest.  Then back to 1.

MPI must let the survivors go on: the launcher must not end the job when one process
dies (hydra's ``-disable-auto-cleanup``, ``srun``'s default, Open MPI's ``--with-ft
ulfm``), and communication errors are returned, not fatal (mpi4py's default).  Where
the launcher ends the job, the run fails as before, cleanly.  A lost root ends the run
(it alone has the source); one file of known size only (a stream cannot be read
twice, a tree's or a command's sink cannot be resumed, and MPI's own broadcast cannot
leave a member out), and not twotree yet (:func:`can_recover`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mpi4py import MPI

from .buffers import Buffer, BufferPool, PhaseClock, pieces
from . import interrupt
from .errors import RootLost, Stalled
from .liveness import Heartbeat, drain_heartbeats
from .pipeline import Engine, EngineResult
from .plan import Plan
from .schedules import DATA_TAG, Forward, Schedule, TreeSchedule
from .source import ChunkSource, _pread_full
from .waiting import poll, receive_objects, send_object, send_objects

_SURVEY_TAG = 7106   # participant → root: a Survey
_VERDICT_TAG = 7107  # root → participants: a Verdict (``None``: still collecting)

#: Re-formed runs at most (each survives at least one more lost node).
MAX_ROUNDS = 3
#: Once every node yet to answer is one its parent could not send to, the root waits this
#: much longer (stalls are seen at slightly different times) before it counts them lost.
SUSPECT_GRACE = 0.5

#: Engines of broken rounds, kept for the life of the process: MPI may still hold
#: requests on their buffers (a send to a host cut off that comes back) that never
#: complete, and must never find that memory freed.
STRANDED: list[Engine] = []

#: The source's outcome: ``(digest, read error, size)`` (:data:`mpistage.copies.SourceOutcome`).
Outcome = tuple[str | None, str | None, int | None]


@dataclass(frozen=True)
class Survey:
    """What a participant tells the root after a round.

    Attributes:
        held: chunks ``0 .. held-1`` are in its copy, written cleanly (the root: every
            chunk, from its file).
        good: its copy can still become complete (no write failed).
        stall: why its transfer stalled, if it did.
        suspects: the children (ranks of the communicator) whose sends stalled or failed:
            only a parent's word counts a silent node lost early, for a child that got
            no data may just sit behind the lost one.
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
    """Whether a run like this one can be re-formed after a lost node (see above).  Not
    twotree's yet: a node fed by two parents keeps making progress on one tree after
    the other stalled, so the survivors' stalls do not line up with the root's
    deadlines (a randomised kill left every node counted lost); it fails cleanly."""
    return (schedule.point_to_point and not schedule.forwards_as_received
            and not plan.stream and plan.codec == "none" and not tree and not pipe)


# -- the round's schedule and sources ----------------------------------------------------

class Reformed(Schedule):
    """An algorithm's shape laid over the survivors (``members``, the root first), on the
    first round's communicator with a tag of the round's own (no message of a broken
    round can match one of this round), each edge carrying only what the child lacks:
    chunk ``k`` goes to a child only if it holds fewer than ``k + 1`` chunks."""

    def __init__(self, shape: type[TreeSchedule], comm: MPI.Comm, members: list[int],
                 held: dict[int, int], arity: int, round_: int) -> None:
        super().__init__(comm, members[0])
        self.name = shape.name
        self.tag = DATA_TAG + round_
        size, me = len(members), members.index(comm.rank)
        parent = shape.parent_of(me, size, arity)
        self.parent = None if parent is None else members[parent]
        self.children = [members[c] for c in shape.children_of(me, size, arity)]
        self.child_held = {child: held[child] for child in self.children}

    def parent_for(self, k: int) -> int | None:
        return self.parent

    def post_receive(self, buf: Buffer, k: int) -> MPI.Request:
        assert self.parent is not None, "the root receives nothing"
        return self.comm.Irecv(buf, source=self.parent, tag=self.tag)

    def post_forward(self, buf: Buffer, k: int) -> Forward:
        lacking = [child for child in self.children if self.child_held[child] <= k]
        return Forward([lambda child=child: self.comm.Isend(buf, dest=child, tag=self.tag)
                        for child in lacking], peers=lacking)


class HeldChunks(ChunkSource):
    """A survivor's own copy read back (its temp file), for the chunks it holds and a
    child of the re-formed run lacks.  Not digested: the node digested them when it
    wrote them, and the child digests what it writes."""

    def __init__(self, plan: Plan, pool: BufferPool, clock: PhaseClock, path: str) -> None:
        super().__init__(plan, pool, clock)
        self.path = path
        self._fd = -1

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.error = f"cannot read back {self.path}: {exc.strerror}"

    def _fill(self, k: int, view: Buffer) -> None:
        offset = k * self.plan.chunk_size
        for piece in pieces(view):
            if _pread_full(self._fd, piece, offset) < len(piece):
                self.error = f"{self.path} is shorter than the chunks it held"
                return
            offset += len(piece)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- the exchange ---------------------------------------------------------------------------

class Rounds:
    """One participant's side of the survey and verdict exchange, round after round, over
    the first round's communicator ``comm``, whose connections root <-> every participant
    were opened at start-up (:func:`mpistage.closing.connect_early`).

    Attributes:
        members: this round's ranks (of ``comm``), the root first after round 0.
        lost: every rank counted lost so far, and why.
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
        self._requests: list[MPI.Request] = []  # sends nobody waits on, kept alive

    @property
    def is_root(self) -> bool:
        return self.comm.rank == self.root

    def report(self, survey: Survey) -> Verdict:
        """A participant: send the root this round's survey and return its verdict.

        Raises:
            RootLost: the root did not take the survey, or went silent.
        """
        lost = f"lost the root, {self.peer_name(self.root)}"
        with interrupt.deadline(self.timeout + 2 * SUSPECT_GRACE, lost):
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
        """The root: this round's surveys, waiting as long as there is news (surveys,
        heartbeats of nodes still writing); a node whose parent could not send to it
        gets :data:`SUSPECT_GRACE` more, any other silent one the timeout.  Those
        without a survey are added to :attr:`lost`."""
        comm = self.comm
        surveys = {self.root: own}
        pending = [r for r in self.members if r != self.root]
        quiet_since = last_ping = time.monotonic()
        while pending:
            got = receive_objects(comm, pending, _SURVEY_TAG, 0.1)
            for rank, (round_, survey) in got.items():
                if round_ == self.round:
                    surveys[rank] = survey
            pending = [r for r in pending if r not in surveys]
            now = time.monotonic()
            if got or drain_heartbeats(comm).intersection(pending):
                quiet_since = now
            if now - last_ping >= min(self.timeout / 4, 1.0):
                last_ping = now  # "still collecting": those waiting know the root lives
                self._send(None, [r for r in surveys if r != self.root])
            suspects = {s for survey in surveys.values() for s in survey.suspects}
            quiet = now - quiet_since
            if (pending and set(pending) <= suspects and quiet >= SUSPECT_GRACE) \
                    or quiet >= self.timeout:
                break
        for rank in pending:
            self.lost[rank] = self._why_lost(rank, surveys)
        return surveys

    def _why_lost(self, rank: int, surveys: dict[int, Survey]) -> str:
        seen = [f"{self.peer_name(r)}: {s.stall}" for r, s in sorted(surveys.items())
                if s.stall and (rank in s.suspects or self.peer_name(rank) in s.stall)]
        return (f"lost mid-transfer: no word from it within {self.timeout:g} s"
                + (f" ({'; '.join(seen)})" if seen else ""))

    def announce(self, verdict: Verdict, to: list[int]) -> None:
        """The root: send ``verdict`` to ``to``, waiting on none of them for long."""
        self._send(verdict, to)
        try:
            poll(list(self._requests), SUSPECT_GRACE)
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
               heartbeat: Heartbeat,
               ) -> tuple[EngineResult, Outcome, str | None, list[Engine]]:
    """Run the transfer, re-formed among the survivors as long as that helps.

    Returns this node's engine result (its writes ended), the source's outcome, why this
    node's transfer stalled if it could not be repaired (else ``None``), and every
    engine used (the earlier ones may still be named by MPI requests that never end:
    keep them until the run is over).
    """
    attempt, engines = first, [first.engine]
    while True:
        stall: str | None = None
        suspects: tuple[int, ...] = ()
        try:
            attempt.engine.transfer()
        except Stalled as exc:
            stall = str(exc)
            suspects = tuple(attempt.engine.suspects)
        result = attempt.engine.finish_writes(heartbeat)
        survey = Survey(held=count if rounds.is_root else attempt.held(),
                        good=attempt.good(), stall=stall, suspects=suspects)
        if rounds.is_root:
            verdict = _decide(rounds, survey, result, recoverable)
        elif not heartbeat.settled(rounds.timeout):
            raise RootLost(f"lost the root, {rounds.peer_name(rounds.root)}: it took no "
                           f"message for {rounds.timeout:g} s")
        else:
            verdict = rounds.report(survey)
        if verdict.outcome is not None:
            return result, verdict.outcome, stall, engines
        if rounds.comm.rank not in verdict.survivors:  # this copy failed: nothing to add
            return result, (None, None, None), None, engines
        rounds.next_round(verdict)
        STRANDED.append(attempt.engine)
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
