"""A leader's part in the transfer: the engine run (re-formed among the survivors when
a node is lost, :mod:`mpistage.engine.recovery`), the source's outcome learnt, and this
node's copy committed or discarded.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from mpi4py import MPI

from .. import faults
from ..engine import stuck
from ..engine.algorithms import SCHEDULES
from ..engine.buffers import BufferPool, PhaseClock
from ..engine.liveness import Heartbeat, watch, writeback_activity
from ..engine.pipeline import Engine, ProgressCallback, Resume, SourceFactory
from ..engine.recovery import Attempt, Rounds, Verdict, can_recover, run_rounds
from ..engine.reformed import Reformed
from ..errors import CommandFailed, Stalled
from ..plan import Plan
from ..sinks.file import Sink
from ..sources.held import HeldChunks
from ..sources.source import FileSource
from .closing import participants
from .copies import FileCopy, SourceOutcome
from .options import StageOptions
from .preflight import NodeCheck
from .report import NodeResult
from .topology import Topology

if TYPE_CHECKING:  # a tree's modules load only for a tree's run
    from ..sinks.pipe import PipeSink
    from ..sinks.tree import TreeSink
    from .treecopy import TreeCopy


def take_part(
    topo: Topology, plan: Plan, checks: list[NodeCheck], mine: NodeCheck,
    transfer_comm: MPI.Comm | None, phases: dict[str, float], options: StageOptions,
    progress: ProgressCallback | None, copy: FileCopy | TreeCopy, lost: dict[int, str],
) -> tuple[NodeResult, SourceOutcome | None]:
    """Leader only: transfer (if this node takes part), then commit or discard.

    Returns this node's result and, for nodes that took part, the root's
    ``(source_digest, source_error)``; on the transfer's root, ``lost`` is filled
    with the nodes the transfer lost and went on without (index -> why).
    """
    def result(status: str, error: str | None = None, digest: str | None = None,
               written: int = 0, **said: Any) -> NodeResult:
        return NodeResult(index=mine.index, host=mine.host, rank=topo.comm.rank,
                          path=mine.target, status=status, error=error, digest=digest,
                          bytes=written, **copy.counts(mine, status), **said)

    if transfer_comm is None:
        if mine.problem:
            return result("skipped", mine.problem), None
        return result("up-to-date"), None
    return _transfer_and_commit(topo, plan, checks, mine, transfer_comm, phases, result,
                                options, progress, copy, lost)


def _transfer_and_commit(
    topo: Topology, plan: Plan, checks: list[NodeCheck], mine: NodeCheck, comm: MPI.Comm,
    phases: dict[str, float], result: Callable[..., NodeResult], options: StageOptions,
    progress: ProgressCallback | None, copy: FileCopy | TreeCopy, lost: dict[int, str],
) -> tuple[NodeResult, SourceOutcome]:
    """Participant: run the engine (re-formed among the survivors if a node is lost,
    :mod:`mpistage.engine.recovery`), learn the source's outcome, commit or discard."""
    timeout = options.timeout
    taking_part = participants(topo, checks)
    names = [f"node {i} ({checks[i].host})" for i in taking_part]
    receives = mine.needs_data
    sink: Sink | TreeSink | PipeSink | None = None
    sink_error: str | None = None
    if receives:
        try:
            sink = copy.open_sink(mine, remove_first=options.remove_first,
                                  fsync=options.fsync, verify=options.verify)
            if faults.active("hang-write", mine.index):
                faults.make_writes_hang(sink)
        except OSError as exc:
            sink_error = f"cannot write beside {mine.target}: {exc.strerror}"
    # Signs of life for rank 0 while this node's own writes, flush and re-read go on.
    heartbeat = Heartbeat(topo.comm, interval=min(timeout / 4, 1.0))
    root_rank = taking_part.index(topo.root_node)
    # ... and for the transfer's root, during the transfer (signs of life, calls).
    rounds = Rounds(comm, root_rank, timeout, peer_name=lambda rank: names[rank])
    engine: Engine | None = None
    try:
        schedule = SCHEDULES[plan.algorithm](comm, root_rank, options.arity)
        is_root = comm.rank == root_rank
        engine = Engine(
            plan, schedule, sink, depth=options.buffers(plan.chunk_size), timeout=timeout,
            peer_name=lambda rank: names[rank],
            progress=copy.progress(progress) if (progress is not None and is_root) else _noop,
            source=copy.source, digest_writes=copy.digest_writes,
            corrupt=faults.active("corrupt-chunk", mine.index), watch=rounds.watch,
        )
        first = engine

        def good() -> bool:
            return sink_error is None and first.writer.error is None

        with stuck.polled():  # every wait in the rounds is a polled one
            outcome, source, stall, engines = run_rounds(
                rounds, Attempt(engine, held=lambda: first.writer.held, good=good),
                can_recover(plan, schedule, tree=type(copy) is not FileCopy,
                            pipe=options.pipe is not None),
                first.framing.chunk_count() or 0,
                partial(_next_attempt, plan=plan, sink=sink, options=options, names=names,
                        receives=receives))
        engine = engines[-1]
        lost.update({taking_part[rank]: why for rank, why in rounds.lost.items()})
        if stall is not None:
            raise Stalled(stall)  # this node's transfer stalled and could not be repaired
        phases.update(outcome.phases)
        if not receives:  # the root, reading for others; its own node needs nothing
            status = "skipped" if mine.problem else "up-to-date"
            return result(status, mine.problem, wire_bytes=outcome.wire_bytes), source
        outcome.write_error = sink_error or outcome.write_error
        error = copy.judge(outcome, source, sink)
        if error is None and sink is not None:
            error = _commit(copy, sink, plan, mine, options, source[0], heartbeat)
            phases.update(sink.timings)
        written = sink.bytes_written if sink is not None else 0
        said = {"wire_bytes": outcome.wire_bytes,
                "stderr": getattr(sink, "stderr_tail", lambda: None)() or None}
        if error is not None:
            return result("failed", error, outcome.digest, written, **said), source
        return result("copied", None, outcome.digest, written, **said), source
    finally:
        heartbeat.close(timeout)
        rounds.roll.close(timeout)
        if engine is not None:
            engine.close()
        if sink is not None:
            sink.discard()  # no-op after a commit; removes the temp file otherwise


