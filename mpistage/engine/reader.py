"""The root's reader: a thread that fills chunks in order into free buffers, digests
them and (with a codec) has them encoded, ahead of the sends.

:class:`ChunkSource` is all the engine knows of a source; what fills a chunk is a
subclass's (:mod:`mpistage.sources`: one file, a tree, a stream, the chunks a re-formed
run already holds).  The reader runs in its own thread, so reading chunk k+1, k+2 …
overlaps the sends of chunk k.  After an error it zero-fills the rest, so that the
pipeline still completes and every rank learns the outcome at the end.
"""


from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from ..errors import Stalled
from ..plan import Plan, source_label
from .buffers import Buffer, BufferPool, PhaseClock, zero
from .codec import IDENTITY, Codec
from .frames import Framing, framing_for

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .encoders import Encoders

    #: A chunk read: ``(k, buffer index, its encoding's future or None)``.
    Ready = tuple[int, int, Future[float] | None]


class ReadyChunks:
    """The chunks read and not yet taken by the engine, in order (each with its encoding
    still under way, a future, or done, ``None``); at most :meth:`ahead` of them, where
    a node also receives into the same buffers."""

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock
        self._queue: queue.SimpleQueue[Ready] = queue.SimpleQueue()
        self._head: Ready | None = None  # taken from the queue, its encoding not done yet
        self._slots: threading.Semaphore | None = None

    def ahead(self, limit: int | None) -> None:
        """At most ``limit`` chunks wait for the engine (``None``: no limit)."""
        self._slots = None if limit is None else threading.Semaphore(limit)

    def room(self, pool: BufferPool) -> bool:
        """Wait until another chunk may be read; ``False`` once ``pool`` is closed."""
        if self._slots is not None:
            while not self._slots.acquire(timeout=0.1):
                if pool.closed:
                    return False
        return True

    def put(self, item: Ready) -> None:
        self._queue.put(item)

    def take(self, wait: float) -> tuple[int, int] | None:
        """The next chunk, ``(k, buffer index)``, if it was read and encoded within
        ``wait`` seconds (0: now), else ``None``; in order, whatever order the encoders
        finish in."""
        if self._head is None:
            try:
                self._head = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
            except queue.Empty:
                return None
        k, index, encoding = self._head
        if encoding is not None:
            if not encoding.done() and wait:
                from concurrent.futures import wait as futures_wait  # imported by encoders
                futures_wait([encoding], timeout=wait)
            if not encoding.done():
                return None
            self.clock.add("encode", encoding.result())
        self._head = None
        if self._slots is not None:
            self._slots.release()
        return k, index


