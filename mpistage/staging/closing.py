"""The closing exchange: outcomes and statuses travel with deadlines, never forever.

After the transfer every participant needs the root's verdict on the source (its digest,
or why reading failed) before it may rename its copy into place, and rank 0 needs every
rank's status to write the report.  Both exchanges are point-to-point, polled with
deadlines, over connections opened at start-up (:func:`connect_early`), so a dead or
cut-off host is named in the report instead of hanging the job.
"""

from __future__ import annotations

import time
from typing import Any

from mpi4py import MPI

from ..engine.liveness import drain_heartbeats
from ..engine.schedules import BinomialSchedule
from ..engine.waiting import poll, post, receive_object, receive_objects, send_object, send_objects
from ..errors import ReportLost, RootLost, Stalled
from ..model.decide import Prediction
from ..plan import Plan
from .preflight import NodeCheck
from .report import NodeResult, RankRecord, RankStatus, StageReport, build_report
from .topology import Topology

_STATUS_TAG = 7102   # every rank → rank 0: its record and its node's result
_VERDICT_TAG = 7103  # rank 0 → every rank: "report follows" or "stalled: …"
_HELLO_TAG = 7104    # start-up: open the connections the closing exchange will use
_REPORT_TAG = 7108   # rank 0 → every rank, down a binomial tree: the report

#: After some rank reported a stall, rank 0 waits this long for the others' statuses.
STALL_GRACE = 3.0


def participants(topo: Topology, checks: list[NodeCheck]) -> list[int]:
    """Node indices of the transfer: those needing the file, and the root's node."""
    return sorted({c.index for c in checks if c.needs_data} | {topo.root_node})


def connect_early(
    topo: Topology, checks: list[NodeCheck], transfer_comm: MPI.Comm | None, timeout: float,
) -> None:
    """Open, while every node is still reachable, the connections that the closing
    exchange uses: every rank to rank 0, the edges of the tree that relays rank 0's
    report, and every participant to the transfer's root (the survey of
    :mod:`mpistage.engine.recovery` and the source's outcome travel on them).

    MPI connects lazily, and with a TCP transport a first message to a host that has
    become unreachable can block inside MPI until the kernel gives up, minutes later:
    the closing exchange must only use connections that already exist.
    """
    try:
        _connect(topo, checks, transfer_comm, timeout)
    except MPI.Exception as exc:
        raise Stalled(f"could not reach every rank at start-up: {exc.Get_error_string()}") from exc


def _connect(
    topo: Topology, checks: list[NodeCheck], transfer_comm: MPI.Comm | None, timeout: float,
) -> None:
    comm = topo.comm
    nothing = bytearray(0)
    if comm.rank == 0:
        requests = [comm.Irecv(nothing, source=r, tag=_HELLO_TAG) for r in range(1, comm.size)]
    else:
        requests = [post(lambda: comm.Isend(nothing, dest=0, tag=_HELLO_TAG), timeout)]
    tree = BinomialSchedule(comm, 0)
    requests += [post(lambda c=c: comm.Isend(nothing, dest=c, tag=_REPORT_TAG), timeout)
                 for c in tree.children]
    if tree.parent is not None:
        requests.append(comm.Irecv(nothing, source=tree.parent, tag=_REPORT_TAG))
    if transfer_comm is not None:
        root_rank = participants(topo, checks).index(topo.root_node)
        if transfer_comm.rank == root_rank:
            requests += [transfer_comm.Irecv(nothing, source=r, tag=_HELLO_TAG)
                         for r in range(transfer_comm.size) if r != root_rank]
        else:
            requests.append(post(lambda: transfer_comm.Isend(nothing, dest=root_rank,
                                                             tag=_HELLO_TAG), timeout))
    if not poll(requests, timeout):
        raise Stalled(f"could not reach every rank within {timeout:g} s at start-up")


