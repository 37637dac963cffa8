"""This node's own copy: a thread that writes chunks to the sink, in order or each at
its offset.

The writer digests what it wrote, so the node's copy is checked against the source's
digest at the end (where each chunk carries its reader's digest, chunk by chunk as it
is written: :class:`mpistage.engine.frames.Signed`).  A write that fails (disk full,
EIO) ends this node's copy but not the transfer: the writer keeps draining, so buffers return to the pool and the node
goes on forwarding.  A write that hangs (a dead disk, a hung file server) is given up on
by the engine (:meth:`ChunkWriter.abandon`) for the same reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from typing import Protocol

from .. import faults
from ..errors import Stalled
from ..plan import Plan
from .buffers import Buffer, BufferPool, PhaseClock, pieces
from .codec import IDENTITY, Codec
from .digests import Digests, SignedCopy, StreamDigest
from .frames import HEADER, Framing, Signed, decode
from .liveness import follow

log = logging.getLogger("mpistage.engine.writer")


class CopySink(Protocol):
    """All the engine knows of where a node's copy goes (:mod:`mpistage.sinks`: a file,
    a tree, a command's input): a new sink needs no change here."""

    #: How messages name the copy's place (a path, or "the input of 'CMD'").
    final_path: object
    #: Bytes taken so far: a watchdog that sees it stand still knows a write hangs.
    progress: int

    def write(self, data: memoryview) -> None:
        """Take the next bytes of the copy (raises ``OSError`` where it cannot)."""

    # A sink that takes chunks out of file order (a schedule whose nodes handle them so,
    # :attr:`~mpistage.engine.schedules.Schedule.in_file_order`) also has
    # ``write_at(offset, data)``.

    def discard(self) -> None:
        """Give the copy up: nothing of it stays (callable at any time, repeatedly)."""


class ChunkWriter:
    """Writes chunks handed over by :meth:`put` (call :meth:`start` once).

    Attributes:
        digest: hex xxh3-128 of what was written, once all of it was written cleanly
            (``None`` without ``digests``: the root's buffers are the source's, already
            digested by the reader; hashing them again would prove nothing).
        error: why this node's copy failed (``None`` while it has not).
        abandoned: the copy was given up; chunks are no longer taken.
        held: chunks ``0 .. held - 1`` are written cleanly (a run re-formed after a lost
            node resumes this node's copy from there: :mod:`mpistage.engine.recovery`).
        signed_digest: where chunks carry their readers' digests, the source's digest
            (:class:`~mpistage.digest.ChunkDigests` of the readers'), once every chunk
            was written.
    """

    def __init__(self, plan: Plan, sink: CopySink | None, pool: BufferPool,
                 clock: PhaseClock, framing: Framing,
                 *, digests: bool, codec: Codec = IDENTITY, corrupt: bool = False,
                 in_order: bool = True) -> None:
        """
        Args:
            framing: what the messages hold (:mod:`mpistage.engine.frames`).
            in_order: chunks come in file order (else each is written at its offset,
                ``sink.write_at``).
            codec: decodes what travelled encoded (this thread's own).
            corrupt: test hook: flip a byte of the first chunk before writing it (of
                its encoded bytes, where it travelled encoded).
        """
        self.plan, self.framing, self.sink, self.pool = plan, framing, sink, pool
        self.clock, self.codec, self.corrupt = clock, codec, corrupt
        self.digest: str | None = None
        self.error: str | None = None
        self.abandoned = False
        self.held = 0
        self.in_order = in_order
        self.signed_digest: str | None = None
        self._digests: Digests | None = (SignedCopy(framing) if isinstance(framing, Signed)
                                         else StreamDigest() if digests else None)
        self._queue: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        #: When the write under way began (``None``: none is).
        self.writing_since: float | None = None
        self._chunks_done = 0
        self._thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._write_all, name="mpistage-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def resume(self, pool: BufferPool) -> None:
        """Take chunks again, from buffers of ``pool``, once the previous writes ended
        (:meth:`finish`): the same sink and the same running digest, so the copy goes on
        where it stopped.  Call :meth:`start` next."""
        assert not self._thread.is_alive(), "resume after the writes ended"
        self.pool = pool
        self._queue = queue.SimpleQueue()
        self._thread = self._new_thread()

    def put(self, k: int, index: int) -> None:
        """Write chunk ``k``, held in buffer ``index``; the buffer is released after."""
        self._queue.put((k, index))

    def abandon(self, stuck_for: float) -> None:
        """Give up this node's copy, not the transfer: chunks are no longer taken and the
        buffers of those already queued come back.  The stuck write keeps its buffer."""
        self.abandoned = True
        if self.error is None:
            where = self.sink.final_path if self.sink is not None else "the copy"
            hint = getattr(self.sink, "stuck_hint", "a hung disk or file server?")
            self.error = (f"writing {where} made no progress for {stuck_for:g} s ({hint}); "
                          "this node went on forwarding to the others")
        log.debug("%s", self.error)
        _release_queued(self._queue, self.pool)

    def finish(self, timeout: float, heartbeat: Callable[[Hashable], None]) -> None:
        """No more chunks: wait for the last writes as long as they make progress (each
        change goes to ``heartbeat``); a write that stands still for ``timeout`` seconds
        abandons the copy."""
        self.close()
        if self.abandoned:
            return
        try:
            follow(self._thread, self._progress, timeout=timeout, heartbeat=heartbeat,
                   what="writing")
        except Stalled:
            self.abandon(timeout)

    def close(self) -> None:
        """Let the thread end once the queued chunks are written (idempotent)."""
        self._queue.put(None)

    def _progress(self) -> tuple[int, int]:
        return self._chunks_done, self.sink.progress if self.sink is not None else 0

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            k, index = item
            try:
                buffer = self.pool.buffers[index]
                if self._digests is not None:  # the source's, whatever this copy's fate
                    self._digests.took(k, buffer)
                if not self.abandoned and self.error is None:
                    self._write_chunk(k, self._decoded(k, buffer))
                    if self.error is None and not self.abandoned and self.in_order:
                        self.held = k + 1
                self._chunks_done += 1
            finally:
                self.pool.release(index)
        if self._digests is not None:
            self.digest = self._digests.copy_digest() if self.error is None else None
            self.signed_digest = self._digests.source_digest()

    def _decoded(self, k: int, buffer: Buffer) -> Buffer:
        """Chunk ``k``'s source bytes; an empty view, :attr:`error` set and the copy
        discarded, if the chunk arrived damaged."""
        started = time.perf_counter()
        try:
            return decoded(self.framing, self.codec, buffer, k, corrupt=self.corrupt)
        except ValueError as exc:
            self._fail(f"chunk {k} arrived damaged: {exc}")
            return memoryview(b"")
        finally:
            self.clock.add("decode", time.perf_counter() - started)

    def _write_chunk(self, k: int, view: Buffer) -> None:
        digest = self._digests.chunk() if self._digests is not None else None
        offset = None if self.in_order else k * self.plan.chunk_size
        for piece in pieces(view):  # each digested while the write left it in the cache
            self._write_piece(k, piece, offset)
            if offset is not None:
                offset += len(piece)
            if digest is not None and self.error is None:
                started = time.perf_counter()
                digest.update(piece)
                self.clock.add("digest", time.perf_counter() - started)
        if self._digests is not None and digest is not None and self.error is None:
            self._fail(self._digests.wrote(k, digest))

    def _write_piece(self, k: int, piece: Buffer, offset: int | None) -> None:
        sink = self.sink
        if sink is None or self.error is not None:
            return
        started = time.perf_counter()
        self.writing_since = time.monotonic()
        try:
            self._fail(_put(sink, piece, offset))
        finally:
            self.writing_since = None
        self.clock.add("write", time.perf_counter() - started)

    def _fail(self, error: str | None) -> None:
        """This node's copy fails (unless ``error`` is ``None``): nothing of it stays."""
        if error is not None:
            self.error = self.error or error
            if self.sink is not None:
                self.sink.discard()


