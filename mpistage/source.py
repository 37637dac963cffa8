"""The source: the root's file, read ahead into free buffers and digested as it goes.

:class:`ChunkSource` is what the engine sees (a reader thread filling chunks in order);
:class:`FileSource` fills them from one file, :class:`mpistage.treesource.TreeSource`
from the files of a tree.

The reader runs in its own thread, so reading chunk k+1, k+2 … overlaps the sends of
chunk k.  It checks that the file is still the one the plan describes (device, inode,
size, mtime, ctime) before and after reading, so a file replaced or rewritten meanwhile
is never staged as a mix of old and new bytes.  After an error it zero-fills the rest,
so that the pipeline still completes and every rank learns the outcome at the end.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from .buffers import Buffer, BufferPool, PhaseClock, pieces, zero
from .codec import IDENTITY, Codec
from .digest import new_digest
from .errors import Stalled
from .frames import Framing, framing_for
from .plan import Plan, file_identity, identity_change, source_label

if TYPE_CHECKING:
    from concurrent.futures import Future

    import xxhash

    from .encoders import Encoders

    #: A chunk read: ``(k, buffer index, its encoding's future or None)``.
    Ready = tuple[int, int, Future[float] | None]


class ChunkSource:
    """Fills chunks in a reader thread, in order, into free buffers (call :meth:`start`
    once); what fills them is the subclass's :meth:`_fill`.

    Attributes:
        digest: hex xxh3-128 of what was read, once every chunk was read cleanly.
        error: why reading failed (``None`` while it has not).
        bytes_read: source bytes read so far (a stream's size, once it ended).
        first, until: the chunks to read, ``first .. until-1`` (by default all; a
            re-formed run reads only some: :mod:`mpistage.recovery`); set before
            :meth:`start`.
        chunks_read: chunks ``0 .. chunks_read-1`` were read cleanly (and digested), by
            this reader or the one it resumed.
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
        self.chunks_read = 0
        # Each chunk read, with its encoding still under way (a future) or done (None).
        self._ready: queue.SimpleQueue[Ready] = queue.SimpleQueue()
        self._head: Ready | None = None  # taken from the queue, its encoding not done yet
        self._encoders: Encoders | None = None
        if plan.codec != "none":
            # Only here: its thread pool (concurrent.futures) cost every rank of every
            # run 6 ms of CPU, of the ~54 ms the command line's import costs.
            from .encoders import Encoders
            self._encoders = Encoders(plan.codec)
        self._thread = threading.Thread(target=self._read_all, name="mpistage-reader",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None) -> None:
        """Wait for the reader to end; after a stall it may sit in a read that never
        returns (a hung file server), so the wait is bounded."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._encoders is not None:
            self._encoders.close()

    def _next_ready(self, wait: float) -> tuple[int, int] | None:
        """The next chunk, ``(k, buffer index)``, if it was read and encoded within
        ``wait`` seconds (0: now), else ``None``; in order, whatever order the encoders
        finish in."""
        if self._head is None:
            try:
                self._head = self._ready.get(timeout=wait) if wait else self._ready.get_nowait()
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
        return k, index

    def ready_chunk(self) -> tuple[int, int] | None:
        """The next chunk read, ``(k, buffer index)``, or ``None`` if none is ready."""
        return self._next_ready(0)

    def next_chunk(self, timeout: float | None, excused: Callable[[], bool]) -> tuple[int, int]:
        """Wait for the next chunk.

        Raises:
            Stalled: reading made no progress for ``timeout`` seconds, and ``excused()``
                (asked every 0.1 s: is something else holding the buffers the reader
                waits for?) did not explain the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = self._next_ready(0.1)
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
                index = self.pool.take()
                if index is None:  # the engine closed the pool: the transfer is over
                    return
                buffer = self.pool.buffers[index]
                view = framing.read_space(buffer, k)
                got = self._fill_chunk(k, view)
                last = k == count - 1 if count is not None else got < len(view)
                encoding = None
                if self._encoders is None:
                    framing.seal(buffer, k, got, last, IDENTITY)
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


class FileSource(ChunkSource):
    """Reads :attr:`Plan.source`, the one file of the plan, chunk by chunk."""

    def __init__(self, plan: Plan, pool: BufferPool, clock: PhaseClock) -> None:
        super().__init__(plan, pool, clock)
        self._digest = new_digest()
        self._digest_from = 0  # chunks before it were digested by an earlier reader
        self._fd = -1

    @classmethod
    def resumed(cls, previous: FileSource, first: int, pool: BufferPool,
                clock: PhaseClock) -> FileSource:
        """A reader for a re-formed run (:mod:`mpistage.recovery`): it starts at chunk
        ``first`` and digests on from where ``previous`` (ended, without an error)
        stopped, into the same running digest, so the source's digest is still of one
        sequential read of every byte.  Chunks read again are not digested twice; the
        file's identity, checked at the end as always, tells if they changed."""
        assert first <= previous.chunks_read, "no chunk may be skipped by the digest"
        source = cls(previous.plan, pool, clock)
        source.first = first
        source._digest = previous._digest
        source._digest_from = source.chunks_read = previous.chunks_read
        source.bytes_read = first * previous.plan.chunk_size
        return source

    def _open(self) -> None:
        try:
            self._fd = os.open(self.plan.source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            self.error = self._changed(self._fd, "since it was checked")
        except OSError as exc:
            self.error = f"cannot open source {self.plan.source}: {exc.strerror}"

    def _fill(self, k: int, view: Buffer) -> None:
        self._read_chunk(self._fd, k, view, self._digest if k >= self._digest_from else None)

    def _finish(self) -> None:
        self.error = self._changed(self._fd, "while it was read")
        if self.error is None:
            self.digest = self._digest.hexdigest()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read_chunk(self, fd: int, k: int, view: Buffer,
                    digest: xxhash.xxh3_128 | None) -> None:
        """Read chunk ``k`` into ``view`` piece by piece, digesting each piece while it
        is still in the CPU's cache."""
        plan = self.plan
        offset = k * plan.chunk_size
        for piece in pieces(view):
            started = time.perf_counter()
            try:
                got = _pread_full(fd, piece, offset)
            except OSError as exc:
                self.error = f"reading {plan.source} failed: {exc.strerror}"
                return
            finally:
                self.clock.add("read", time.perf_counter() - started)
            if got < len(piece):
                self.error = (f"source {plan.source} shrank during the read "
                              f"(ended at byte {offset + got} of {plan.size})")
                return
            if digest is not None:
                started = time.perf_counter()
                digest.update(piece)
                self.clock.add("digest", time.perf_counter() - started)
            offset += got

    def _changed(self, fd: int, when: str) -> str | None:
        """Why the open source is not the file the plan describes, or ``None``.

        Device, inode, size, modification and change time are compared, so a file
        replaced, truncated, appended to or rewritten in place (``rsync --inplace``, a
        job still writing it) is never staged as a mix of old and new bytes.
        """
        planned = self.plan.identity
        if planned is None:
            return None
        now = file_identity(os.fstat(fd))  # what is being read
        try:
            path_now = os.stat(self.plan.source)  # what the path names now
        except FileNotFoundError:
            path_now = None
        if path_now is None:
            what: str | None = "was removed"
        elif file_identity(path_now)[:2] != planned[:2]:
            what = "was replaced by another file"
        else:
            what = identity_change(planned, now)
        if what is None:
            return None
        return (f"source {self.plan.source} {what} {when}; no copy was kept "
                "(stage it again once it is complete)")


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


def _pread_full(fd: int, view: Buffer, offset: int) -> int:
    """Read until ``view`` is full or the file ends; returns the bytes read."""
    total = 0
    mv = memoryview(view)
    while total < len(mv):
        got = os.preadv(fd, [mv[total:]], offset + total)
        if got == 0:
            break
        total += got
    return total
