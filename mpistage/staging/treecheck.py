"""Before a tree moves: can every node take it, and which of its files does each lack?

Each node leader resolves where the tree lands (``cp -r``'s rule, see
:func:`resolve_tops`), checks room and inodes, and compares every entry with what stands
there: a file counts as up to date when it is a regular file of the same size and the
same digest (``--quick``: the same mtime), under directories that are real directories
(never through a symlink).  The digests of the root's files are computed only for files
some node holds at the same size (one ``Allreduce`` of flags says which), and broadcast
as one buffer.  A second ``Allreduce`` of every node's wants gives the stream: the files
some node lacks, the only ones the root reads.
"""

from __future__ import annotations

import logging
import os
import stat
from array import array
from dataclasses import replace
from pathlib import Path

from mpi4py import MPI

from ..digest import new_digest
from ..engine.waiting import quiet_barrier
from ..errors import UsageError
from ..plan import SourceInfo, describe_file_type, expand
from ..sinks.file import copy_mode, current_umask, directory_mode, remove_stale_temps
from ..sinks.tree_commit import NodeTree, is_real_dir
from ..sources.manifest import DIRECTORY, FILE, SYMLINK, TRAILER, Manifest
from ..units import format_bytes
from .preflight import NodeCheck, stop_unless_skipping
from .topology import Topology

log = logging.getLogger("mpistage.staging.treecheck")

_BLOCK = 1 << 20


