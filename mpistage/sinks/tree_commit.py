"""Putting a built tree in place: what a node found at its destination
(:class:`NodeTree`), the commit's steps (:class:`TreeCommit`) and the file-system moves
they are made of (``renameat2(RENAME_EXCHANGE)``, hard links, removal that never follows
a symlink).  :mod:`mpistage.sinks.tree` builds the tree; this module puts it in place.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import interrupt
from ..sources.manifest import DIRECTORY, SYMLINK, Manifest
from .file import TEMP_SUFFIX, copy_mode, directory_mode, fsync_directory, temp_prefix

log = logging.getLogger("mpistage.sinks.tree")

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass
class NodeTree:
    """What this node found at its destination (see :mod:`mpistage.staging.treecheck`).

    Attributes:
        finals: per top-level name, its final path on this node.
        changed: top-level names whose entry differs here (rebuilt and replaced).
        wants: per entry, 1 where this node needs the file's bytes.
        have_inodes: per entry, the inode of this node's up-to-date copy (0 if none).
        fix_meta: per entry, 1 where an up-to-date file's mode or mtime differs.
    """

    finals: dict[bytes, Path]
    changed: set[bytes]
    wants: bytearray
    have_inodes: array
    fix_meta: bytearray

    def final_of(self, path: bytes) -> bytes:
        """Where entry ``path`` stands at the destination (bytes: a path per file, and
        pathlib would cost more than the system call)."""
        top, _, rest = path.partition(b"/")
        final = os.fsencode(self.finals[top])
        return final + b"/" + rest if rest else final


def exchange(first: Path, second: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    Raises:
        OSError: the file system cannot (``EINVAL`` on NFS, for one) or another error.
    """
    import ctypes  # ~7 ms to import: only a tree that replaces an old one pays

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second),
                 _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(second))


def remove_path(path: Path) -> None:
    """Remove a file, symlink or whole directory, never following a symlink."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path):  # something was being created meanwhile
                shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def is_real_dir(path: Path | bytes) -> bool:
    """A directory itself, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def link_or_copy(source: Path | bytes, target: Path | bytes) -> None:
    """A hard link where the file system allows it, else a copy (symlinks as links)."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target, follow_symlinks=False)


def move_aside_and_rename(temp: Path, final: Path) -> None:
    """Where ``RENAME_EXCHANGE`` is not supported: the old entry moves to a temp name,
    the new one takes its place at once after, and the old one is removed."""
    aside = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name, os.getpid()),
                                  suffix=TEMP_SUFFIX, dir=final.parent))
    old = aside / "old"
    os.rename(final, old)
    os.rename(temp, final)
    remove_path(aside)


class TreeCommit:
    """The commit of one node's built tree: link in the files it already had, carry over
    what stood at the destination (unless ``delete``), set the directories' modes and
    mtimes, then replace each changed top-level entry in one step.

    Apart from :class:`mpistage.sinks.tree.TreeSink`, which builds the tree as the stream
    passes; this is only file-system work, once the stream is over."""

    def __init__(self, manifest: Manifest, tree: NodeTree, temps: dict[bytes, Path], *,
                 path_of: Callable[[bytes], bytes], advance: Callable[[int], None],
                 umask: int, delete: bool, fsync: bool) -> None:
        self.manifest = manifest
        self.tree = tree
        self.temps = temps  # shared with the sink: a replaced entry leaves it
        self._path_of = path_of
        self._advance = advance
        self._umask = umask
        self.delete = delete
        self.fsync = fsync

    def run(self, fsync: bool) -> None:
        """Every step, in order (the sink discards everything if one fails)."""
        self.link_unchanged()
        self.set_directories()
        self.replace_tops(fsync)

    def link_unchanged(self) -> None:
        """Hard-link the files this node already had into the new tree, then carry over
        what stood at the destination but is not in the source (unless ``--delete``)."""
        manifest, tree = self.manifest, self.tree
        for index in manifest.files():
            path = manifest.path(index)
            if (tree.wants[index] or b"/" not in path
                    or path.split(b"/", 1)[0] not in tree.changed):
                continue
            built = self._path_of(path)
            link_or_copy(tree.final_of(path), built)
            if os.lstat(built).st_ino != tree.have_inodes[index]:
                raise OSError(errno.ESTALE,
                              f"{os.fsdecode(tree.final_of(path))} changed during the run")
            if tree.fix_meta[index]:  # the inode just checked: a regular file of ours
                os.chmod(built, copy_mode(manifest.modes[index], self._umask))
                os.utime(built, ns=(time.time_ns(), manifest.mtimes[index]))
            self._advance(1)
        if not self.delete:
            for top in tree.changed:
                final = tree.finals[top]
                if is_real_dir(final) and is_real_dir(self.temps[top]):
                    self.carry_over(final, self.temps[top])

    def carry_over(self, old: Path, new: Path) -> None:
        """Whatever is in ``old`` but not in ``new``, linked (files) or re-made (the rest)."""
        with os.scandir(old) as entries:
            for entry in entries:
                built = new / entry.name
                try:
                    mine = os.lstat(built)
                except FileNotFoundError:
                    mine = None
                if entry.is_dir(follow_symlinks=False):
                    if mine is None:
                        before = entry.stat(follow_symlinks=False)
                        os.mkdir(built, 0o700)
                        self.carry_over(Path(entry.path), built)
                        os.chmod(built, stat.S_IMODE(before.st_mode))
                        os.utime(built, ns=(before.st_atime_ns, before.st_mtime_ns))
                    elif stat.S_ISDIR(mine.st_mode):
                        self.carry_over(Path(entry.path), built)
                elif mine is None:
                    link_or_copy(Path(entry.path), built)
                self._advance(1)

    def set_directories(self) -> None:
        """Directory modes and mtimes, deepest first (a change inside sets its mtime)."""
        manifest = self.manifest
        for index in range(len(manifest) - 1, -1, -1):
            if manifest.kinds[index] != DIRECTORY:
                continue
            path = manifest.path(index)
            if path.split(b"/", 1)[0] not in self.tree.changed:
                continue
            built = self._path_of(path)
            if self.fsync:  # its entries, so that after a crash the tree holds its files
                fsync_directory(built)
            os.chmod(built, directory_mode(manifest.modes[index], self._umask))
            os.utime(built, ns=(time.time_ns(), manifest.mtimes[index]))
        for index in range(len(manifest)):
            if manifest.kinds[index] == SYMLINK:
                path = manifest.path(index)
                if path.split(b"/", 1)[0] in self.tree.changed:
                    os.utime(self._path_of(path), ns=(time.time_ns(), manifest.mtimes[index]),
                             follow_symlinks=False)

    def replace_tops(self, fsync: bool) -> None:
        """Each changed top-level entry replaces the old one in one step."""
        parents = set()
        for top in sorted(self.tree.changed):
            temp, final = self.temps[top], self.tree.finals[top]
            with interrupt.renaming(temp):
                if os.path.lexists(final) and stat.S_ISDIR(os.lstat(temp).st_mode):
                    try:
                        exchange(temp, final)
                    except OSError as exc:
                        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                            raise
                        move_aside_and_rename(temp, final)
                    else:
                        remove_path(temp)  # now the old entry
                else:
                    os.rename(temp, final)
                del self.temps[top]
            parents.add(final.parent)
        if fsync:
            for parent in parents:
                fsync_directory(parent)
