"""The closing exchange: outcomes and statuses travel with deadlines, never forever.

After the transfer every participant needs the root's verdict on the source (its digest,
or why reading failed) before it may rename its copy into place, and rank 0 needs every
rank's status to write the report.  Both exchanges are point-to-point, polled with
deadlines, over connections opened at start-up (:func:`connect_early`), so a dead or
cut-off host is named in the report instead of hanging the job.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from .decide import Prediction
from .errors import Stalled
from .liveness import drain_heartbeats
from .pipeline import EngineResult
from .plan import Plan
from .preflight import NodeCheck
from .report import NodeResult, RankRecord, StageReport
from .schedules import binomial_children, binomial_parent
from .topology import Topology
from .waiting import poll, receive_object, receive_objects, send_object

_OUTCOME_TAG = 7101  # root → participants: the source's digest, or why reading failed
_STATUS_TAG = 7102   # every rank → rank 0: its record and its node's result
_VERDICT_TAG = 7103  # rank 0 → every rank: "report follows" or "stalled: …"
_HELLO_TAG = 7104    # start-up: open the connections the closing exchange will use

#: After some rank reported a stall, rank 0 waits this long for the others' statuses.
STALL_GRACE = 3.0


def participants(topo: Topology, checks: list[NodeCheck]) -> list[int]:
    """Node indices of the transfer: those needing the file, and the root's node."""
    return sorted({c.index for c in checks if c.needs_data} | {topo.root_node})


def _outcome_tree(comm: MPI.Comm, root: int) -> tuple[int | None, list[int]]:
    """Parent and children of this rank in the binomial tree that carries the source's
    outcome from the root to every participant, whatever the data's schedule was."""
    size = comm.size
    vrank = (comm.rank - root) % size
    parent = binomial_parent(vrank, size)
    return (
        None if parent is None else (parent + root) % size,
        [(c + root) % size for c in binomial_children(vrank, size)],
    )


def connect_early(
    topo: Topology, checks: list[NodeCheck], transfer_comm: MPI.Comm | None, timeout: float,
) -> None:
    """Open, while every node is still reachable, the connections that the closing
    exchange uses (every rank to rank 0; the outcome tree's edges).

    MPI connects lazily, and with a TCP transport a first message to a host that has
    become unreachable can block inside MPI until the kernel gives up, minutes later:
    the closing exchange must only use connections that already exist.
    """
    comm = topo.comm
    nothing = np.empty(0, dtype=np.uint8)
    if comm.rank == 0:
        requests = [comm.Irecv(nothing, source=r, tag=_HELLO_TAG) for r in range(1, comm.size)]
    else:
        requests = [comm.Isend(nothing, dest=0, tag=_HELLO_TAG)]
    if transfer_comm is not None:
        root_rank = participants(topo, checks).index(topo.root_node)
        parent, children = _outcome_tree(transfer_comm, root_rank)
        requests += [transfer_comm.Isend(nothing, dest=c, tag=_HELLO_TAG) for c in children]
        if parent is not None:
            requests.append(transfer_comm.Irecv(nothing, source=parent, tag=_HELLO_TAG))
    if not poll(requests, timeout):
        raise Stalled(f"could not reach every rank within {timeout:g} s at start-up")


def share_source_outcome(
    comm: MPI.Comm, root: int, outcome: EngineResult, timeout: float
) -> tuple[str | None, str | None]:
    """The root's ``(source_digest, read_error)``, passed down the outcome tree.

    Only connections opened by :func:`_connect_early` are used, and a child that does
    not take its message does not hold this node up (its own wait times out instead).
    """
    parent, children = _outcome_tree(comm, root)
    if parent is None:
        shared = (outcome.source_digest, outcome.read_error)
    else:
        shared = receive_object(comm, parent, _OUTCOME_TAG, timeout,
                                "the source's digest from the root")
    requests = [comm.isend(shared, dest=c, tag=_OUTCOME_TAG) for c in children]
    try:
        poll(requests, min(timeout, STALL_GRACE))
    except MPI.Exception:
        pass
    return shared


