"""Where a node's copy of a tree is built: a private temp entry beside each final path.

Each top-level entry that differs on this node gets a temp name beside its final path
(``.NAME.HOST.PID.XXXXXXXX.mpistage-tmp``, made with ``mkdtemp``/``mkstemp``, so nothing
planted in the destination can redirect a write); under it go the directories and
symlinks at once, the files as the stream brings them (:class:`mpistage.sinks.tree.TreeSink`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import interrupt
from ..sources.manifest import DIRECTORY, SYMLINK, Manifest
from .file import TEMP_SUFFIX, temp_prefix
from .tree_commit import NodeTree, remove_path


class Skeleton:
    """The temp entries of one node's tree, and its directories and symlinks (built on
    creation; if that fails, nothing of it stays).

    Attributes:
        temps: per changed top-level entry, its temp path (the commit takes each one it
            put in place out of it).
        top_fds: top-level files' temp files, open for the stream's bytes.
    """

    def __init__(self, manifest: Manifest, tree: NodeTree) -> None:
        self.temps: dict[bytes, Path] = {}
        self.top_fds: dict[bytes, int] = {}
        self._temp_names: dict[bytes, bytes] = {}  # the temps, encoded
        try:
            self._make_temps(manifest, tree)
            self._fill(manifest, tree)
        except BaseException:  # nothing half-built stays behind (a full disk, a signal)
            self.discard()
            raise

    def path_of(self, path: bytes) -> bytes:
        """Where entry ``path`` is built: under its top-level entry's temp name."""
        top, _, rest = path.partition(b"/")
        temp = self._temp_names[top]
        return temp + b"/" + rest if rest else temp

    def _make_temps(self, manifest: Manifest, tree: NodeTree) -> None:
        tops = {manifest.path(index): index for index in manifest.top_indices()}
        for top in sorted(tree.changed):
            final = tree.finals[top]
            prefix = temp_prefix(final.name, os.getpid())
            index = tops[top]
            kind = manifest.kinds[index]
            if kind == DIRECTORY:
                temp = Path(tempfile.mkdtemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=final.parent))
            else:  # a file's or a symlink's temp name, made exclusively
                fd, name = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=final.parent)
                temp = Path(name)
                if kind == SYMLINK:
                    os.close(fd)
                    os.unlink(temp)
                    os.symlink(manifest.link(index), temp)
                else:
                    self.top_fds[top] = fd  # the stream's bytes for it go here
            self.temps[top] = temp
            self._temp_names[top] = os.fsencode(temp)
            interrupt.register_temp_file(temp)

    def _fill(self, manifest: Manifest, tree: NodeTree) -> None:
        """The directories and symlinks below the changed top-level entries."""
        for index in range(len(manifest)):
            kind = manifest.kinds[index]
            path = manifest.path(index)
            if b"/" not in path or path.split(b"/", 1)[0] not in tree.changed:
                continue
            if kind == DIRECTORY:
                os.mkdir(self.path_of(path), 0o700)
            elif kind == SYMLINK:
                os.symlink(manifest.link(index), self.path_of(path))

    def discard(self) -> None:
        """Remove every temp entry not put in place (idempotent)."""
        for top in list(self.top_fds):
            os.close(self.top_fds.pop(top))
        for top, temp in list(self.temps.items()):
            interrupt.forget_temp_file(temp)
            remove_path(temp)
            self.temps.pop(top, None)
