"""``stage()``: the one collective call that plans, transfers, verifies and reports.

Every rank of ``comm`` calls it with the same arguments and every rank returns the same
:class:`StageReport` (or raises the same :class:`UsageError`), so an application can act
on the outcome without further communication.
"""

from __future__ import annotations

import logging
import os
import time

from mpi4py import MPI

from .errors import UsageError
from .pipeline import DEFAULT_DEPTH, Engine, EngineResult, ProgressCallback
from .plan import Plan, check_chunk_size, check_template, make_plan, resolve_dest
from .report import NodeResult, RankRecord, StageReport
from .schedules import SCHEDULES
from .sink import Sink
from .topology import Topology

log = logging.getLogger("mpistage.stage")

ALGORITHMS: tuple[str, ...] = tuple(SCHEDULES)
DEFAULT_CHUNK = 4 << 20


def stage(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    comm: MPI.Comm | None = None,
    algorithm: str = "chain",
    chunk_size: int = DEFAULT_CHUNK,
    root: int = 0,
    ranks_as_nodes: bool = False,
    fsync: bool = False,
    verify: bool = False,
    depth: int = DEFAULT_DEPTH,
    progress: ProgressCallback | None = None,
    started: float | None = None,
) -> StageReport:
    """Copy ``source`` from rank ``root`` to ``dest`` on every node (collective).

    Args:
        source: file to read on the root.
        dest: where each node writes: an existing directory (the file keeps its name) or
            a file path; may contain ``{node}``, ``{host}`` and ``{rank}``.
        comm: communicator of every rank taking part (default ``MPI.COMM_WORLD``).
        algorithm: one of :data:`ALGORITHMS`.
        chunk_size: bytes per pipelined message.
        root: rank of ``comm`` that reads the source.
        ranks_as_nodes: treat every rank as its own node.
        fsync: flush every copy to its device before renaming it into place.
        verify: re-read every copy from disk and compare digests before the rename.
        depth: chunk buffers per leader (memory per leader is ``depth * chunk_size``).
        progress: ``progress(done, total)`` called on the root as chunks leave it.
        started: a ``time.perf_counter()`` value counted as the start of the run; the
            CLI passes the process's start so that start-up includes MPI initialization.

    Returns:
        The report, identical on every rank; ``report.ok`` tells whether every node
        holds a verified copy.

    Raises:
        UsageError: on every rank, for bad input; nothing has been created then.
    """
    entered = time.perf_counter()
    comm = MPI.COMM_WORLD if comm is None else comm
    dest = os.fspath(dest)
    _check_arguments(comm, algorithm, chunk_size, root, depth, dest)
    comm = comm.Dup()  # our own context: our messages never match the application's
    topo: Topology | None = None
    try:
        topo = Topology.build(comm, root, ranks_as_nodes)
        phases = {"startup": time.perf_counter() - (entered if started is None else started)}

        mark = time.perf_counter()
        plan = _agree_on_plan(comm, root, source, dest, chunk_size, algorithm)
        target = _agree_on_targets(topo, plan)
        phases["plan"] = time.perf_counter() - mark

        node: NodeResult | None = None
        source: tuple[str | None, str | None] | None = None
        if topo.leaders is not None:
            node, source = _transfer_and_commit(
                topo, plan, target, phases, fsync=fsync, verify=verify, depth=depth,
                progress=progress,
            )
        _quiet_barrier(comm)
        phases["total"] = time.perf_counter() - (entered if started is None else started)
        return _gather_report(topo, plan, node, source, phases, depth)
    finally:
        if topo is not None:
            topo.free()
        comm.Free()


def _check_arguments(
    comm: MPI.Comm, algorithm: str, chunk_size: int, root: int, depth: int, dest: str
) -> None:
    """Checks every rank can make alone, so all raise together without talking."""
    if algorithm not in SCHEDULES:
        raise UsageError(
            f"invalid algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}"
        )
    check_chunk_size(chunk_size)
    if not 0 <= root < comm.size:
        raise UsageError(f"invalid root {root}: expected a rank from 0 to {comm.size - 1}")
    if depth < 2:
        raise UsageError(f"invalid depth {depth}: expected at least 2 buffers")
    check_template(dest)


def _agree_on_plan(
    comm: MPI.Comm, root: int, source: str | os.PathLike[str], dest: str,
    chunk_size: int, algorithm: str,
) -> Plan:
    outcome: Plan | str | None = None
    if comm.rank == root:
        try:
            outcome = make_plan(source, dest, chunk_size, algorithm)
        except UsageError as exc:
            outcome = str(exc)
    outcome = comm.bcast(outcome, root=root)
    if isinstance(outcome, str):
        raise UsageError(outcome)
    assert isinstance(outcome, Plan)
    return outcome


