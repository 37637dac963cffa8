"""The source of a tree run: the files some node lacks, read in order into one stream.

The stream is the concatenation, in manifest order, of every file in it (see
:func:`mpistage.sources.manifest.stream_files`), each followed by its own xxh3-128 digest
(:data:`TRAILER` bytes): small files share a chunk, a large one spans many, and each node
checks every file it writes against the digest that follows it, as soon as its last byte
has passed.  Each file is checked to be the one the walk found (device, inode, size,
mtime, ctime) after it was read (a large one also when it is opened, before reading it
for nothing), so a file replaced or rewritten meanwhile fails the run instead of being
staged as a mix of old and new bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from ..digest import new_digest
from ..engine.buffers import PIECE, Buffer, BufferPool, PhaseClock
from ..engine.reader import ChunkSource, pread_full
from ..plan import Plan, file_identity, identity_change
from .manifest import Manifest, stream_files

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW


class TreeSource(ChunkSource):
    """Fills the chunks of a tree's stream (root only).

    Attributes:
        digest: the tree's digest: xxh3-128 of the files' digests in stream order.
    """

    def __init__(self, plan: Plan, pool: BufferPool, clock: PhaseClock, *,
                 manifest: Manifest, needed: bytearray) -> None:
        super().__init__(plan, pool, clock)
        self.manifest = manifest
        self._files: Iterator[int] = stream_files(manifest, needed)
        self._tree_digest = new_digest()
        self._fd = -1
        self._index = -1
        self._offset = 0        # bytes of the current file read so far
        self._trailer = memoryview(b"")  # digest bytes still to go into the stream
        self._digest = new_digest()

    def _fill(self, k: int, view: Buffer) -> None:
        position = 0
        while position < len(view) and self.error is None:
            if self._trailer:
                count = min(len(self._trailer), len(view) - position)
                view[position:position + count] = self._trailer[:count]
                self._trailer = self._trailer[count:]
                position += count
            elif self._fd >= 0:
                position += self._read_some(view[position:])
            else:
                self._open_next()

    def _open_next(self) -> None:
        index = next(self._files)
        path = self.manifest.source_path(index)
        shown = os.fsdecode(path)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            self.error = f"cannot open source {shown}: {exc.strerror}"
            return
        self._fd, self._index, self._offset = fd, index, 0
        self._digest = new_digest()
        size = self.manifest.sizes[index]
        if size > PIECE:  # not worth reading if replaced; a small file is checked after
            self.error = self._changed("since it was listed")
        if self.error is None and size == 0:
            self.error = self._changed("since it was listed")
            if self.error is None:
                self._end_file()

    def _read_some(self, view: Buffer) -> int:
        size = self.manifest.sizes[self._index]
        count = min(len(view), size - self._offset)
        started = time.perf_counter()
        try:
            got = pread_full(self._fd, view[:count], self._offset)
        except OSError as exc:
            self.error = (f"reading {os.fsdecode(self.manifest.source_path(self._index))} "
                          f"failed: {exc.strerror}")
            return 0
        finally:
            self.clock.add("read", time.perf_counter() - started)
        if got < count:  # what changed, if the file says; else that it shrank
            self.error = self._changed("since it was listed") or (
                f"source {os.fsdecode(self.manifest.source_path(self._index))} shrank "
                f"during the read (ended at byte {self._offset + got} of {size})")
            return got
        started = time.perf_counter()
        self._digest.update(view[:got])
        self.clock.add("digest", time.perf_counter() - started)
        self._offset += got
        if self._offset == size:
            self.error = self._changed("while it was read")
            if self.error is None:
                self._end_file()
        return got

    def _end_file(self) -> None:
        """The current file is read: close it, its digest goes into the stream next."""
        digest = self._digest.digest()
        self._tree_digest.update(digest)
        self._trailer = memoryview(digest)
        os.close(self._fd)
        self._fd = -1

    def _changed(self, when: str) -> str | None:
        """Why the open file is not the one the walk found, or ``None``."""
        what = identity_change(self.manifest.identity(self._index),
                               file_identity(os.fstat(self._fd)))
        if what is None:
            return None
        shown = os.fsdecode(self.manifest.source_path(self._index))
        return (f"source {shown} {what} {when}; no copy of the tree was kept "
                "(stage it again once it is complete)")

    def _finish(self) -> None:
        self.digest = self._tree_digest.hexdigest()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
