"""``stage()``: the one collective call that plans, checks, transfers, verifies and reports.

Every rank of ``comm`` calls it with the same arguments and every rank returns the same
:class:`StageReport` (or raises the same :class:`UsageError`), so an application can act
on the outcome without further communication.

After the pre-flight check no step waits forever: the transfer stops within ``timeout``
seconds of making no progress, and the closing exchange (statuses to rank 0, its verdict
back) is point-to-point with deadlines, so a dead or cut-off node is named in the report
instead of hanging the job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO

from mpi4py import MPI

from .. import faults
from ..engine import stuck
from ..engine.algorithms import SCHEDULES
from .closing import agree_on_report, connect_early, participants
from ..engine.codec import CodecCost
from ..engine.codec import check as check_codec
from .copies import FileCopy, PipeCopy, SourceOutcome
from ..model.decide import AUTO, Prediction, decide
from .agreement import check_arguments_agree
from ..errors import CommandFailed, RootLost, Stalled, UsageError
from .shared_dest import check_shared_paths, verify_shared
from ..engine.liveness import Heartbeat, watch, writeback_activity
from ..model.choice import CHUNK_CHOICES, fits
from ..model import Parameters
from ..mpi_library import fail_fast
from .options import DEFAULT_CHUNK, DEFAULT_MEMORY, StageOptions
from ..engine.buffers import BufferPool, PhaseClock
from ..engine.pipeline import DEFAULT_DEPTH, DEFAULT_TIMEOUT, Engine, ProgressCallback, SourceFactory
from ..plan import Plan, SourceInfo, check_template, describe_source
from .preflight import NodeCheck, check_commands, preflight
from ..engine.recovery import Attempt, Rounds, Verdict, can_recover, run_rounds
from ..engine.reformed import Reformed
from ..sources.held import HeldChunks
from ..engine.rollcall import draining, run_over
from .report import NodeResult, RankRecord, StageReport
from ..sinks.file import Sink
from ..sources.source import FileSource
from ..sources.named import Sources, SourceSpec
from ..sources.streams import STDIN, StreamInput, StreamSource, describe_stream, is_stream, open_stream
from .topology import Topology
from ..units import format_bytes
from ..engine.waiting import quiet_barrier

if TYPE_CHECKING:  # a tree's modules load only for a tree's run
    from ..sources.manifest import Manifest
    from ..sinks.pipe import PipeSink
    from .treecopy import TreeCopy
    from ..sinks.tree import TreeSink

log = logging.getLogger("mpistage.staging.run")



def stage(
    source: Sources | BinaryIO,
    dest: str | os.PathLike[str] | None,
    *,
    comm: MPI.Comm | None = None,
    pipe: str | None = None,
    compress: str = "none",
    expect_size: int | None = None,
    files_from: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    nul: bool = False,
    delete: bool = False,
    skip_special: bool = False,
    algorithm: str = AUTO,
    chunk_size: int | str = AUTO,
    root: int = 0,
    ranks_as_nodes: bool = False,
    arity: int = 2,
    calibration: Parameters | str | os.PathLike[str] | None = None,
    fsync: bool = False,
    verify: bool = False,
    depth: int = DEFAULT_DEPTH,
    memory: int = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
    mkdir: bool = False,
    skip_bad_nodes: bool = False,
    quick: bool = False,
    remove_first: bool = False,
    no_clobber: bool = False,
    shared_dest: bool = False,
    progress: ProgressCallback | None = None,
    started: float | None = None,
) -> StageReport:
    """Copy ``source`` from rank ``root`` to ``dest`` on every node (collective).

    Args:
        source: what to read on the root: a file, a directory (staged whole), or a list
            of them (several need a directory ``dest``); ``None`` or ``[]`` with
            ``files_from``; ``"-"`` for standard input, or a binary file object: a
            stream, read to its end (its size unknown in advance).
        dest: where each node writes, as ``cp -r`` does: an existing directory receives
            ``dest/basename(source)``; else, for one source, ``dest`` is its new path
            (a stream's must be). May contain ``{node}``, ``{host}`` and ``{rank}``.
            ``None`` with ``pipe``.
        comm: communicator of every rank taking part (default ``MPI.COMM_WORLD``).
        pipe: instead of writing a file, run this shell command on every node (its
            placeholders expanded) and write the stream to its standard input; a node
            succeeds when every byte arrived, the digest matched and it exited 0.
        compress: ``"none"``, ``"zstd"``, ``"zstd:LEVEL"``, ``"lz4"`` or ``"auto"`` (the
            model weighs them on a sample of the source): chunks are encoded once on
            the root and decoded by each node for its own write.
        expect_size: a stream's expected size: pre-flight checks room for it and the
            model plans for it.
        files_from: a file listing the paths to stage, one a line (NUL-separated with
            ``nul``), relative to ``base`` (default: the list's directory) and kept
            relative under ``dest``.
        delete: remove from the destination's copy of a source directory what the
            source does not hold (like ``rsync --delete``; by default it is kept, as
            ``cp`` keeps it).
        skip_special: leave out sockets, FIFOs and devices in a tree (and report them)
            instead of refusing the tree.
        algorithm: one of :data:`ALGORITHMS`, or ``"auto"`` (the default): the one the
            cost model predicts fastest.
        chunk_size: bytes per pipelined message, or ``"auto"`` (the default): the
            model's best within the memory budget.
        root: rank of ``comm`` that reads the source.
        ranks_as_nodes: treat every rank as its own node.
        arity: children per node of the ``tree`` algorithm.
        calibration: parameters (or a calibration file) for the model; without them
            the file named by ``$MPISTAGE_CALIBRATION``, else the root measures its
            first link quickly (not for a file of at most 1 MiB for which no link
            could change the model's choice).
        fsync: flush every copy to its device before renaming it into place.
        verify: re-read every copy from disk and compare digests before the rename.
        depth: chunk buffers per leader (fewer where ``depth * chunk_size`` would
            exceed ``memory``).
        memory: bytes of chunk buffers per leader; ``auto`` picks chunks of at most
            ``memory // depth``, and a chunk size above ``memory / 2`` is refused.
        timeout: seconds a transfer may make no progress before it counts as stalled.
        mkdir: create the destination directory where it is missing.
        skip_bad_nodes: go on without nodes that fail the pre-flight check (they are
            reported, and the run counts as failed) instead of stopping.
        quick: count an existing copy as up to date on size and mtime alone, instead of
            size and digest.
        remove_first: delete an existing, outdated copy before writing, for disks that
            cannot hold both (in a tree: each outdated file just before its new bytes).
        no_clobber: fail on nodes where something other than an up-to-date copy
            already stands at the destination, instead of replacing it (sbcast's
            default; its ``--force`` is this option's absence).
        shared_dest: where several nodes' DEST is one file on a file system they share,
            write it once (the lowest node) and have the others check it in place,
            instead of refusing the run (one file, not a tree).
        progress: ``progress(done, total)`` called on the root as chunks leave it (bytes
            of the stream); for a tree, a callback that also has a ``files(done, total)``
            method is told the files sent, too (the CLI's progress line shows both).
        started: a ``time.perf_counter()`` value counted as the start of the run; the
            CLI passes the process's start so that start-up includes MPI initialization.

    Returns:
        The report, identical on every rank; ``report.ok`` tells whether every node
        holds a verified copy.

    Raises:
        UsageError: on every rank, for bad input or a failed pre-flight check; nothing
            has been created then (except directories made by ``mkdir``).
        Stalled: on a rank that lost contact with rank 0; rank 0 returns a report with
            ``stalled`` set.  Either way MPI may now be unusable: abort the job.
    """
    entered = time.perf_counter()
    start = entered if started is None else started
    comm = MPI.COMM_WORLD if comm is None else comm
    check_arguments_agree(comm, "stage", dict(
        source=source, dest=dest, pipe=pipe, compress=compress, expect_size=expect_size,
        files_from=files_from, base=base, nul=nul, delete=delete, skip_special=skip_special,
        algorithm=algorithm, chunk_size=chunk_size, root=root, ranks_as_nodes=ranks_as_nodes,
        arity=arity, calibration=calibration, fsync=fsync, verify=verify, depth=depth,
        memory=memory, timeout=timeout, mkdir=mkdir, skip_bad_nodes=skip_bad_nodes,
        quick=quick, remove_first=remove_first, no_clobber=no_clobber,
        shared_dest=shared_dest))
    dest = _destination(dest, pipe)
    kind = _stream_kind(comm, source, root)
    options = StageOptions(
        algorithm=algorithm, chunk_size=chunk_size, root=root, ranks_as_nodes=ranks_as_nodes,
        arity=arity, calibration=calibration, fsync=fsync, verify=verify, depth=depth,
        memory=memory, timeout=timeout, mkdir=mkdir, skip_bad_nodes=skip_bad_nodes,
        quick=quick, remove_first=remove_first, no_clobber=no_clobber, delete=delete,
        shared_dest=shared_dest,
        skip_special=skip_special, compress=check_codec(compress), pipe=pipe,
        expect_size=expect_size, stream=kind is not None,
    )
    options.check(comm.size)
    check_template(dest)
    what = _what(source, files_from, base, nul, options, kind)
    with _own_communicator(comm) as comm, _topology(comm, options) as topo:
        phases = {"startup": time.perf_counter() - start}
        mark = time.perf_counter()
        stream = open_stream(source) if kind and comm.rank == options.root else None
        info, params, manifest, codecs = _agree_on_source(comm, what, dest, options, stream)
        checks, copy, info = _check_nodes(topo, info, manifest, options, stream)
        result: NodeResult | None = None
        outcome: SourceOutcome | None = None
        stall: str | None = None
        lost: dict[int, str] = {}
        root_lost = False
        with _transfer_communicator(topo, checks) as transfer_comm:
            connect_early(topo, checks, transfer_comm, timeout)
            plan, prediction = _decide_plan(topo, checks, transfer_comm, info, params, options,
                                            copy.files_in_stream, codecs)
            phases["plan"] = time.perf_counter() - mark
            if topo.is_leader:
                mine = next(c for c in checks if c.index == topo.node.index)
                try:
                    result, outcome = _take_part(topo, plan, checks, mine, transfer_comm,
                                                 phases, options, progress, copy, lost)
                except Stalled as exc:
                    stall = str(exc)
                    root_lost = isinstance(exc, RootLost)
                    log.debug("stalled: %s", stall)
                    result = NodeResult(index=mine.index, host=mine.host, rank=comm.rank,
                                        path=mine.target, status="failed",
                                        error=f"stalled: {stall}")
        phases["total"] = time.perf_counter() - start
        record = RankRecord(rank=comm.rank, node=topo.node.index, host=topo.node.host,
                            leader=topo.is_leader, phases=phases)
        report = agree_on_report(topo, plan, checks, record, result, outcome, prediction,
                                 stall, options.buffers(plan.chunk_size), timeout,
                                 copy.summary(), pipe, lost, root_lost)
        if any(c.shares_with is not None for c in checks):
            report = verify_shared(topo, checks, report, timeout)
        return report


def _destination(dest: str | os.PathLike[str] | None, pipe: str | None) -> str:
    """What each node's target is made from: DEST, or with ``pipe`` the command."""
    if pipe is not None:
        if dest is not None:
            raise UsageError("--pipe CMD takes the place of DEST: give SRC and CMD only")
        if not pipe.strip():
            raise UsageError("--pipe command is empty")
        return pipe
    if dest is None:
        raise UsageError("no destination given")
    return os.fspath(dest)


def _stream_kind(comm: MPI.Comm, source: object, root: int) -> str | None:
    """Whether the root's ``source`` is a stream (``"stdin"``, ``"other"``) or not
    (``None``), the same on every rank: only the root's source counts for a stream, so
    the others may pass ``None``."""
    if not 0 <= root < comm.size:
        return None  # StageOptions.check says so, on every rank
    kind = None
    if comm.rank == root and is_stream(source):
        kind = "stdin" if source == STDIN else "other"
    return comm.bcast(kind, root=root)


def _what(source: Sources | BinaryIO, files_from: str | os.PathLike[str] | None,
          base: str | os.PathLike[str] | None, nul: bool,
          options: StageOptions, kind: str | None) -> SourceSpec | None:
    """The sources as given; ``None`` for a stream (checked here, alike on every rank)."""
    if kind is not None:
        if files_from is not None:
            raise UsageError("give - (standard input) or --files-from, not both")
        if kind == "stdin" and options.root != 0:
            raise UsageError("standard input reaches rank 0 only: --root must be 0 with -")
        return None
    if not isinstance(source, (str, os.PathLike)) and source is not None:
        if any(is_stream(s) for s in source):  # type: ignore[union-attr]
            raise UsageError("- (standard input) is the only source when it is one")
    return SourceSpec.of(source, files_from, base, nul)  # type: ignore[arg-type]


@contextmanager
def _own_communicator(comm: MPI.Comm) -> Iterator[MPI.Comm]:
    """A duplicate of ``comm``: our own context, so our messages never match the
    application's; freed on the way out."""
    own = fail_fast(comm.Dup())
    try:
        yield own
    finally:
        run_over()  # this run's chores and drains (mpistage.engine.rollcall)
        own.Free()


@contextmanager
def _topology(comm: MPI.Comm, options: StageOptions) -> Iterator[Topology]:
    topo = Topology.build(comm, options.root, options.ranks_as_nodes)
    try:
        yield topo
    finally:
        topo.free()


Codecs = tuple[CodecCost | None, ...]


def _agree_on_source(
    comm: MPI.Comm, what: SourceSpec | None, dest: str, options: StageOptions,
    stream: StreamInput | None,
) -> tuple[SourceInfo, Parameters | None, Manifest | None, Codecs]:
    """The root checks the source and reads the calibration (only it can see them);
    every rank learns what is to be sent, for its pre-flight check: one file's (or a
    stream's) description, or a tree's manifest (its columns broadcast as buffers); and
    the codecs ``--compress`` weighs, measured on a sample of the source."""
    outcome: tuple[SourceInfo, Parameters | None, bool, list[str], Codecs] | str | None = None
    manifest: Manifest | None = None
    if comm.rank == options.root:
        try:
            if what is None:
                info = describe_stream(dest, options.expect_size,
                                       stream.name if stream is not None else STDIN)
            elif what.is_tree():
                if options.pipe is not None:
                    raise UsageError("--pipe takes one file or - (standard input), not a tree")
                manifest, info = what.walk(dest, skip_special=options.skip_special)
                if options.no_clobber:
                    raise UsageError("--no-clobber stages one file, not a tree")
            else:
                info = describe_source(what.sources[0], dest)
            outcome = (info, options.load_calibration(), manifest is not None,
                       manifest.skipped if manifest is not None else [],
                       _codec_costs(options.compress, info, manifest, stream))
        except UsageError as exc:
            outcome = str(exc)
    quiet_barrier(comm)  # the others sleep while the root walks a tree
    outcome = comm.bcast(outcome, root=options.root)
    if isinstance(outcome, str):
        raise UsageError(outcome)
    assert outcome is not None
    info, params, is_tree, skipped, codecs = outcome
    if is_tree:
        from ..sources.manifest import Manifest

        manifest = (manifest or Manifest()).bcast(comm, options.root)
        manifest.skipped = skipped
    return info, params, manifest, codecs


def _codec_costs(compress: str, info: SourceInfo, manifest: Manifest | None,
                 stream: StreamInput | None) -> Codecs:
    """Root: the codecs to weigh, each measured on a sample of this source."""
    if compress == "none":
        return (None,)
    from ..sources.sampling import codec_costs, sample_file, sample_files, sample_stream

    if stream is not None:
        samples = sample_stream(stream)
    elif manifest is not None:
        samples = sample_files(manifest)
    else:
        try:
            samples = sample_file(info.source, info.size)
        except OSError as exc:
            raise UsageError(f"cannot read {info.source} to sample it: {exc.strerror}") from None
    return codec_costs(compress, samples)


def _check_nodes(
    topo: Topology, info: SourceInfo, manifest: Manifest | None, options: StageOptions,
    stream: StreamInput | None = None,
) -> tuple[list[NodeCheck], FileCopy | TreeCopy, SourceInfo]:
    """The pre-flight check of every node, for one file, a stream, a command's input
    or a tree; for a tree, the description's size becomes the stream's (the files some
    node lacks)."""
    source: SourceFactory = FileSource
    if info.stream:
        source = partial(StreamSource, stream=stream)
    if options.pipe is not None:
        return check_commands(topo, options.pipe), PipeCopy(source), info
    if manifest is None:
        checks = preflight(topo, info, mkdir=options.mkdir, remove_first=options.remove_first,
                           quick=options.quick, skip_bad_nodes=options.skip_bad_nodes,
                           no_clobber=options.no_clobber)
        checks = check_shared_paths(topo, checks, allowed=options.shared_dest)
        return checks, FileCopy(source), info
    if options.shared_dest:
        raise UsageError("--shared-dest writes one file for the nodes that share it; a "
                         "tree is staged into a DEST of each node's own ({node} in DEST)")
    from .treecheck import check_tree
    from .treecopy import TreeCopy

    checks, node_tree, needed = check_tree(
        topo, manifest, info, mkdir=options.mkdir, remove_first=options.remove_first,
        quick=options.quick, delete=options.delete, skip_bad_nodes=options.skip_bad_nodes)
    check_shared_paths(topo, checks)
    copy = TreeCopy(manifest, needed, node_tree, delete=options.delete)
    return checks, copy, replace(info, size=copy.bytes_in_stream)


def _decide_plan(
    topo: Topology, checks: list[NodeCheck], transfer_comm: MPI.Comm | None,
    info: SourceInfo, params: Parameters | None, options: StageOptions, files: int = 0,
    codecs: Codecs = (None,),
) -> tuple[Plan, Prediction | None]:
    """The plan, decided once on the root and broadcast to every rank: ``auto`` resolved
    by the model over the links among the nodes that need the file (the root measures
    one when there is no calibration).  When no node needs the file nothing is measured
    and ``auto`` means the defaults."""
    taking_part = participants(topo, checks)
    _check_buffers(options, len(taking_part))
    decided: tuple[Plan, Prediction | None] | None = None
    if transfer_comm is not None:
        decided = decide(transfer_comm, taking_part.index(topo.root_node),
                         info, calibration=params, algorithm=options.algorithm,
                         chunk_size=options.chunk_size, arity=options.arity,
                         timeout=options.timeout, max_chunk=options.max_auto_chunk,
                         files=files, codecs=codecs, memory=options.memory,
                         recoverable=files == 0 and options.pipe is None)
    if topo.comm.rank == options.root and decided is None:
        decided = (Plan.of(info, chunk_size=min(DEFAULT_CHUNK, options.max_auto_chunk)
                           if options.auto_chunk
                           else int(options.chunk_size),
                           algorithm="chain" if options.auto_algorithm else options.algorithm),
                   None)
    decided = topo.comm.bcast(decided, root=options.root)
    assert decided is not None
    return decided


def _check_buffers(options: StageOptions, nodes: int) -> None:
    """Every rank: an algorithm given by name must fit the buffers it needs at least
    (twotree's grow with the node count) in ``--memory``, with its smallest chunk."""
    if options.auto_algorithm:
        return  # the model picks among those that fit
    least = CHUNK_CHOICES[0] if options.auto_chunk else int(options.chunk_size)
    if not fits(options.algorithm, nodes, least, options.memory):
        need = SCHEDULES[options.algorithm].buffers_needed(nodes)
        raise UsageError(
            f"{options.algorithm} to {nodes} nodes keeps {need} chunks per node: "
            f"{need} x {format_bytes(least)} is more than the memory budget of "
            f"{format_bytes(options.memory)}: use a smaller chunk or a larger --memory")


@contextmanager
def _transfer_communicator(topo: Topology, checks: list[NodeCheck]) -> Iterator[MPI.Comm | None]:
    """The leaders that take part: those that need the file, and the root (which reads
    even when its own node needs nothing).  ``None`` elsewhere, or if nobody needs it;
    freed on the way out, whatever happened."""
    if topo.leaders is None:
        yield None
        return
    needed = any(c.needs_data for c in checks)
    mine = next(c for c in checks if c.index == topo.node.index)
    joins = needed and (mine.needs_data or topo.comm.rank == topo.root)
    sub = topo.leaders.Split(0 if joins else MPI.UNDEFINED, key=topo.node.index)
    if joins:
        fail_fast(sub)
    try:
        yield sub if joins else None
    finally:
        if joins and not draining(sub):  # a broken round's drains go on to the end
            sub.Free()


def _take_part(
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
                    progress=before.progress, first=first, local_until=local_until,
                    write_from=write_from, writer=before.writer, watch=rounds.watch)
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


def explain(
    source: Sources,
    dest: str | os.PathLike[str],
    *,
    comm: MPI.Comm | None = None,
    files_from: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    nul: bool = False,
    algorithm: str = AUTO,
    chunk_size: int | str = AUTO,
    root: int = 0,
    ranks_as_nodes: bool = False,
    arity: int = 2,
    calibration: Parameters | str | os.PathLike[str] | None = None,
    quick: bool = False,
    depth: int = DEFAULT_DEPTH,
    memory: int = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
    compress: str = "none",
    shared_dest: bool = False,
) -> Prediction | None:
    """What :func:`stage` would do, without moving the file (collective).

    Runs the same checks (bad nodes are left out rather than stopping it) and the same
    link measurement, then returns the prediction for every algorithm and the choice
    (``algorithm`` itself unless it is ``"auto"``); ``None`` if no node needs the file.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    check_arguments_agree(comm, "explain", dict(
        source=source, dest=dest, files_from=files_from, base=base, nul=nul,
        algorithm=algorithm, chunk_size=chunk_size, root=root, ranks_as_nodes=ranks_as_nodes,
        arity=arity, calibration=calibration, quick=quick, depth=depth, memory=memory,
        timeout=timeout, compress=compress, shared_dest=shared_dest))
    dest = os.fspath(dest)
    options = StageOptions(algorithm=algorithm, chunk_size=chunk_size, root=root,
                           ranks_as_nodes=ranks_as_nodes, arity=arity,
                           calibration=calibration, quick=quick, depth=depth,
                           memory=memory, timeout=timeout, skip_bad_nodes=True,
                           compress=check_codec(compress), shared_dest=shared_dest)
    options.check(comm.size)
    check_template(dest)
    what = SourceSpec.of(source, files_from, base, nul)
    with _own_communicator(comm) as comm, _topology(comm, options) as topo:
        info, params, manifest, codecs = _agree_on_source(comm, what, dest, options, None)
        checks, copy, info = _check_nodes(topo, info, manifest, options)
        bad = [c for c in checks if c.problem]
        if bad and not any(c.needs_data for c in checks):
            raise UsageError("\n".join(c.line() for c in bad))  # no node could take it
        prediction = None
        with _transfer_communicator(topo, checks) as transfer_comm:
            if transfer_comm is not None:
                decided = decide(
                    transfer_comm, participants(topo, checks).index(topo.root_node), info,
                    calibration=params, algorithm=AUTO, chunk_size=options.chunk_size,
                    arity=arity, timeout=timeout, max_chunk=options.max_auto_chunk,
                    files=copy.files_in_stream, codecs=codecs,
                    recoverable=(options.auto_algorithm and copy.files_in_stream == 0
                                 and options.pipe is None),
                )
                prediction = decided[1] if decided is not None else None
        if prediction is not None and not options.auto_algorithm:
            chunk, seconds = prediction.choice.predictions[algorithm]
            prediction = replace(prediction, auto=options.auto_chunk, choice=replace(
                prediction.choice, algorithm=algorithm, chunk_size=chunk, predicted=seconds))
        return comm.bcast(prediction, root=root)