class ChunkSource:
    """Fills chunks in a reader thread, in order, into free buffers (call :meth:`start`
    once); what fills them is the subclass's :meth:`_fill`.

    Attributes:
        digest: hex xxh3-128 of what was read, once every chunk was read cleanly.
        error: why reading failed (``None`` while it has not).
        bytes_read: source bytes read so far (a stream's size, once it ended).
        first, until: the chunks to read, ``first .. until-1`` (by default all; a
            re-formed run reads only some: :mod:`mpistage.engine.recovery`); set before
            :meth:`start`.
        chunks_read: chunks ``0 .. chunks_read-1`` were read cleanly (and digested), by
            this reader or the one it resumed.
        wanted: of those, the chunks this node reads (``None``: all; where every node
            reads a share, :meth:`mpistage.engine.schedules.Schedule.reads`); set before
            :meth:`start`.
        ahead: chunks read and not yet taken by the engine, at most (``None``: as many
            as there are free buffers); set before :meth:`start`.
    """

    def __init__(self, plan: Plan, pool: BufferPool, clock: PhaseClock) -> None:
        self.plan = plan
        self.pool = pool
        self.clock = clock
        self.digest: str | None = None
        self.error: str | None = None
        self.bytes_read = 0
        self.first = 0
        self.until: int | None = None
        self.wanted: Callable[[int], bool] | None = None
        self.ahead: int | None = None
        self.chunks_read = 0
        self._ready = ReadyChunks(clock)
        self._encoders: Encoders | None = None
        if plan.codec != "none":
            # Only here: its thread pool (concurrent.futures) cost every rank of every
            # run 6 ms of CPU, of the ~54 ms the command line's import costs.
            from . import encoders
            self._encoders = encoders.Encoders(plan.codec)
        self._thread = threading.Thread(target=self._read_all, name="mpistage-reader",
                                        daemon=True)

    def start(self) -> None:
        self._ready.ahead(self.ahead)
        self._thread.start()

    def join(self, timeout: float | None) -> None:
        """Wait for the reader to end; after a stall it may sit in a read that never
        returns (a hung file server), so the wait is bounded."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._encoders is not None:
            self._encoders.close()

    def ready_chunk(self) -> tuple[int, int] | None:
        """The next chunk read, ``(k, buffer index)``, or ``None`` if none is ready."""
        return self._ready.take(0)

    def next_chunk(self, timeout: float | None, excused: Callable[[], bool]) -> tuple[int, int]:
        """Wait for the next chunk.

        Raises:
            Stalled: reading made no progress for ``timeout`` seconds, and ``excused()``
                (asked every 0.1 s: is something else holding the buffers the reader
                waits for?) did not explain the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = self._ready.take(0.1)
            if chunk is not None:
                return chunk
            if not excused() and deadline is not None and time.monotonic() >= deadline:
                raise Stalled(f"reading {source_label(self.plan.source)} made no progress for "
                              f"{timeout:g} s")

    def _read_all(self) -> None:
        framing = framing_for(self.plan)
        count = framing.chunk_count()  # None: a stream, until its last frame
        try:
            self._open()
            k = self.first
            end = count if self.until is None else self.until
            while end is None or k < end:
                if self.wanted is not None and not self.wanted(k):
                    k += 1
                    continue
                index = self.pool.take() if self._ready.room(self.pool) else None
                if index is None:  # the engine closed the pool: the transfer is over
                    return
                buffer = self.pool.buffers[index]
                view = framing.read_space(buffer, k)
                got = self._fill_chunk(k, view)
                last = k == count - 1 if count is not None else got < len(view)
                encoding = None
                if self._encoders is None:
                    framing.seal(buffer, k, got, last, IDENTITY, unread=self.error is not None)
                else:
                    encoding = self._encoders.submit(partial(_encode, framing, buffer, k, got,
                                                             last))
                self.bytes_read += got
                if self.error is None:
                    self.chunks_read = max(self.chunks_read, k + 1)
                self._ready.put((k, index, encoding))
                k += 1
                if last:
                    break
            if self.error is None:
                self._finish()
        finally:
            self._close()

    def _fill_chunk(self, k: int, view: Buffer) -> int:
        """Chunk ``k``'s bytes into ``view``; how many.  After an error, zeros to the
        end of a file's chunk (every rank knows how many chunks come), and none for a
        stream's (it ends here)."""
        got = len(view)
        if self.error is None:
            try:
                filled = self._fill(k, view)
                got = got if filled is None else filled
            except Exception as exc:  # noqa: BLE001 - a dead reader would hang the run
                self.error = f"reading {self.plan.source} failed: {exc!r}"
        if self.error is not None:
            zero(view)
            got = 0 if self.plan.stream else len(view)
        return got

    def stop(self) -> None:
        """The transfer ended (or was abandoned): release what the reader may wait on,
        e.g. a producer that would otherwise outlive the run (idempotent)."""

    def _open(self) -> None:
        """Before the first chunk (errors go to :attr:`error`)."""

    def _fill(self, k: int, view: Buffer) -> int | None:
        """Fill chunk ``k`` (all of ``view``; a stream: until its end, returning how
        many bytes, fewer only at the end), or set :attr:`error`."""
        raise NotImplementedError

    def _finish(self) -> None:
        """After the last chunk, read cleanly: set :attr:`digest` (or :attr:`error`)."""

    def _close(self) -> None:
        """Release what :meth:`_open` took, whatever happened."""


def _encode(framing: Framing, buffer: Buffer, k: int, got: int, last: bool,
            codec: Codec) -> float:
    """On an encoder thread: seal chunk ``k`` encoded; the seconds it took.  Should the
    codec fail (it has no reason to), the chunk travels as it is."""
    started = time.perf_counter()
    try:
        framing.seal(buffer, k, got, last, codec)
    except Exception:  # noqa: BLE001 - the bytes are still there, unencoded
        framing.seal(buffer, k, got, last, IDENTITY)
    return time.perf_counter() - started


def pread_full(fd: int, view: Buffer, offset: int) -> int:
    """Read until ``view`` is full or the file ends; returns the bytes read."""
    total = 0
    mv = memoryview(view)
    while total < len(mv):
        got = os.preadv(fd, [mv[total:]], offset + total)
        if got == 0:
            break
        total += got
    return total
