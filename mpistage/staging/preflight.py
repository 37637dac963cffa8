"""Before any data moves: can every node take the file, and which nodes already have it?

Every node leader checks its own destination (the directory exists or ``--mkdir`` makes
it, it is writable, it has room) and looks at what is already there; the checks are
shared with every rank, so all ranks reach the same decision without further talk:
abort (one line per bad node), or go on without the bad nodes (``--skip-bad-nodes``), and
leave out the nodes whose copy is already up to date.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from ..digest import file_digest
from ..errors import UsageError
from ..plan import SourceInfo, expand, resolve_dest
from ..sinks.file import remove_stale_temps
from ..units import format_bytes
from .topology import Topology

log = logging.getLogger("mpistage.staging.preflight")


@dataclass(frozen=True)
class NodeCheck:
    """What one node's leader found before the transfer.

    Attributes:
        problem: why this node cannot take the file (``None`` if it can).
        existing_size, existing_mtime_ns, existing_inode: the regular file already at
            the destination (never a symlink: a symlink is replaced, not trusted); the
            inode as ``(st_dev, st_ino)``, so that ``--remove-first`` removes this file
            and not one another run put there since.
        up_to_date: the existing file already holds the source's content.
        occupied: something (of any type) already stands at the destination.
        files_wanted, files_have, bytes_wanted: a tree's files this node lacks and has,
            and the bytes it lacks (:mod:`mpistage.staging.treecheck`).
        shares_with: the node that writes this node's copy, the same file on a file
            system both see (``--shared-dest``, :mod:`mpistage.staging.shared_dest`); this node
            receives nothing and checks that copy once it is in place.
    """

    index: int
    host: str
    rank: int
    target: str | None
    problem: str | None = None
    free: int | None = None
    existing_size: int | None = None
    existing_mtime_ns: int | None = None
    existing_inode: tuple[int, int] | None = None
    up_to_date: bool = False
    occupied: bool = False
    files_wanted: int = 0
    files_have: int = 0
    bytes_wanted: int = 0
    shares_with: int | None = None

    @property
    def needs_data(self) -> bool:
        return self.problem is None and not self.up_to_date and self.shares_with is None

    def line(self) -> str:
        return f"node {self.index} ({self.host}): {self.problem}"


def check_local(
    info: SourceInfo, topo: Topology, *, mkdir: bool, remove_first: bool
) -> NodeCheck:
    """This leader's check of its own destination."""
    node = topo.node
    base = NodeCheck(index=node.index, host=node.host, rank=topo.comm.rank, target=None)
    try:
        if mkdir:
            _make_parent(info, topo)
        target = resolve_dest(info.dest, info.source_name, node=node.index, host=node.host,
                              rank=topo.comm.rank)
    except UsageError as exc:
        return replace(base, problem=str(exc))
    found = replace(base, target=str(target))
    for leftover in remove_stale_temps(target):
        log.info("removed %s, left by a run that was killed", leftover)
    try:
        existing = os.lstat(target)
        found = replace(found, occupied=True)
        if stat.S_ISREG(existing.st_mode):
            found = replace(found, existing_size=existing.st_size,
                            existing_mtime_ns=existing.st_mtime_ns,
                            existing_inode=(existing.st_dev, existing.st_ino))
    except FileNotFoundError:
        pass
    except OSError as exc:
        return replace(found, problem=f"cannot inspect {target}: {exc.strerror}")
    try:
        fs = os.statvfs(target.parent)
    except OSError as exc:
        return replace(found, problem=f"cannot inspect {target.parent}: {exc.strerror}")
    free = fs.f_bavail * fs.f_frsize
    found = replace(found, free=free)
    reclaimable = (found.existing_size or 0) if remove_first else 0
    if free + reclaimable < info.size:
        hint = ""
        if not remove_first and found.existing_size and free + found.existing_size >= info.size:
            hint = " (--remove-first would make room by deleting the old copy first)"
        return replace(found, problem=(
            f"not enough space in {target.parent}: {format_bytes(free)} free, "
            f"{format_bytes(info.size)} needed{hint}"
        ))
    return found