def resolve_tops(manifest_tops: list[tuple[bytes, int]], dest: str, *,
                 mkdir: bool) -> dict[bytes, Path]:
    """Where each top-level entry lands on this node, as ``cp -r`` puts it: in DEST when
    DEST is an existing directory (or ends in ``/``), else, for one source, at DEST
    itself (``cp -r dir newname``).  Several sources need a directory DEST.

    Args:
        manifest_tops: ``(name, kind)`` of each top-level entry.
        dest: the destination with its placeholders expanded.

    Raises:
        UsageError: the destination (or the directory that would hold it) is missing,
            not a directory, or not writable.
    """
    directory = Path(dest)
    is_dir = _is_dir(directory)
    if mkdir and not is_dir and (dest.endswith("/") or len(manifest_tops) > 1):
        _make(directory)
        is_dir = True
    if is_dir:
        finals = {name: directory / os.fsdecode(name) for name, _ in manifest_tops}
    elif dest.endswith("/"):
        raise UsageError(f"destination directory {dest!r} does not exist (--mkdir creates it)")
    elif len(manifest_tops) > 1:
        raise UsageError(f"destination {dest!r} is not a directory; several sources "
                         "need one (--mkdir creates it)")
    else:
        if mkdir:
            _make(directory.parent)
        finals = {manifest_tops[0][0]: directory}
    for name, kind in manifest_tops:
        _check_final(finals[name], kind)
    return finals


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _make(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create directory {str(directory)!r}: {exc.strerror}") from None


def _check_final(final: Path, kind: int) -> None:
    parent = final.parent
    if not _is_dir(parent):
        raise UsageError(f"destination directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"destination directory {str(parent)!r} is not writable")
    try:
        mode = os.lstat(final).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot inspect {str(final)!r}: {exc.strerror}") from None
    if stat.S_ISLNK(mode):
        return  # replaced, never followed
    if kind == DIRECTORY and not stat.S_ISDIR(mode):
        raise UsageError(f"destination {str(final)!r} is {describe_file_type(mode)}, "
                         "not a directory; the source is a directory")
    if kind != DIRECTORY and stat.S_ISDIR(mode):
        raise UsageError(f"destination {str(final)!r} is a directory; the source is not")
    if kind != DIRECTORY and not stat.S_ISREG(mode):
        raise UsageError(f"destination {str(final)!r} is {describe_file_type(mode)}; "
                         "mpistage replaces only regular files and symlinks")


def top_entries(manifest: Manifest) -> list[tuple[bytes, int]]:
    """``(name, kind)`` of each top-level entry."""
    return [(manifest.path(i), manifest.kinds[i]) for i in manifest.top_indices()]


class _Local:
    """One leader's look at its destination."""

    def __init__(self, manifest: Manifest, finals: dict[bytes, Path], *, quick: bool) -> None:
        n = len(manifest)
        self.manifest = manifest
        self.finals = finals
        self.quick = quick
        self.wants = bytearray(n)
        self.candidates = bytearray(n)  # same size here: the digests decide
        self.inodes = array("q", bytes(8 * n))
        self.fix_meta = bytearray(n)
        self.old_sizes = array("q", bytes(8 * n))  # regular files already there
        self.changed: set[bytes] = set()
        self.present: dict[bytes, int] = {}  # per top: entries at the source's paths
        self._final_names = {top: os.fsencode(final) for top, final in finals.items()}

    def final_of(self, path: bytes) -> bytes:
        top, _, rest = path.partition(b"/")
        final = self._final_names[top]
        return final + b"/" + rest if rest else final

    def compare(self) -> None:
        manifest = self.manifest
        umask = current_umask()
        real_dirs: set[bytes] = set()
        for index in range(len(manifest)):
            path = manifest.path(index)
            top, _, rest = path.partition(b"/")
            parent = path.rpartition(b"/")[0]
            if rest and parent not in real_dirs:
                self._differs(index, top)
                continue
            try:
                st = os.lstat(self.final_of(path))
            except OSError:
                self._differs(index, top)
                continue
            kind = manifest.kinds[index]
            self.present[top] = self.present.get(top, 0) + 1
            if stat.S_ISREG(st.st_mode):
                self.old_sizes[index] = st.st_size
            if kind == DIRECTORY:
                if stat.S_ISDIR(st.st_mode):
                    real_dirs.add(path)
                    if stat.S_IMODE(st.st_mode) != directory_mode(manifest.modes[index], umask):
                        self.changed.add(top)
                else:
                    self._differs(index, top)
            elif kind == SYMLINK:
                if stat.S_ISLNK(st.st_mode) and \
                        os.readlink(self.final_of(path)) == manifest.link(index):
                    pass
                else:
                    self._differs(index, top)
            elif stat.S_ISREG(st.st_mode) and st.st_size == manifest.sizes[index]:
                self.inodes[index] = st.st_ino
                same_mtime = st.st_mtime_ns == manifest.mtimes[index]
                mode = copy_mode(manifest.modes[index], umask)
                if stat.S_IMODE(st.st_mode) != mode or not same_mtime:
                    self.fix_meta[index] = 1
                if self.quick:
                    if not same_mtime:
                        self._differs(index, top)
                else:
                    self.candidates[index] = 1
            else:
                self._differs(index, top)
        for index in manifest.top_indices():  # a top-level file's mode or mtime: resend it
            if self.fix_meta[index]:
                self._differs(index, manifest.path(index))

    def _differs(self, index: int, top: bytes) -> None:
        self.changed.add(top)
        if self.manifest.kinds[index] == FILE:
            self.wants[index] = 1
        self.inodes[index] = 0

    def settle(self, digests: bytes, order: list[int]) -> None:
        """Compare this node's candidate files with the root's digests."""
        block = memoryview(bytearray(_BLOCK))
        for position, index in enumerate(order):
            if not self.candidates[index]:
                continue
            expected = digests[TRAILER * position:TRAILER * (position + 1)]
            try:
                same = _digest(self.final_of(self.manifest.path(index)), block) == expected
            except OSError:
                same = False
            if not same:
                self._differs(index, self.manifest.path(index).split(b"/", 1)[0])

    def mark_metadata(self) -> None:
        """A file in place whose mode or mtime differs: its tree is rebuilt (the file
        linked in and fixed, no bytes sent)."""
        for index in range(len(self.manifest)):
            if self.fix_meta[index] and not self.wants[index]:
                self.changed.add(self.manifest.path(index).split(b"/", 1)[0])

    def mark_extras(self) -> None:
        """``--delete``: a top-level entry whose destination holds entries the source
        does not is rebuilt without them."""
        for top, final in self.finals.items():
            if not is_real_dir(final) or top in self.changed:
                continue
            if 1 + _count(final) > self.present.get(top, 0):
                self.changed.add(top)

    def node_tree(self) -> NodeTree:
        return NodeTree(finals=self.finals, changed=self.changed, wants=self.wants,
                        have_inodes=self.inodes, fix_meta=self.fix_meta)


def _count(directory: Path) -> int:
    total = 0
    stack = [os.fspath(directory)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                total += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def _digest(path: str | os.PathLike[str] | bytes, block: memoryview) -> bytes:
    """The file's xxh3-128, read through ``block`` (one buffer for every file: a tree's
    files are mostly small, and allocating a block each would cost more than reading)."""
    digest = new_digest()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        while n := os.readv(fd, [block]):
            digest.update(block[:n])
    finally:
        os.close(fd)
    return digest.digest()


def check_tree(
    topo: Topology, manifest: Manifest, info: SourceInfo, *, mkdir: bool = False,
    remove_first: bool = False, quick: bool = False, delete: bool = False,
    skip_bad_nodes: bool = False,
) -> tuple[list[NodeCheck], NodeTree | None, bytearray]:
    """Check every node for a tree (collective).

    Returns the checks (the same on every rank, in node order), this leader's view of its
    destination (``None`` off leaders and on bad nodes), and the stream's files: per
    entry, 1 where some node that takes part lacks the file.

    Raises:
        UsageError: on every rank, as :func:`mpistage.staging.preflight.preflight` does.
    """
    local: _Local | None = None
    check: NodeCheck | None = None
    if topo.is_leader:
        check, local = _look(topo, manifest, info, mkdir=mkdir, quick=quick)
    checks = sorted((c for c in topo.comm.allgather(check) if c is not None),
                    key=lambda c: c.index)
    stop_unless_skipping(checks, skip_bad_nodes)
    good = local is not None and check is not None and check.problem is None
    n = len(manifest)
    if not quick:
        candidates = _any(topo.comm, local.candidates if good and local else bytearray(n))
        order = [i for i in range(n) if candidates[i]]
        digests = bytearray(TRAILER * len(order))
        if topo.comm.rank == topo.root:
            digests = _root_digests(manifest, order)
        if order:
            quiet_barrier(topo.comm)  # the others sleep while the root reads its files
            topo.comm.Bcast([digests, MPI.BYTE], root=topo.root)
        if good and local is not None:
            local.settle(bytes(digests), order)
    if good and local is not None and check is not None:
        local.mark_metadata()
        if delete:
            local.mark_extras()
        check = _count_needs(check, local, manifest, remove_first)
    checks = sorted((c for c in topo.comm.allgather(check) if c is not None),
                    key=lambda c: c.index)
    stop_unless_skipping(checks, skip_bad_nodes)
    good = good and check is not None and check.problem is None
    needed = _any(topo.comm, local.wants if good and local else bytearray(n))
    return checks, (local.node_tree() if good and local else None), needed


def _any(comm: MPI.Comm, flags: bytearray) -> bytearray:
    """Per entry, 1 where any rank's ``flags`` has it."""
    result = bytearray(len(flags))
    if flags:
        comm.Allreduce([flags, MPI.BYTE], [result, MPI.BYTE], op=MPI.BOR)
    return result


def _root_digests(manifest: Manifest, order: list[int]) -> bytearray:
    """The root's digests of the files in ``order``, one after another (a file that
    cannot be read gets an impossible digest: the nodes' copies then count as outdated
    and the transfer reports the error)."""
    out = bytearray()
    block = memoryview(bytearray(_BLOCK))
    for index in order:
        try:
            out += _digest(manifest.source_path(index), block)
        except OSError as exc:
            log.warning("cannot digest %s: %s", os.fsdecode(manifest.source_path(index)), exc)
            out += bytes(TRAILER)
    return out


def _look(topo: Topology, manifest: Manifest, info: SourceInfo, *, mkdir: bool,
          quick: bool) -> tuple[NodeCheck, _Local | None]:
    node = topo.node
    base = NodeCheck(index=node.index, host=node.host, rank=topo.comm.rank, target=None)
    try:
        dest = expand(info.dest, node=node.index, host=node.host, rank=topo.comm.rank)
        finals = resolve_tops(top_entries(manifest), dest, mkdir=mkdir)
    except UsageError as exc:
        return replace(base, problem=str(exc)), None
    except OSError as exc:
        return replace(base, problem=f"destination {info.dest!r}: {exc.strerror}"), None
    target = str(next(iter(finals.values()))) if len(finals) == 1 else dest
    check = replace(base, target=target)
    inside = _inside_source(manifest, finals)
    if inside:
        return replace(check, problem=inside), None
    for final in finals.values():
        for leftover in remove_stale_temps(final):
            log.info("removed %s, left by a run that was killed", leftover)
    local = _Local(manifest, finals, quick=quick)
    try:
        local.compare()
    except OSError as exc:
        return replace(check, problem=f"cannot inspect {target}: {exc.strerror}"), None
    return check, local


def _inside_source(manifest: Manifest, finals: dict[bytes, Path]) -> str | None:
    """On the root (which alone knows where the sources are): a destination inside a
    source directory would stage the tree into itself, as ``cp`` refuses to."""
    if not manifest.prefixes:
        return None
    for index in manifest.top_indices():
        path = manifest.path(index)
        if manifest.kinds[index] != DIRECTORY:
            continue
        source = os.path.realpath(manifest.source_path(index))
        final = os.path.join(os.fsencode(os.path.realpath(finals[path].parent)),
                             os.fsencode(finals[path].name))
        if final == source or final.startswith(source + b"/"):
            return (f"destination {str(finals[path])!r} is inside the source "
                    f"{os.fsdecode(source)!r}; it cannot hold a copy of itself")
    return None


def _count_needs(check: NodeCheck, local: _Local, manifest: Manifest,
                 remove_first: bool) -> NodeCheck:
    """This node's bytes (in whole blocks) and inodes to write, against its free space
    and inodes."""
    wanted = [i for i in manifest.files() if local.wants[i]]
    need_bytes = sum(manifest.sizes[i] for i in wanted)
    inodes = len(wanted) + sum(1 for i in range(len(manifest))
                               if manifest.kinds[i] != FILE
                               and manifest.path(i).split(b"/", 1)[0] in local.changed)
    have = manifest.file_count - len(wanted)
    check = replace(check, files_wanted=len(wanted), files_have=have, bytes_wanted=need_bytes,
                    up_to_date=not local.changed, occupied=True)
    parent = next(iter(local.finals.values())).parent
    try:
        fs = os.statvfs(parent)
    except OSError as exc:
        return replace(check, problem=f"cannot inspect {parent}: {exc.strerror}")
    free = fs.f_bavail * fs.f_frsize
    block = fs.f_frsize or 1  # a file takes whole blocks: 10,000 files of 1 KiB, 40 MiB
    on_disk = sum(-(-manifest.sizes[i] // block) * block for i in wanted)
    reclaimable = (sum(-(-local.old_sizes[i] // block) * block for i in wanted)
                   if remove_first else 0)
    check = replace(check, free=free)
    if free + reclaimable < on_disk:
        return replace(check, problem=f"not enough space in {parent}: {format_bytes(free)} "
                       f"free, {format_bytes(on_disk)} needed")
    if fs.f_files and fs.f_favail < inodes:
        return replace(check, problem=f"not enough inodes in {parent}: {fs.f_favail} free, "
                       f"{inodes} needed")
    return check
