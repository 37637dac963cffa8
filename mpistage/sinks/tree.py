"""A node's copy of a tree: built beside the destination, put in place all at once.

Each top-level entry that differs on this node (a source directory, file or symlink, or
the first component of a ``--files-from`` path) is built under a private temp name
beside its final path (:mod:`mpistage.sinks.tree_skeleton`): directories and symlinks
first, then each file as its bytes pass in the stream, checked against the digest that
follows it.  At the commit the files this node already had are hard-linked in (no bytes
moved), what stood at the destination but is not in the source is carried over too
(``cp`` keeps it; ``--delete`` leaves it out), directory modes and mtimes are set, and
the built entry replaces the old one in one step: ``rename`` where nothing stood,
``renameat2(RENAME_EXCHANGE)`` where a tree did (then the old tree, now under the temp
name, is removed).  A job thus sees the old tree or the new one, never half of one.
"""

from __future__ import annotations

import logging
import os
import stat
import time

from ..digest import file_digest, new_digest
from ..sources.manifest import TRAILER, Manifest, stream_files
from .file import copy_mode, current_umask
from .tree_commit import NodeTree, TreeCommit
from .tree_skeleton import Skeleton

log = logging.getLogger("mpistage.sinks.tree")

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeSink:
    """Receives a tree's stream in order and puts the tree in place when asked.

    Used as :class:`mpistage.sinks.file.Sink` is: one writer thread calls :meth:`write`, then
    one thread :meth:`commit`; :meth:`discard` at any time removes everything built.

    Attributes:
        error: why this node's copy failed (a file's digest differed), or ``None``.
        files_written: files of the stream this node wrote and verified.
    """

    def __init__(self, manifest: Manifest, needed: bytearray, tree: NodeTree, *,
                 fsync: bool = False, remove_first: bool = False, verify: bool = False,
                 delete: bool = False) -> None:
        """
        Args:
            needed: per entry, 1 where the file is in the stream (some node lacks it).
            delete: leave out what stands at the destination but is not in the source.
        """
        self.manifest, self.tree, self.fsync, self.delete = manifest, tree, fsync, delete
        self.remove_first = remove_first
        self.final_path = next(iter(tree.finals.values())).parent
        self.bytes_written = self.progress = self.files_written = 0
        self.error: str | None = None
        self.timings: dict[str, float] = {}
        self._digests = {} if verify else None  # entry -> digest written, for --verify
        self._files = stream_files(manifest, needed)
        self._index = self._fd = -1
        self._left = 0  # bytes of the current file still to come
        self._digest = new_digest()
        self._trailer = bytearray()
        self._write_some = os.write  # a test fault may make it hang (mpistage.faults)
        self._umask = current_umask()
        self.skeleton = Skeleton(manifest, tree)
        self.temps = self.skeleton.temps
        self._path_of = self.skeleton.path_of

    # -- the stream -----------------------------------------------------------------------

    def write(self, data: memoryview) -> None:
        """Take the next bytes of the stream; raises ``OSError`` as the kernel reports."""
        view = memoryview(data).cast("B")
        position, end = 0, len(view)
        while position < end:
            if self._index < 0 or (self._left == 0 and len(self._trailer) == TRAILER):
                self._next_file()
            if self._left:
                count = min(self._left, end - position)
                if self._fd >= 0:
                    self._write_file(view[position:position + count])
                self._left -= count
            else:
                count = min(TRAILER - len(self._trailer), end - position)
                self._trailer += view[position:position + count]
                if len(self._trailer) == TRAILER:
                    self._end_file()
            position += count

    def _next_file(self) -> None:
        index = next(self._files)
        self._index, self._left = index, self.manifest.sizes[index]
        self._trailer = bytearray()
        self._digest = new_digest()
        if self.tree.wants[index] and self.error is None:
            path = self.manifest.path(index)
            if self.remove_first:
                _remove_old(self.tree.final_of(path))
            if b"/" in path:  # created with its final mode (a new file is writable anyway)
                self._fd = os.open(self._path_of(path), _CREATE,
                                   copy_mode(self.manifest.modes[index], self._umask))
            else:
                self._fd = self.skeleton.top_fds.pop(path)
                os.fchmod(self._fd, copy_mode(self.manifest.modes[index], self._umask))
        else:
            self._fd = -1

    def _write_file(self, view: memoryview) -> None:
        self._digest.update(view)
        while view:
            written = self._write_some(self._fd, view)
            self.bytes_written += written
            self.progress += written
            view = view[written:]

    def _end_file(self) -> None:
        if self._fd < 0:
            return
        index, fd = self._index, self._fd
        self._fd = -1
        try:
            digest = self._digest.digest()
            if digest != self._trailer:
                if self.error is None:
                    self.error = (f"digest mismatch on {os.fsdecode(self.manifest.path(index))}:"
                                  f" wrote {digest.hex()}, source {self._trailer.hex()}")
                return
            if self.fsync:
                os.fsync(fd)
            mtime = self.manifest.mtimes[index]
            os.utime(fd, ns=(time.time_ns(), mtime))
            self.files_written += 1
            if self._digests is not None:
                self._digests[index] = digest.hex()
        finally:
            os.close(fd)

    def finished(self) -> bool:
        """Whether the whole stream arrived: every file and its digest."""
        return self._left == 0 and (self._index < 0 or len(self._trailer) == TRAILER) and \
            next(self._files, None) is None

    # -- the commit -----------------------------------------------------------------------

    def commit(self, *, fsync: bool = False, verify: bool = False) -> None:
        """Link in what this node had, carry over what the destination held, set the
        directories' modes and mtimes, then replace each changed top-level entry.

        Raises:
            OSError: a step failed (everything built is removed first).
            ValueError: a re-read (``verify``) differs.
            mpistage.interrupt.Interrupted: a signal came before the replacement.
        """
        try:
            if verify and self._digests is not None:
                started = time.perf_counter()
                self._reread(self._digests)
                self.timings["verify"] = time.perf_counter() - started
            started = time.perf_counter()
            TreeCommit(self.manifest, self.tree, self.temps, path_of=self._path_of,
                       advance=self._advance, umask=self._umask, delete=self.delete,
                       fsync=self.fsync).run(fsync)
            self.timings["rename"] = time.perf_counter() - started
        except BaseException:
            self.discard()
            raise

    def _reread(self, digests: dict[int, str]) -> None:
        """``--verify``: read each file written back and check it against its digest.

        Raises:
            ValueError: a re-read differs.
        """
        for index, digest in digests.items():
            on_disk = file_digest(self._path_of(self.manifest.path(index)), progress=self._advance)
            if on_disk != digest:
                raise ValueError(f"re-read of {os.fsdecode(self.manifest.path(index))}"
                                 f" gave digest {on_disk}, expected {digest}")

    def _advance(self, count: int) -> None:
        self.progress += count

    def discard(self) -> None:
        """Remove everything built that is not in place (idempotent)."""
        self.skeleton.discard()

    def __enter__(self) -> TreeSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _remove_old(final: bytes) -> None:
    """``--remove-first``: delete the outdated copy at ``final`` (a regular file only)
    before its replacement is written."""
    try:
        if stat.S_ISREG(os.lstat(final).st_mode):
            os.unlink(final)
    except OSError:
        pass