def _make_parent(info: SourceInfo, topo: Topology) -> None:
    """``--mkdir``: create the destination's directory (and its parents) on this node."""
    node = topo.node
    expanded = Path(expand(info.dest, node=node.index, host=node.host, rank=topo.comm.rank))
    directory = expanded if info.dest.endswith("/") else expanded.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create directory {str(directory)!r}: {exc.strerror}") from None


def preflight(
    topo: Topology, info: SourceInfo, *, mkdir: bool = False, remove_first: bool = False,
    quick: bool = False, skip_bad_nodes: bool = False, no_clobber: bool = False,
) -> list[NodeCheck]:
    """Check every node (collective); the same list, in node order, on every rank.

    With ``no_clobber`` (sbcast's default), a node where something other than an
    up-to-date copy stands at the destination is a bad node.

    Raises:
        UsageError: on every rank, if a node is bad and ``skip_bad_nodes`` is not set;
            one line per bad node (one line in all when every node has the same problem).
    """
    mine = check_local(info, topo, mkdir=mkdir, remove_first=remove_first) if topo.is_leader else None
    checks = sorted((c for c in topo.comm.allgather(mine) if c is not None), key=lambda c: c.index)
    stop_unless_skipping(checks, skip_bad_nodes)
    checks = _mark_up_to_date(topo, info, checks, quick)
    if no_clobber:  # every rank has the same list, so all decide alike without talking
        checks = [c if c.problem or c.up_to_date or not c.occupied else
                  replace(c, problem=f"{c.target} exists and differs from the source "
                          "(--force replaces it)") for c in checks]
        stop_unless_skipping(checks, skip_bad_nodes)
    return checks


def check_commands(topo: Topology, command: str) -> list[NodeCheck]:
    """``--pipe``: every node's command, its placeholders expanded (collective); no file
    to check.  The command's own failures show when it runs."""
    mine = None
    if topo.is_leader:
        node = topo.node
        mine = NodeCheck(index=node.index, host=node.host, rank=topo.comm.rank,
                         target=expand(command, node=node.index, host=node.host,
                                       rank=topo.comm.rank))
    return sorted((c for c in topo.comm.allgather(mine) if c is not None), key=lambda c: c.index)


def stop_unless_skipping(checks: list[NodeCheck], skip_bad_nodes: bool) -> None:
    """Raise the bad nodes' problems, unless they are to be left out."""
    bad = [c for c in checks if c.problem]
    if bad and not skip_bad_nodes:
        reasons = {c.problem for c in bad}
        if len(bad) == len(checks) and len(reasons) == 1:
            raise UsageError(reasons.pop())  # the same on every node: say it once
        raise UsageError("\n".join(c.line() for c in bad))


def _mark_up_to_date(
    topo: Topology, info: SourceInfo, checks: list[NodeCheck], quick: bool
) -> list[NodeCheck]:
    """Which existing copies already hold the source (size and digest, or with ``quick``
    size and mtime).  Digests are computed only when some node has a same-size file."""
    candidates = {c.index for c in checks if c.problem is None and c.existing_size == info.size}
    if not candidates or info.stream:  # a stream's content is not known before it is read
        return checks
    if quick:
        fresh = {c.index for c in checks
                 if c.index in candidates and c.existing_mtime_ns == info.mtime_ns}
    else:
        digest = None
        if topo.comm.rank == topo.root:
            try:
                digest = file_digest(info.source, drop_cache=False)
            except OSError as exc:
                log.warning("cannot digest the source to compare with existing copies: %s", exc)
        digest = topo.comm.bcast(digest, root=topo.root)
        same = False
        if digest is not None and topo.is_leader and topo.node.index in candidates:
            target = next(c.target for c in checks if c.index == topo.node.index)
            try:
                same = target is not None and file_digest(target, drop_cache=False) == digest
            except OSError:
                same = False
        flags = topo.comm.allgather((topo.node.index, same) if topo.is_leader else None)
        fresh = {index for index, ok in (f for f in flags if f is not None) if ok}
    return [replace(c, up_to_date=c.index in fresh) for c in checks]