def _agree_on_targets(topo: Topology, plan: Plan) -> str | None:
    """Each leader resolves its destination; any bad one stops every rank."""
    target: str | None = None
    problem: str | None = None
    if topo.leaders is not None:
        try:
            target = str(resolve_dest(
                plan.dest, plan.source_name,
                node=topo.node.index, host=topo.node.host, rank=topo.comm.rank,
            ))
        except UsageError as exc:
            problem = f"node {topo.node.index} ({topo.node.host}): {exc}"
    problems = [p for p in topo.comm.allgather(problem) if p]
    if problems:
        reasons = {p.split(": ", 1)[1] for p in problems}
        if len(problems) == len(topo.nodes) and len(reasons) == 1:
            raise UsageError(reasons.pop())  # the same on every node: say it once
        raise UsageError("; ".join(problems))
    return target


def _transfer_and_commit(
    topo: Topology, plan: Plan, target: str | None, phases: dict[str, float], *,
    fsync: bool, verify: bool, depth: int, progress: ProgressCallback | None,
) -> NodeResult:
    """Leader only: run the engine, learn the source's digest, commit or discard."""
    assert topo.leaders is not None and target is not None
    sink: Sink | None = None
    sink_error: str | None = None
    try:
        sink = Sink(target)
    except OSError as exc:
        sink_error = f"cannot create a temp file beside {target}: {exc.strerror}"
    try:
        schedule = SCHEDULES[plan.algorithm](topo.leaders, topo.root_node)
        is_root = topo.comm.rank == topo.root
        engine = Engine(
            plan, schedule, sink, depth=depth,
            progress=progress if (progress is not None and is_root) else _noop,
        )
        result: EngineResult = engine.run()
        phases.update(result.phases)
        result.write_error = sink_error or result.write_error
        source_digest, source_error = topo.leaders.bcast(
            (result.source_digest, result.read_error), root=topo.root_node
        )
        error = _judge(result, source_digest, source_error)
        if error is None and sink is not None:
            try:
                sink.commit(
                    mode=plan.mode, mtime_ns=plan.mtime_ns, fsync=fsync,
                    verify_digest=source_digest if verify else None,
                )
                phases.update(sink.timings)
            except (OSError, ValueError) as exc:
                error = f"finishing {target} failed: {exc}"
        node = NodeResult(
            index=topo.node.index, host=topo.node.host, rank=topo.comm.rank,
            path=target, ok=error is None, error=error, digest=result.digest,
            bytes=sink.bytes_written if sink is not None else 0,
        )
        return node, (source_digest, source_error)
    finally:
        if sink is not None:
            sink.discard()  # no-op after a commit; removes the temp file otherwise


def _judge(result: EngineResult, source_digest: str | None, source_error: str | None) -> str | None:
    """Why this node's copy must not be kept, or ``None`` if it is good."""
    if source_error is not None:
        return f"source read failed on the root: {source_error}"
    if result.write_error is not None:
        return result.write_error
    if result.digest != source_digest:
        return f"digest mismatch: wrote {result.digest}, source {source_digest}"
    return None


def _noop(done: int, total: int) -> None:
    """Progress callback for ranks that do not report progress."""


def _quiet_barrier(comm: MPI.Comm) -> None:
    """A barrier that sleeps instead of spinning, so ranks that wait (non-leaders, fast
    nodes) leave the cores to the ranks still moving data."""
    request = comm.Ibarrier()
    pause = 1e-4
    while not request.Test():
        time.sleep(pause)
        pause = min(pause * 2, 5e-3)


def _gather_report(
    topo: Topology, plan: Plan, node: NodeResult | None,
    source: tuple[str | None, str | None] | None, phases: dict[str, float], depth: int,
) -> StageReport:
    comm = topo.comm
    record = RankRecord(
        rank=comm.rank, node=topo.node.index, host=topo.node.host,
        leader=topo.is_leader, phases=phases,
    )
    gathered = comm.gather((record, node, source), root=0)
    report: StageReport | None = None
    if comm.rank == 0:
        assert gathered is not None
        nodes = sorted((n for _, n, _ in gathered if n is not None), key=lambda n: n.index)
        source_digest, source_error = next(s for _, _, s in gathered if s is not None)
        report = StageReport(
            version=_version(),
            source=plan.source,
            size=plan.size,
            source_digest=source_digest,
            algorithm=plan.algorithm,
            chunk_size=plan.chunk_size,
            depth=depth,
            nodes=nodes,
            ranks=sorted((r for r, _, _ in gathered), key=lambda r: r.rank),
            ok=all(n.ok for n in nodes),
            source_error=source_error,
        )
    return comm.bcast(report, root=0)


def _version() -> str:
    from . import __version__

    return __version__