def _next_attempt(rounds: Rounds, verdict: Verdict, previous: Attempt, *, plan: Plan,
                  sink: Sink | TreeSink | PipeSink | None, options: StageOptions,
                  names: list[str], receives: bool) -> Attempt:
    """The engine of a re-formed round (:mod:`mpistage.engine.recovery`): the same algorithm
    among the survivors, each edge carrying the chunks the child lacks; this node reads
    the chunks it holds from its own copy (the root: from the source, digesting on where
    its reader stopped) and receives the rest, writing on where it stopped."""
    before = previous.engine
    shape = SCHEDULES[plan.algorithm].reformed_shape()
    schedule = Reformed(shape, rounds.comm, rounds.members, verdict.held, options.arity,
                        rounds.round)
    count = before.framing.chunk_count() or 0
    source: SourceFactory
    if schedule.is_root:
        write_from = before.writer.held if receives and previous.good() else count
        local_until: int | None = None
    else:
        write_from = local_until = verdict.held[rounds.comm.rank]
    first = min([write_from, *schedule.child_held.values()])
    if schedule.is_root:
        reader = before.source
        assert isinstance(reader, FileSource)

        def source(plan: Plan, pool: BufferPool, clock: PhaseClock) -> FileSource:
            return FileSource.resumed(reader, first, pool, clock)
    else:
        temp = getattr(sink, "temp_path", None)
        source = partial(_held_chunks, path=str(temp))
    engine = Engine(plan, schedule, sink,
                    depth=options.buffers(plan.chunk_size), timeout=options.timeout,
                    peer_name=lambda rank: names[rank], source=source,
                    progress=before.progress, watch=rounds.watch,
                    resume=Resume(first, local_until, write_from, before.writer))
    return Attempt(engine, previous.held, previous.good)


def _held_chunks(plan: Plan, pool: BufferPool, clock: PhaseClock, *, path: str) -> HeldChunks:
    return HeldChunks(plan, pool, clock, path)


def _commit(copy: FileCopy | TreeCopy, sink: Sink | TreeSink | PipeSink, plan: Plan,
            mine: NodeCheck,
            options: StageOptions, source_digest: str | None,
            heartbeat: Heartbeat) -> str | None:
    """Put this node's copy in place, waiting as long as the flush and re-read make
    progress; why it failed, or ``None``."""
    def finish() -> None:
        temp = getattr(sink, "temp_path", None)
        if faults.active("corrupt-disk", mine.index) and temp is not None:
            faults.flip_byte_on_disk(temp)
        if faults.active("slow-commit", mine.index):
            faults.slow_commit(sink)
        copy.finish(sink, plan, fsync=options.fsync, verify=options.verify,
                    source_digest=source_digest)

    try:
        watch(finish, lambda: (sink.progress, writeback_activity()), timeout=options.timeout,
              heartbeat=heartbeat, what=f"finishing {mine.target}")
    except (Stalled, CommandFailed) as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"finishing {mine.target} failed: {exc}"
    return None


def _noop(done: int, total: int) -> None:
    """Progress callback for ranks that do not report progress."""
