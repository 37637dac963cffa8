"""The source of one node's share where every node reads the file (:mod:`mpistage.engine.ring`).

Every node opens the source path as it sees it and reads the chunks it is dealt; each
chunk's digest travels with it (:class:`mpistage.engine.frames.Signed`), so this reader
keeps no digest of its own.  The file must stay the file the plan describes: its size and
modification time are the root's (the pre-flight check compared them, with a sample of
its bytes, on every node: :mod:`mpistage.staging.shared_source`), and its identity as
this node sees it (device, inode, size, times: on a network file system the device and
inode are this client's own) must not change between opening and the end of reading.
"""

from __future__ import annotations

import os

from ..engine.buffers import Buffer, BufferPool, PhaseClock
from ..plan import Plan, file_identity, identity_change
from .source import FileSource


class ShareSource(FileSource):
    """Reads the chunks of :attr:`Plan.source` this node is dealt."""

    def __init__(self, plan: Plan, pool: BufferPool, clock: PhaseClock) -> None:
        super().__init__(plan, pool, clock)
        self._opened: tuple[int, int, int, int, int] | None = None

    def _open(self) -> None:
        try:
            self._fd = os.open(self.plan.source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            self._opened = file_identity(os.fstat(self._fd))
        except OSError as exc:
            self.error = f"cannot open source {self.plan.source}: {exc.strerror}"
            return
        size, mtime_ns = self._opened[2], self._opened[3]
        if (size, mtime_ns) != (self.plan.size, self.plan.mtime_ns):
            self.error = (f"source {self.plan.source} changed since it was checked; no copy "
                          "was kept (stage it again once it is complete)")

    def _fill(self, k: int, view: Buffer) -> None:
        self._read_chunk(self._fd, k, view, None)

    def _finish(self) -> None:
        """No digest here (each chunk carries its own); the file must be as opened."""
        assert self._opened is not None
        try:  # what the path names now: another file, if it was replaced
            named = file_identity(os.stat(self.plan.source))
        except OSError:  # gone, or the file system can no longer say
            named = None
        now: str | None = "was removed" if named is None else None
        if named is not None and named[:2] != self._opened[:2]:
            now = "was replaced by another file"
        now = now or identity_change(self._opened, file_identity(os.fstat(self._fd)))
        if now is not None:
            self.error = (f"source {self.plan.source} {now} while it was read; no copy was "
                          "kept (stage it again once it is complete)")