def agree_on_report(
    topo: Topology, plan: Plan, checks: list[NodeCheck], record: RankRecord,
    result: NodeResult | None, outcome: tuple[str | None, str | None] | None,
    prediction: Prediction | None, stall: str | None, depth: int, timeout: float,
) -> StageReport:
    """Statuses go to rank 0 and its verdict comes back, all with deadlines.

    When every rank reported and none stalled, the full report is broadcast; otherwise
    rank 0 returns a report marked ``stalled`` (naming what it knows) and the other ranks
    raise :class:`Stalled`.
    """
    comm = topo.comm
    status = (record, result, outcome, stall, prediction)
    if comm.rank != 0:
        if not send_object(comm, status, 0, _STATUS_TAG, timeout):
            raise Stalled(f"could not report to rank 0 within {timeout:g} s ({stall or 'no stall here'})")
        # A rank that saw the transfer stall gives rank 0 time to collect and decide;
        # the others wait as long as the transfer takes (rank 0 ends a broken job).
        wait = 2 * timeout + 2 * STALL_GRACE if stall else None
        # Ranks that are done (non-leaders: from the start) may wait long: poll gently.
        verdict = receive_object(comm, 0, _VERDICT_TAG, wait, "rank 0's verdict",
                                 longest_pause=0.02)
        if verdict is not None:
            raise Stalled(verdict)
        return comm.bcast(None, root=0)

    statuses = _collect_statuses(comm, status, timeout)
    missing = [r for r in range(comm.size) if r not in statuses]
    stalled = bool(missing) or any(s[3] for s in statuses.values())
    verdict = _stall_verdict(statuses, missing, topo) if stalled else None
    report = _build_report(topo, plan, checks, statuses, missing, verdict, depth)
    requests = [comm.isend(verdict, dest=r, tag=_VERDICT_TAG) for r in statuses if r != 0]
    if stalled:
        try:
            poll(requests, STALL_GRACE)
        except MPI.Exception:
            pass
        return report
    poll(requests, None)
    return comm.bcast(report, root=0)


def _stall_verdict(statuses: dict[int, tuple], missing: list[int], topo: Topology) -> str:  # type: ignore[type-arg]
    """One line: where the transfer stalled, as the ranks that noticed it saw it."""
    seen = []
    for rank in sorted(statuses):
        stall = statuses[rank][3]
        if stall:
            seen.append(f"node {statuses[rank][0].node} ({statuses[rank][0].host}): {stall}")
    if missing:
        hosts = sorted({n.host for n in topo.nodes for r in missing if r in n.ranks})
        seen.append(f"no status from rank(s) {', '.join(map(str, missing))} on {', '.join(hosts)}")
    return "transfer stalled: " + "; ".join(seen)


def _collect_statuses(comm: MPI.Comm, own: tuple, timeout: float) -> dict[int, tuple]:  # type: ignore[type-arg]
    """Rank 0: every rank's status.  Waits as long as there is news: statuses, or
    heartbeats from nodes still writing, flushing or re-reading their copy (however
    long that takes, see :mod:`mpistage.liveness`); once some rank reported a stall,
    only :data:`STALL_GRACE` more seconds; after ``2 * timeout`` without news, gives up
    on the rest (they are dead, cut off, or stuck)."""
    statuses = {0: own}
    pending = [r for r in range(1, comm.size)]
    quiet_since = time.monotonic()
    while pending:
        seen_stall = any(s[3] for s in statuses.values())
        patience = STALL_GRACE if seen_stall else 2 * timeout
        waited = time.monotonic() - quiet_since
        if waited >= patience:
            break
        got = receive_objects(comm, pending, _STATUS_TAG, min(patience - waited, 0.5))
        if got:
            statuses.update(got)
            pending = [r for r in pending if r not in got]
        if got or drain_heartbeats(comm).intersection(pending):
            quiet_since = time.monotonic()
    drain_heartbeats(comm)
    return statuses


def _build_report(
    topo: Topology, plan: Plan, checks: list[NodeCheck], statuses: dict[int, tuple],  # type: ignore[type-arg]
    missing: list[int], stall: str | None, depth: int,
) -> StageReport:
    results = {s[1].index: s[1] for s in statuses.values() if s[1] is not None}
    nodes = []
    for check in checks:
        if check.index in results:
            nodes.append(results[check.index])
        else:
            nodes.append(NodeResult(index=check.index, host=check.host, rank=check.rank,
                                    path=check.target, status="failed",
                                    error="no status from this node (dead or unreachable)"))
    shared = [s[2] for s in statuses.values() if s[2] is not None]
    source_digest, source_error = shared[0] if shared else (None, None)
    predictions = [s[4] for s in statuses.values() if s[4] is not None]
    prediction = predictions[0] if predictions else None
    from . import __version__

    return StageReport(
        version=__version__,
        source=plan.source,
        size=plan.size,
        source_digest=source_digest,
        algorithm=prediction.choice.algorithm if prediction else plan.algorithm,
        chunk_size=prediction.choice.chunk_size if prediction else plan.chunk_size,
        depth=depth,
        nodes=nodes,
        ranks=[statuses[r][0] for r in sorted(statuses)],
        ok=stall is None and all(n.ok for n in nodes),
        source_error=source_error,
        stalled=stall is not None,
        stall=stall,
        missing_ranks=missing,
        prediction=prediction.to_dict() if prediction else None,
    )