def agree_on_report(
    topo: Topology, plan: Plan, checks: list[NodeCheck], record: RankRecord,
    result: NodeResult | None, outcome: tuple[str | None, str | None, int | None] | None,
    prediction: Prediction | None, stall: str | None, depth: int, timeout: float,
    tree: dict[str, Any] | None = None, pipe: str | None = None,
    lost: dict[int, str] | None = None, root_lost: bool = False,
) -> StageReport:
    """Statuses go to rank 0 and its verdict comes back, all with deadlines.

    When every rank reported and none stalled, the full report is broadcast; when the
    only ranks missing are those of nodes the transfer lost and went on without
    (``lost``: node index -> why, known to the transfer's root, see
    :mod:`mpistage.engine.recovery`), it is sent to each rank still there; otherwise rank 0
    returns a report marked ``stalled`` (naming what it knows) and the other ranks raise
    :class:`Stalled` (at once, with ``root_lost``: the transfer lost its root, whose
    rank 0 may be gone too).
    """
    comm = topo.comm
    status = RankStatus(record, result, outcome, stall, prediction, lost or {})
    if comm.rank != 0:
        if root_lost and topo.root == 0:  # rank 0 is gone: no message may wait on it
            raise RootLost(stall or "the transfer lost its root")
        if not send_object(comm, status, 0, _STATUS_TAG, STALL_GRACE if root_lost else timeout):
            if topo.root == 0:  # it died after the transfer: nobody else will speak
                raise RootLost(f"lost the root, node 0 ({checks[0].host}): it took no status "
                               f"within {timeout:g} s")
            raise Stalled(f"could not report to rank 0 within {timeout:g} s ({stall or 'no stall here'})")
        if root_lost:
            raise RootLost(stall or "the transfer lost its root")
        # A rank that saw the transfer stall gives rank 0 time to collect and decide;
        # the others wait as long as the transfer takes (rank 0 ends a broken job).
        wait = 2 * timeout + 2 * STALL_GRACE if stall else None
        # Ranks that are done (non-leaders: from the start) may wait long: poll gently.
        try:
            verdict = receive_object(comm, 0, _VERDICT_TAG, wait, "rank 0's verdict",
                                     longest_pause=0.02)
        except Stalled as exc:
            if topo.root == 0:  # MPI reported it gone, or it stayed silent
                raise RootLost(f"lost the root, node 0 ({checks[0].host}): {exc}") from None
            raise
        if isinstance(verdict, StageReport):
            return verdict
        if verdict is not None:
            raise Stalled(verdict)
        report = relay_from_rank0(comm, None, timeout)
        if report is None:
            raise ReportLost(f"rank 0's report did not arrive within {timeout:g} s "
                             "(a rank died after it reported; the copies in place are "
                             "complete)")
        return report

    statuses = _collect_statuses(comm, status, timeout, topo)
    missing = [r for r in range(comm.size) if r not in statuses]
    lost_nodes = {node: why for s in statuses.values() for node, why in s.lost.items()}
    gone = {r for node in lost_nodes for r in topo.nodes[node].ranks}
    stalled = bool(set(missing) - gone) or any(s.stall for s in statuses.values())
    stall_line = _stall_verdict(statuses, missing, topo) if stalled else None
    report = build_report(plan, checks, [statuses[r] for r in sorted(statuses)], missing,
                          stall_line, depth, tree, pipe, lost_nodes)
    # Nobody missing: the report is broadcast after this "None"; some ranks gone with
    # their lost nodes: the report itself, to each rank still there.
    verdict: StageReport | str | None = stall_line or (report if missing else None)
    requests = send_objects(comm, verdict, [r for r in statuses if r != 0], _VERDICT_TAG)
    if stalled or missing:
        try:
            poll(requests, STALL_GRACE)
        except MPI.Exception:
            pass
        return report
    try:
        poll(requests, timeout)
    except MPI.Exception:
        pass
    if relay_from_rank0(comm, report, timeout) is None:
        report.reached_all = False  # a rank died after it reported: do not wait for it
    return report


def relay_from_rank0(comm: MPI.Comm, report: Any, timeout: float, *,
                     tag: int = _REPORT_TAG, patient: bool = False) -> Any:
    """Rank 0's ``report`` (or other small object) to every rank, relayed down a binomial
    tree of point-to-point sends with deadlines (not MPI's broadcast: a collective on a
    communicator whose sends may fail, :func:`mpistage.mpi_library.fail_fast`, trips an
    assertion inside MPICH when a rank died after it reported); the object, or ``None``
    if it did not get through (to this rank; on rank 0: to all of its children).
    A rank waits ``timeout`` seconds for its parent, or, ``patient``, as long as rank 0
    takes (as for the verdict: rank 0 ends a broken job)."""
    tree = BinomialSchedule(comm, 0)
    if tree.parent is not None:
        try:
            report = receive_object(comm, tree.parent, tag, None if patient else timeout,
                                    "rank 0's report", longest_pause=0.02)
        except Stalled:
            return None
    requests = send_objects(comm, report, tree.children, tag)
    try:
        delivered = len(requests) == len(tree.children) and poll(requests, timeout)
    except MPI.Exception:
        delivered = False
    return report if delivered or tree.parent is not None else None


def _stall_verdict(statuses: dict[int, RankStatus], missing: list[int], topo: Topology) -> str:
    """One line: where the transfer stalled, as the ranks that noticed it saw it."""
    seen = []
    for rank in sorted(statuses):
        status = statuses[rank]
        if status.stall:
            seen.append(f"node {status.record.node} ({status.record.host}): {status.stall}")
    if missing:
        hosts = sorted({n.host for n in topo.nodes for r in missing if r in n.ranks})
        seen.append(f"no status from rank(s) {', '.join(map(str, missing))} on {', '.join(hosts)}")
    return "transfer stalled: " + "; ".join(seen)


def _collect_statuses(comm: MPI.Comm, own: RankStatus, timeout: float,
                      topo: Topology) -> dict[int, RankStatus]:
    """Rank 0: every rank's status.  Waits as long as there is news: statuses, or
    heartbeats from nodes still writing, flushing or re-reading their copy (however
    long that takes, see :mod:`mpistage.engine.liveness`); once some rank reported a stall,
    only :data:`STALL_GRACE` more seconds; after ``2 * timeout`` without news, gives up
    on the rest (they are dead, cut off, or stuck).  The ranks of nodes that the
    transfer counted lost (and went on without) are not waited for."""
    statuses = {0: own}
    pending = [r for r in range(1, comm.size)]
    quiet_since = time.monotonic()
    while pending:
        seen_stall = any(s.stall for s in statuses.values())
        patience = STALL_GRACE if seen_stall else 2 * timeout
        waited = time.monotonic() - quiet_since
        if waited >= patience:
            break
        got = receive_objects(comm, pending, _STATUS_TAG, min(patience - waited, 0.5))
        if got:
            statuses.update(got)
            gone = {r for s in statuses.values() for node in s.lost
                    for r in topo.nodes[node].ranks}
            pending = [r for r in pending if r not in got and r not in gone]
        if got or drain_heartbeats(comm).intersection(pending):
            quiet_since = time.monotonic()
    drain_heartbeats(comm)
    return statuses
