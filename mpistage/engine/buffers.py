"""The chunk buffers one leader works with, and the clock of its phases.

A small fixed pool of buffers bounds memory whatever the file size; the source,
the engine and the writer pass buffers by index, and a buffer goes back to the pool when
its last holder (the sends of a chunk, its write) lets go.

A buffer is a writable :class:`memoryview` of an anonymous ``mmap``: MPI, ``preadv``,
``write`` and xxhash all take it without a copy (as they would a numpy array), it is
page-aligned, its pages cost memory only once touched (a 1-byte file does not pay for a
whole chunk), and a run that only moves bytes does not import numpy (~70 ms of CPU on
every rank at start-up).
"""

from __future__ import annotations

import mmap
import queue
import threading

#: One chunk buffer (or a slice of one).
Buffer = memoryview

#: Bytes read (or written) and then digested in one go: a piece this size is still in
#: the CPU's cache when xxhash reads it, so the digest costs no second pass over memory
#: (a whole 16 MiB chunk would have left the cache: +0.15 s of CPU per GiB).
PIECE = 1 << 20


def zero(view: Buffer) -> None:
    """Fill ``view`` with zero bytes (a memoryview takes bytes, not a scalar)."""
    view[:] = bytes(len(view))


def pieces(view: Buffer) -> list[Buffer]:
    """``view`` cut into :data:`PIECE`-sized slices (no copies)."""
    return [view[start:start + PIECE] for start in range(0, len(view), PIECE)] or [view]


class PhaseClock:
    """Seconds spent per phase; each phase is added to by one thread only."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


class BufferPool:
    """A fixed set of chunk buffers, handed out by index.

    A buffer in use may have several holders (the sends of a chunk, its write); it
    returns to the pool when the last one lets go.
    """

    def __init__(self, count: int, size: int) -> None:
        self.buffers: list[Buffer] = [memoryview(mmap.mmap(-1, max(size, 1)))
                                      for _ in range(count)]
        self._free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._holders = [0] * count
        self._lock = threading.Lock()
        #: :meth:`close` was called: the transfer is over.
        self.closed = False
        for index in range(count):
            self._free.put(index)

    def take(self, block: bool = True, timeout: float | None = None) -> int | None:
        """A free buffer's index; ``None`` if none is free (when not blocking, or not
        within ``timeout``), or on :meth:`close`."""
        try:
            return self._free.get(block=block, timeout=timeout if block else None)
        except queue.Empty:
            return None

    def hold(self, index: int, holders: int) -> None:
        with self._lock:
            self._holders[index] = holders

    def release(self, index: int) -> None:
        with self._lock:
            self._holders[index] -= 1
            free = self._holders[index] <= 0
        if free:
            self._free.put(index)

    def close(self) -> None:
        """Wake a thread blocked in :meth:`take` (it gets ``None``)."""
        self.closed = True
        self._free.put(None)
