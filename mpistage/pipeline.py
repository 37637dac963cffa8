"""The hot path: one engine that runs every schedule, chunk by chunk.

Per leader, three activities overlap:

* the **reader** thread (root only) reads chunk k+1, k+2 … ahead into free buffers and
  digests the source as it goes;
* the **main** thread makes every MPI call (so ``MPI_THREAD_FUNNELED`` is enough): it
  receives chunk k from the schedule's parent, forwards it to the schedule's children
  with non-blocking sends, and keeps several receives posted ahead;
* the **writer** thread writes chunk k to the local temp file and digests what it wrote.

A small fixed pool of numpy buffers bounds memory whatever the file size: a buffer goes
back to the pool when both its sends and its write are done.  A node whose write fails
keeps receiving and forwarding, so the nodes after it still get the file.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from . import faults
from .digest import new_digest
from .errors import Stalled
from .liveness import follow, no_heartbeat
from .plan import Plan, file_identity
from .schedules import Schedule
from .sink import Sink
from .waiting import poll

log = logging.getLogger("mpistage.pipeline")

#: ``progress(bytes_done, bytes_total)``; called on the root only.
ProgressCallback = Callable[[int, int], None]

DEFAULT_DEPTH = 4
DEFAULT_TIMEOUT = 120.0


def _no_progress(done: int, total: int) -> None:
    """Default progress callback: do nothing."""


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
        self.buffers = [np.empty(size, dtype=np.uint8) for _ in range(count)]
        self._free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._holders = [0] * count
        self._lock = threading.Lock()
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
        self._free.put(None)


@dataclass
class EngineResult:
    """What one leader's engine did.

    Attributes:
        digest: hex xxh3-128 of the bytes this node wrote (``None`` if its write failed).
        source_digest: hex digest of the source as read (root only).
        read_error: why reading the source failed (root only).
        write_error: why writing the local copy failed.
        phases: seconds per phase (read, digest, wait, write, transfer).
    """

    digest: str | None = None
    source_digest: str | None = None
    read_error: str | None = None
    write_error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)


class Engine:
    """Moves one file through one schedule on one leader: :meth:`transfer`, then
    :meth:`finish_writes`; :meth:`close` in any case."""

    def __init__(
        self,
        plan: Plan,
        schedule: Schedule,
        sink: Sink | None,
        *,
        depth: int = DEFAULT_DEPTH,
        progress: ProgressCallback = _no_progress,
        timeout: float | None = DEFAULT_TIMEOUT,
        peer_name: Callable[[int], str] = lambda rank: f"rank {rank}",
        corrupt: bool = False,
    ) -> None:
        """
        Args:
            timeout: seconds any one wait may go without progress before the transfer
                counts as stalled (must exceed one chunk's time on the slowest link).
            peer_name: names a rank of the schedule's communicator for messages.
            corrupt: test hook: flip a byte of the first chunk before writing it.
        """
        self.plan = plan
        self.schedule = schedule
        self.sink = sink
        self.progress = progress
        self.timeout = timeout
        self.peer_name = peer_name
        self.corrupt = corrupt
        self.clock = PhaseClock()
        # More buffers than chunks would only hold memory.
        self.pool = BufferPool(max(2, min(depth, plan.nchunks)), max(1, min(plan.chunk_size, plan.size)))
        self._ready: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._writes: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._sends: deque[tuple[int, int, list[MPI.Request]]] = deque()
        self._recvs: deque[tuple[int, int, MPI.Request]] = deque()
        self._result = EngineResult()
        self._done_bytes = 0
        self._writer = threading.Thread(target=self._write_loop, name="mpistage-writer",
                                        daemon=True)
        self._writing_since: float | None = None  # when the current write began
        self._writer_abandoned = False
        self._chunks_written = 0
        self._started = 0.0
        self._closed = False

    # -- threads --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        """Root: read every chunk ahead into free buffers; zero-fill after an error so the
        pipeline still completes and every rank learns the outcome at the end."""
        plan, clock = self.plan, self.clock
        digest = new_digest()
        fd = -1
        try:
            fd = os.open(plan.source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            self._result.read_error = self._source_changed(fd, "since it was checked")
        except OSError as exc:
            self._result.read_error = f"cannot open source {plan.source}: {exc.strerror}"
        try:
            for k in range(plan.nchunks):
                index = self.pool.take()
                if index is None:
                    return
                length = plan.chunk_length(k)
                view = self.pool.buffers[index][:length]
                if self._result.read_error is None:
                    started = time.perf_counter()
                    try:
                        got = _pread_full(fd, view, k * plan.chunk_size)
                    except OSError as exc:
                        got = -1
                        self._result.read_error = f"reading {plan.source} failed: {exc.strerror}"
                    clock.add("read", time.perf_counter() - started)
                    if 0 <= got < length:
                        self._result.read_error = (
                            f"source {plan.source} shrank during the read "
                            f"(ended at byte {k * plan.chunk_size + got} of {plan.size})"
                        )
                    if self._result.read_error is None:
                        started = time.perf_counter()
                        digest.update(view)
                        clock.add("digest", time.perf_counter() - started)
                if self._result.read_error is not None:
                    view[:] = 0
                self._ready.put((k, index))
            if self._result.read_error is None:
                self._result.read_error = self._source_changed(fd, "while it was read")
            if self._result.read_error is None:
                self._result.source_digest = digest.hexdigest()
        finally:
            if fd >= 0:
                os.close(fd)

    def _source_changed(self, fd: int, when: str) -> str | None:
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
            what = "was removed"
        elif now[:2] != planned[:2] or file_identity(path_now)[:2] != planned[:2]:
            what = "was replaced by another file"
        elif now == planned:
            return None
        elif now[2] != planned[2]:
            what = f"changed size ({planned[2]} to {now[2]} bytes)"
        else:
            what = "was modified"
        return (f"source {self.plan.source} {what} {when}; no copy was kept "
                "(stage it again once it is complete)")

    def _write_loop(self) -> None:
        """Write chunks in order and digest what was written; after a write error, keep
        draining so buffers return to the pool and forwarding goes on.

        On the root the reader has already digested these very buffers; hashing them a
        second time would prove nothing, so the root's copy carries the source digest.
        """
        clock, sink = self.clock, self.sink
        digest = new_digest() if not self.schedule.is_root else None
        while (item := self._writes.get()) is not None:
            k, index = item
            try:
                if self._writer_abandoned:
                    continue
                view = self.pool.buffers[index][: self.plan.chunk_length(k)]
                if self.corrupt and k == 0:
                    view = faults.flipped(view)  # a copy: forwarded bytes stay intact
                if sink is not None and self._result.write_error is None:
                    started = time.perf_counter()
                    self._writing_since = time.monotonic()
                    try:
                        sink.write(view)
                    except OSError as exc:
                        if self._result.write_error is None:
                            self._result.write_error = f"write to {sink.final_path} failed: {exc}"
                        log.debug("write failed on chunk %d: %s", k, exc)
                        sink.discard()
                    finally:
                        self._writing_since = None
                    clock.add("write", time.perf_counter() - started)
                if digest is not None and self._result.write_error is None:
                    started = time.perf_counter()
                    digest.update(view)
                    clock.add("digest", time.perf_counter() - started)
                self._chunks_written += 1
            finally:
                self.pool.release(index)
        if self._result.write_error is None and digest is not None:
            self._result.digest = digest.hexdigest()

    def _writer_stuck(self) -> bool:
        """Whether the writer has been inside one write (of at most 8 MiB) for half the
        timeout: a dead disk or a hung file server.  Half, because while this node's
        buffers are all with the writer it posts no receives, and its parent counts that
        against the same timeout: this node must give up its copy and take data again
        before its parent gives up on it."""
        since = self._writing_since
        return (since is not None and self.timeout is not None and not self._writer_abandoned
                and time.monotonic() - since >= self.timeout / 2)

    def _abandon_writer(self, stuck_for: float) -> None:
        """Give up this node's copy, not the transfer: chunks are no longer queued for
        writing and the buffers of those already queued come back, so this node keeps
        forwarding to the nodes after it.  The stuck write keeps its one buffer."""
        self._writer_abandoned = True
        if self._result.write_error is None:
            where = self.sink.final_path if self.sink is not None else "the copy"
            self._result.write_error = (
                f"writing {where} made no progress for {stuck_for:g} s (a hung disk or "
                "file server?); this node went on forwarding to the others")
        log.debug("%s", self._result.write_error)
        while True:
            try:
                item = self._writes.get_nowait()
            except queue.Empty:
                return
            if item is None:  # the end marker: leave it for the writer
                self._writes.put(None)
                return
            self.pool.release(item[1])

    def _buffer_back_from_writer(self) -> int:
        """Every buffer is with the writer: wait for one to come back.  If the writer is
        stuck, abandon this node's copy (and get the buffers back) instead."""
        assert self.timeout is not None
        deadline = time.monotonic() + self.timeout
        while True:
            index = self.pool.take(block=True, timeout=min(0.1, self.timeout))
            if index is not None:
                return index
            if self._writer_stuck():
                self._abandon_writer(self.timeout / 2)
            elif time.monotonic() >= deadline and self._writing_since is None:
                raise Stalled(f"no buffer came back from the writer for {self.timeout:g} s")

    # -- main thread: all MPI calls -------------------------------------------------------

    def _wait(self, requests: list[MPI.Request], receiving: bool) -> None:
        """Wait for ``requests`` without spinning (see :mod:`mpistage.waiting`).

        Raises:
            Stalled: no progress within the timeout, or MPI reported a lost peer; the
                message names the peer (node and host) the transfer was waiting on.
        """
        started = time.perf_counter()
        try:
            done = poll(requests, self.timeout)
        except MPI.Exception as exc:
            raise Stalled(f"{self._stalled_on(receiving)}: {exc.Get_error_string()}") from exc
        finally:
            self.clock.add("wait", time.perf_counter() - started)
        if not done:
            raise Stalled(f"{self._stalled_on(receiving)} for {self.timeout:g} s")

    def _stalled_on(self, receiving: bool) -> str:
        parent = getattr(self.schedule, "parent", None)
        children = getattr(self.schedule, "children", None)
        if receiving and parent is not None:
            return f"no data from {self.peer_name(parent)}"
        if not receiving and children:
            return f"{', '.join(self.peer_name(c) for c in children)} took no data"
        return "MPI's broadcast made no progress"

    def _retire_sends(self, block: bool) -> None:
        """Release buffers whose sends are done; with ``block``, wait for the oldest."""
        while self._sends:
            k, index, requests = self._sends[0]
            if block:
                self._wait(requests, receiving=False)
                block = False
            elif not MPI.Request.Testall(requests):
                return
            self._sends.popleft()
            self.pool.release(index)
            self._sent(self.plan.chunk_length(k))

    def _sent(self, length: int) -> None:
        self._done_bytes += length
        if self.schedule.is_root:
            self.progress(self._done_bytes, self.plan.size)

    def _next_from_reader(self) -> tuple[int, int]:
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                if self._sends:
                    self._retire_sends(block=True)  # frees a buffer for the reader
                    continue
                started = time.perf_counter()
                try:
                    item = self._ready_chunk()
                finally:
                    self.clock.add("wait", time.perf_counter() - started)
            assert item is not None
            return item

    def _ready_chunk(self) -> tuple[int, int] | None:
        """The reader's next chunk.  The reader may be waiting for a buffer that a stuck
        writer holds: then this node's copy is abandoned and reading goes on."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                return self._ready.get(timeout=0.1)
            except queue.Empty:
                pass
            if self._writer_stuck():
                self._abandon_writer(self.timeout / 2)
            elif (deadline is not None and time.monotonic() >= deadline
                  and self._writing_since is None):
                raise Stalled(f"reading {self.plan.source} made no progress "
                              f"for {self.timeout:g} s")

    def _next_from_parent(self, next_post: int) -> tuple[int, int, int]:
        """Keep receives posted ahead; return the oldest once it arrived."""
        plan = self.plan
        while next_post < plan.nchunks and len(self._recvs) < len(self.pool.buffers):
            index = self.pool.take(block=False)
            if index is None:
                if self._recvs:
                    break
                if self._sends:
                    self._retire_sends(block=True)
                    continue
                index = self._buffer_back_from_writer()
            view = self.pool.buffers[index][: plan.chunk_length(next_post)]
            self._recvs.append((next_post, index, self.schedule.post_receive(view)))
            next_post += 1
        k, index, request = self._recvs.popleft()
        self._wait([request], receiving=True)
        return k, index, next_post

    def transfer(self) -> EngineResult:
        """Move every chunk through the schedule (call once).

        Returns once every chunk has been received and forwarded; on the root the
        result then holds the source's digest or why reading failed.  This node's own
        writes may still be under way: :meth:`finish_writes` waits for them.
        """
        plan, schedule = self.plan, self.schedule
        self._started = time.perf_counter()
        self._writer.start()
        reader = threading.Thread(target=self._read_loop, name="mpistage-reader", daemon=True)
        if schedule.is_root:
            reader.start()
        next_post = 0
        try:
            for _ in range(plan.nchunks):
                if schedule.is_root:
                    k, index = self._next_from_reader()
                else:
                    k, index, next_post = self._next_from_parent(next_post)
                self._dispatch(k, index)
                self._retire_sends(block=False)
            while self._sends:
                self._retire_sends(block=True)
        except BaseException:
            self.close()
            raise
        finally:
            if schedule.is_root:
                # After a stall the reader may sit in a read that never returns (a hung
                # file server); it is a daemon thread, so do not wait for it forever.
                reader.join(timeout=self.timeout)
        return self._result

    def _dispatch(self, k: int, index: int) -> None:
        """Chunk ``k`` is here: forward it to the schedule's children and queue it for
        writing (unless this node's copy was abandoned)."""
        view = self.pool.buffers[index][: self.plan.chunk_length(k)]
        requests = self.schedule.post_forward(view)
        writes = not self._writer_abandoned
        holders = bool(requests) + writes
        self.pool.hold(index, max(holders, 1))
        if writes:
            self._writes.put((k, index))
        if requests:
            self._sends.append((k, index, requests))
        else:
            self._sent(len(view))
        if not holders:
            self.pool.release(index)

    def finish_writes(self, heartbeat: Callable[[Hashable], None] = no_heartbeat) -> EngineResult:
        """Wait for this node's writes to end, as long as they make progress (each
        change is passed to ``heartbeat``, so rank 0 knows this node is alive); a write
        that stands still for the timeout abandons this node's copy."""
        self._writes.put(None)
        if not self._writer_abandoned:
            try:
                follow(self._writer, self._write_progress,
                       timeout=self.timeout if self.timeout is not None else float("inf"),
                       heartbeat=heartbeat, what="writing")
            except Stalled:
                self._abandon_writer(self.timeout)
        self.pool.close()
        if self.schedule.is_root and self._result.write_error is None:
            self._result.digest = self._result.source_digest
        self.clock.add("transfer", time.perf_counter() - self._started)
        self._result.phases = dict(self.clock.seconds)
        return self._result

    def _write_progress(self) -> tuple[int, int]:
        return self._chunks_written, self.sink.progress if self.sink is not None else 0

    def close(self) -> None:
        """Stop the writer (idempotent; it may still be inside a write that never
        returns, which the sink's owner makes harmless with ``Sink.discard``)."""
        if not self._closed:
            self._closed = True
            self._writes.put(None)
            self.pool.close()


def _pread_full(fd: int, view: np.ndarray, offset: int) -> int:
    """Read until ``view`` is full or the file ends; returns the bytes read."""
    total = 0
    mv = memoryview(view)
    while total < len(mv):
        got = os.preadv(fd, [mv[total:]], offset + total)
        if got == 0:
            break
        total += got
    return total