def _put(sink: CopySink, piece: Buffer, offset: int | None) -> str | None:
    """Write ``piece`` to ``sink`` (at ``offset``, or after what it took); why that
    failed, or ``None``."""
    try:
        if offset is None:
            sink.write(piece)
        else:
            sink.write_at(offset, piece)  # type: ignore[attr-defined]
    except OSError as exc:
        log.debug("write failed: %s", exc)
        return f"write to {sink.final_path} failed: {exc}"
    return None


def _release_queued(chunks: queue.SimpleQueue[tuple[int, int] | None], pool: BufferPool
                    ) -> None:
    """Give the buffers of the ``chunks`` queued for writing back to ``pool`` (the end
    marker stays for the thread)."""
    while True:
        try:
            item = chunks.get_nowait()
        except queue.Empty:
            return
        if item is None:
            chunks.put(None)
            return
        pool.release(item[1])


def decoded(framing: Framing, codec: Codec, buffer: Buffer, k: int, corrupt: bool = False
            ) -> Buffer:
    """Chunk ``k``'s source bytes, decoded where they travelled encoded; with
    ``corrupt`` (the test hook), chunk 0 is a copy with a byte flipped (of its encoded
    bytes where it travelled encoded), so the forwarded bytes stay intact.

    Raises:
        ValueError: the chunk arrived damaged.
    """
    if corrupt and k == 0:
        payload, encoded = framing.payload(buffer, k)
        damaged = memoryview(bytearray(buffer))
        where = HEADER.size if framing.framed else 0  # the payload's offset
        damaged[where: where + len(payload)] = faults.flipped(payload, last=encoded)
        buffer = damaged
    return memoryview(decode(framing, codec, buffer, k))


def holds_up(writer: ChunkWriter, timeout: float) -> bool:
    """Whether the ``writer`` explains a wait for buffers: it is inside a write.  One
    write that lasts half the ``timeout`` abandons this node's copy (a dead disk, a hung
    file server) and frees the buffers.  Half, because while this node's buffers are all
    with the writer it posts no receives, and its parent counts that against the same
    timeout: this node must take data again before its parent gives up on it."""
    since = writer.writing_since
    if since is not None and not writer.abandoned and time.monotonic() - since >= timeout / 2:
        writer.abandon(timeout / 2)  # one write (a piece, 1 MiB) for half the timeout
    return writer.writing_since is not None and not writer.abandoned


def buffer_back(writer: ChunkWriter, timeout: float, watch: Callable[[], None]) -> int:
    """Every buffer is with the ``writer``: wait for one to come back (``watch`` is
    called every 0.1 s meanwhile).

    Raises:
        Stalled: none came back within ``timeout`` while no write was under way.
    """
    deadline = time.monotonic() + timeout
    while True:
        index = writer.pool.take(block=True, timeout=min(0.1, timeout))
        if index is not None:
            return index
        watch()
        if not holds_up(writer, timeout) and time.monotonic() >= deadline:
            raise Stalled(f"no buffer came back from the writer for {timeout:g} s")
