"""Two nodes, one path: refused before any byte moves.

Without ``{node}``, ``{rank}`` or ``{host}`` in DEST, every node writes the same path; that
is right when each node has its own file system there (node-local scratch), and wrong
when two nodes share one: ranks taken as nodes on one machine, a ``/tmp`` shared by a
login node's ranks, a DEST on the parallel file system.  Then several nodes write one
file and the report counts one copy as many.  The paths as strings cannot tell these
apart; the file system can, as each node sees it:

* **on one machine** (same boot id): the directory that will hold the copy is the same
  directory exactly when its device and inode numbers are the same;
* **across machines** device numbers mean nothing (an NFS or Lustre mount gets a number
  of its own on every client, and two local file systems may share one), so each node
  leaves a **marker** (an empty file named for this run and node) in that directory,
  and looks for the others' markers there.  A node that sees another's marker shares
  its directory.

Two nodes that share the directory and the final name would write the same file:
:func:`check_shared_paths` raises the same :class:`~mpistage.errors.UsageError` on every
rank, naming the nodes and the fix.  Three small collectives and a file created, listed
and removed per node leader; the markers never outlive the check.

Asked for on purpose (``--shared-dest``), each such file has one writer (the lowest
node); the others receive nothing and, once the report says the writer's copy is in
place, read it there and check it against the source's digest (:func:`verify_shared`).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import replace
from pathlib import Path

from .. import interrupt
from ..digest import file_digest
from ..engine.liveness import Heartbeat, drain_heartbeats, watch
from ..engine.waiting import receive_objects, send_object
from ..errors import ReportLost, Stalled, UsageError
from ..model.cores import this_kernel
from .closing import relay_from_rank0
from .preflight import NodeCheck
from .report import NodeResult, StageReport
from .topology import Topology

_MARKER = ".mpistage-who-{run}-"
_SHARED_TAG = 7111    # a sharer → rank 0: its check of the file its writer put in place
_VERDICTS_TAG = 7112  # rank 0 → every rank, down the closing exchange's tree: the checks


def check_shared_paths(topo: Topology, checks: list[NodeCheck], *,
                       allowed: bool = False) -> list[NodeCheck]:
    """Collective: the checks, each sharer's marked with the node that writes its file
    (the group's lowest); unless ``allowed`` (``--shared-dest``), raise
    :class:`UsageError` on every rank when any two nodes share one (see the module's
    docstring).  Nothing is left behind either way."""
    groups = find_shared_paths(topo, checks)
    if groups and not allowed:
        raise UsageError(describe(groups, checks))
    writer = {node: group[0] for group in groups for node in group[1:]}
    return [replace(c, shares_with=writer[c.index]) if c.index in writer else c
            for c in checks]


def find_shared_paths(topo: Topology, checks: list[NodeCheck]) -> list[list[int]]:
    """Collective: the groups of nodes (in node order) whose copies would be one file."""
    run = topo.comm.bcast(os.urandom(6).hex() if topo.comm.rank == 0 else None, root=0)
    mine = next((c for c in checks if c.index == topo.node.index), None) \
        if topo.is_leader else None
    own = _Spot.of(mine, run) if mine is not None and mine.target and not mine.problem \
        else None
    if own is not None:
        own.leave_marker()
    identities = topo.comm.allgather(own.identity() if own is not None else None)
    try:
        seen = own.markers_seen() if own is not None else []
    finally:
        if own is not None:
            own.remove_marker()
    sightings = topo.comm.allgather((own.node, seen) if own is not None else None)
    return same_files([i for i in identities if i is not None],
                      [s for s in sightings if s is not None])


def verify_shared(topo: Topology, checks: list[NodeCheck], report: StageReport,
                  timeout: float) -> StageReport:
    """Once the report is agreed (the writers' copies are in place): every node that
    shares another's file reads it there and checks it against the source's digest
    (:func:`_check_in_place`, with heartbeats to rank 0 while it reads), and tells rank
    0; rank 0 relays the verdicts to every rank down the closing exchange's tree.  All
    point-to-point with deadlines, as the closing exchange: a collective could hang on a
    rank that died after it reported.  After a run that lost a rank, sharers are
    reported unchecked.  The report, then the same on every rank it reaches.

    Raises:
        ReportLost: on a rank the verdicts did not reach.
    """
    writers = {c.index: c.shares_with for c in checks if c.shares_with is not None}
    results = {n.index: n for n in report.nodes}
    if report.stalled or report.missing_ranks:
        verdicts = {i: ("failed", "not checked: the run lost a node") for i in writers}
    else:
        comm = topo.comm
        own = next((c for c in checks if c.index == topo.node.index), None)
        if topo.is_leader and own is not None and own.index in writers and comm.rank != 0:
            heartbeat = Heartbeat(comm, interval=min(timeout / 4, 1.0))
            verdict = _check_in_place(own, results, writers[own.index], report.source_digest,
                                      timeout, heartbeat)
            heartbeat.settled(timeout)  # never a second message in flight to rank 0
            send_object(comm, verdict, 0, _SHARED_TAG, timeout)
        collected = _collect_verdicts(topo, writers, timeout) if comm.rank == 0 else None
        verdicts = relay_from_rank0(comm, collected, timeout, tag=_VERDICTS_TAG, patient=True)
        if verdicts is None:
            raise ReportLost("the checks of the nodes sharing a file did not arrive "
                             f"within {timeout:g} s (the copies in place are complete)")
    for index, (status, error) in verdicts.items():
        results[index] = replace(results[index], status=status, error=error,
                                 files_up_to_date=0)
    nodes = [results[n.index] for n in report.nodes]
    return replace(report, nodes=nodes, ok=report.ok and all(n.ok for n in nodes))


def _collect_verdicts(topo: Topology, writers: dict[int, int],
                      timeout: float) -> dict[int, tuple[str, str | None]]:
    """Rank 0: each sharer's verdict, waited for as long as verdicts or heartbeats keep
    coming (a sharer reading a large file), and ``2 * timeout`` past the last."""
    ranks = {topo.nodes[index].leader: index for index in writers}
    verdicts: dict[int, tuple[str, str | None]] = {}
    pending, quiet_since = set(ranks), time.monotonic()
    while pending and time.monotonic() - quiet_since < 2 * timeout:
        got = receive_objects(topo.comm, sorted(pending), _SHARED_TAG, 0.5)
        for rank, (index, status, error) in got.items():
            verdicts[index] = (status, error)
        pending -= set(got)
        if got or drain_heartbeats(topo.comm).intersection(pending):
            quiet_since = time.monotonic()
    drain_heartbeats(topo.comm)
    for rank in pending:
        verdicts[ranks[rank]] = ("failed", "no check of the shared file came from this node "
                                 f"within {2 * timeout:g} s")
    return verdicts


def _check_in_place(own: NodeCheck, results: dict[int, NodeResult], writer: int,
                    source_digest: str | None, timeout: float,
                    heartbeat: Callable[[Hashable], None]) -> tuple[int, str, str | None]:
    """This sharer's verdict on the file its writer put in place: read there and
    digested (a watched read: stuck for ``timeout``, it fails), unless nothing was sent
    and this node's own pre-flight already found that file up to date."""
    node, written = own.index, results[writer]
    if not written.ok:
        return node, "failed", f"node {writer}, which writes this node's file, failed"
    if written.status == "up-to-date" and own.up_to_date:
        return node, "shared", None  # this node checked that very file in the pre-flight
    expected = source_digest or written.digest
    path = str(own.target)
    count = [0]

    def advance(n: int) -> None:
        count[0] += n

    try:
        found = watch(lambda: file_digest(path, progress=advance), lambda: count[0],
                      timeout=timeout, heartbeat=heartbeat, what=f"reading {path}")
    except OSError as exc:
        return node, "failed", f"cannot read {path}, written by node {writer}: {exc.strerror}"
    except Stalled as exc:
        return node, "failed", str(exc)
    if expected is None or found != expected:
        return node, "failed", (f"{path}, written by node {writer}, does not match the "
                                "source's digest")
    return node, "shared", None


class _Spot:
    """One node's view of the directory that will hold its copy."""

    def __init__(self, node: int, directory: Path, name: str, run: str) -> None:
        self.node, self.directory, self.name = node, directory, name
        self.prefix = _MARKER.format(run=run)
        self.marker = directory / f"{self.prefix}{node}"
        self.placed = False
        self.times = (0, 0)

    @classmethod
    def of(cls, check: NodeCheck, run: str) -> _Spot:
        """A file's (or a new tree's) directory and name; an existing directory (a tree
        staged before, or the DEST of several top entries) is its own spot: its parent
        may be a directory this user cannot write."""
        target = Path(str(check.target))
        if target.is_dir() and not target.is_symlink():
            return cls(check.index, target, "", run)
        return cls(check.index, target.parent, target.name, run)

    def leave_marker(self) -> None:
        interrupt.register_temp_file(self.marker)  # removed on SIGTERM/SIGINT too
        try:
            before = os.stat(self.directory)
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            self.placed = True
            self.times = (before.st_atime_ns, before.st_mtime_ns)
        except OSError:
            interrupt.forget_temp_file(self.marker)
            # a directory this node cannot write: its identity still counts

    def identity(self) -> tuple[int, str, tuple[int, int] | None, str]:
        """``(node, kernel, (st_dev, st_ino), name)`` of the directory (inode ``None``:
        unreadable) and of the name in it."""
        try:
            st = os.stat(self.directory)
            inode: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            inode = None
        return self.node, this_kernel()[0], inode, self.name

    def markers_seen(self) -> list[int]:
        """The other nodes whose markers this node sees in its directory."""
        try:
            with os.scandir(self.directory) as entries:
                names = [e.name for e in entries if e.name.startswith(self.prefix)]
        except OSError:
            return []
        nodes = []
        for name in names:
            suffix = name[len(self.prefix):]
            if suffix.isdigit() and int(suffix) != self.node:
                nodes.append(int(suffix))
        return nodes

    def remove_marker(self) -> None:
        """The marker removed, and the directory's times as they were: the directory may
        be a staged tree's own, whose mtime is the source's."""
        if self.placed:
            try:
                os.unlink(self.marker)
                os.utime(self.directory, ns=self.times)
            except OSError:
                pass
            interrupt.forget_temp_file(self.marker)


def same_files(identities: list[tuple[int, str, tuple[int, int] | None, str]],
               sightings: list[tuple[int, list[int]]]) -> list[list[int]]:
    """Groups (two nodes or more, in node order) whose copies would be one file: the same
    directory (one machine's device and inode, or a marker seen) and the same name."""
    name = {node: spot_name for node, _, _, spot_name in identities}
    parent = {n: n for n in name}

    def find(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def join(a: int, b: int) -> None:
        if a in name and b in name and name[a] == name[b]:
            parent[find(b)] = find(a)

    by_directory: dict[tuple[str, tuple[int, int], str], list[int]] = defaultdict(list)
    for node, kernel, inode, spot_name in identities:
        if inode is not None:
            by_directory[(kernel, inode, spot_name)].append(node)
    for nodes in by_directory.values():
        for other in nodes[1:]:
            join(nodes[0], other)
    for node, seen in sightings:
        for other in seen:
            join(node, other)
    groups: dict[int, list[int]] = defaultdict(list)
    for n in sorted(name):
        groups[find(n)].append(n)
    return [g for g in groups.values() if len(g) > 1]


def describe(groups: list[list[int]], checks: list[NodeCheck]) -> str:
    """One line: the first group, how many more, and the fix."""
    by_index = {c.index: c for c in checks}
    first = groups[0]
    nodes = [f"{n} ({by_index[n].host})" for n in first]
    listed = ", ".join(nodes[:-1]) + f" and {nodes[-1]}" if len(nodes) <= 4 else \
        f"{', '.join(nodes[:3])} and {len(nodes) - 3} more"
    more = f" (and {len(groups) - 1} more such group{'s' if len(groups) > 2 else ''})" \
        if len(groups) > 1 else ""
    return (f"nodes {listed} would all write {by_index[first[0]].target}: one file on a "
            f"file system they share{more}; put {{node}} in DEST (e.g. "
            f"{_with_node(by_index[first[0]].target)}, with --mkdir) so that each node "
            "has its own copy, or --shared-dest to write it once")


def _with_node(target: str | None) -> str:
    path = Path(str(target))
    return str(path.parent / "{node}" / path.name)
