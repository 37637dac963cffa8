"""The hot path: one engine that runs every schedule, chunk by chunk.

Per leader, three activities overlap, each in its own unit:

* the **source** (:mod:`mpistage.sources.source`, root only) reads chunk k+1, k+2 … ahead into
  free buffers in a thread and digests the file as it goes;
* the **engine** (this module, the main thread) makes every MPI call (so
  ``MPI_THREAD_FUNNELED`` is enough): it takes chunk k from the source or receives it
  from the schedule's parent (:mod:`mpistage.engine.inbox`: several receives posted
  ahead), forwards it to the schedule's children with non-blocking sends
  (:mod:`mpistage.engine.outbox`), and hands it to the writer; its waits never spin
  and name the peer they stalled on (:mod:`mpistage.engine.waits`);
* the **writer** (:mod:`mpistage.engine.writer`) writes chunk k to the sink in a thread and
  digests what it wrote.

How chunks travel is the plan's: as they are, or framed (a stream, whose end only its
last frame tells; chunks encoded once on the root by ``plan.codec``, forwarded as they
came and decoded by each node's writer; :mod:`mpistage.engine.frames`).

A small fixed pool of buffers (:mod:`mpistage.engine.buffers`) bounds memory whatever the file
size.  A node whose write fails, or hangs, keeps receiving and forwarding, so the nodes
after it still get the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from ..plan import Plan
from .buffers import BufferPool, PhaseClock
from .codec import make as make_codec
from .forward import Forward
from .frames import Framing, framing_for
from .inbox import Inbox
from .liveness import no_heartbeat
from .outbox import Outbox, Progress
from .reader import ChunkSource
from .schedules import Schedule
from .waits import Waits, stalled_on
from .writer import ChunkWriter, CopySink, buffer_back, holds_up

#: ``progress(bytes_done, bytes_total)``; called on the root only.
ProgressCallback = Callable[[int, int], None]
#: Makes the root's source (:mod:`mpistage.sources`: one file's, a tree's, a stream's).
SourceFactory = Callable[[Plan, BufferPool, PhaseClock], ChunkSource]

DEFAULT_DEPTH = 4
DEFAULT_TIMEOUT = 120.0


def _no_progress(done: int, total: int) -> None:
    """Default progress callback: do nothing."""


def _nothing_to_watch() -> None:
    """Default watch: a transfer nobody calls off."""


@dataclass
class EngineResult:
    """What one leader's engine did.

    Attributes:
        digest: hex xxh3-128 of the bytes this node wrote (``None`` if its write failed).
        source_digest: hex digest of the source as read (root only).
        source_size: bytes the source held (root only; a stream's size once it ended).
        wire_bytes: bytes of the messages that came through this node (each chunk once,
            encoded and framed as it travelled).
        read_error: why reading the source failed (root only).
        write_error: why writing the local copy failed.
        phases: seconds per phase (read, digest, wait, write, transfer).
    """

    digest: str | None = None
    source_digest: str | None = None
    source_size: int | None = None
    wire_bytes: int = 0
    read_error: str | None = None
    write_error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, source: ChunkSource | None, writer: ChunkWriter, trust_source: bool,
           wire_bytes: int, clock: PhaseClock) -> EngineResult:
        """What a leader's ``source`` (root only, or every node's where each reads a
        share) and ``writer`` did; with ``trust_source``, the node wrote the very buffers
        its reader digested: the source's digest is the copy's too.  Where chunks carry
        their readers' digests, the source's digest is the list of those."""
        digest = writer.digest
        if source is not None and trust_source and writer.error is None:
            digest = source.digest
        return cls(digest=digest,
                   source_digest=(writer.signed_digest if writer.signed_digest is not None
                                  else source.digest if source is not None else None),
                   source_size=source.bytes_read if source is not None else None,
                   wire_bytes=wire_bytes,
                   read_error=source.error if source is not None else None,
                   write_error=writer.error, phases=dict(clock.seconds))


def _pool(depth: int, schedule: Schedule, count: int | None, capacity: int) -> BufferPool:
    """Buffers for ``depth`` chunks in flight: at least the schedule's least, at least
    two, and no more than the chunks (``count``; ``None``: a stream): they would only
    hold memory."""
    depth = max(depth, schedule.min_depth())
    return BufferPool(max(2, min(depth, count if count is not None else depth)), capacity)


def _next_from_source(source: ChunkSource | None, outbox: Outbox, timeout: float,
                      excused: Callable[[], bool], clock: PhaseClock) -> tuple[int, int]:
    """The ``source``'s next chunk; while it has none ready, the oldest sends free a
    buffer for it (``excused``: the source's wait is the writer's doing)."""
    assert source is not None
    while (item := source.ready_chunk()) is None:
        if outbox:
            outbox.retire(block=True)
            continue
        started = time.perf_counter()
        try:
            return source.next_chunk(timeout, excused=excused)
        finally:
            clock.add("wait", time.perf_counter() - started)
    return item


def _writer(plan: Plan, schedule: Schedule, sink: CopySink | None, pool: BufferPool,
            clock: PhaseClock, framing: Framing, digest_writes: bool, corrupt: bool,
            resume: Resume | None) -> tuple[ChunkWriter, bool]:
    """This node's writer (a re-formed run's: the earlier one, going on), and whether
    the source's digest is the copy's too.  The root writes the very bytes it read (and
    digested) unless they were encoded: then it decodes them, as every node does, and
    digests what it wrote; so it does when the test hook damages what it writes, and
    where each chunk carries its reader's digest."""
    encoded = plan.codec != "none" or corrupt
    trust = schedule.is_root and not encoded and not framing.signed
    if resume is not None:
        resume.writer.resume(pool)
        return resume.writer, trust
    writer = ChunkWriter(plan, sink, pool, clock, framing,
                         digests=digest_writes and (encoded or not schedule.is_root),
                         codec=make_codec(plan.codec), corrupt=corrupt,
                         in_order=schedule.in_file_order)
    return writer, trust


@dataclass(frozen=True)
class Resume:
    """Where a run re-formed after a lost node (:mod:`mpistage.engine.recovery`) goes on:
    it starts at chunk ``first``; chunks before ``local_until`` come from the engine's
    source (the root's file, or this node's own copy read back), the rest from the
    parent; only chunks from ``write_from`` on are written, by the ``writer`` of the
    earlier run, so the copy and its digest go on where they stopped.  Without one the
    root reads every chunk and the others receive every chunk."""

    first: int
    local_until: int | None
    write_from: int
    writer: ChunkWriter


class Engine:
    """Moves one file through one schedule on one leader: :meth:`transfer`, then
    :meth:`finish_writes`; :meth:`close` in any case.  Its parts: the root's
    ``source``, the :class:`~mpistage.engine.inbox.Inbox` (receives from the parent),
    the :class:`~mpistage.engine.outbox.Outbox` (sends to the children), the ``writer``
    (this node's copy), and the :class:`~mpistage.engine.waits.Waits` of them all."""

    def __init__(self, plan: Plan, schedule: Schedule, sink: CopySink | None, *,
                 source: SourceFactory, depth: int = DEFAULT_DEPTH,
                 progress: ProgressCallback = _no_progress, timeout: float = DEFAULT_TIMEOUT,
                 peer_name: Callable[[int], str] = lambda rank: f"rank {rank}",
                 digest_writes: bool = True, corrupt: bool = False,
                 resume: Resume | None = None,
                 watch: Callable[[], None] = _nothing_to_watch) -> None:
        """
        Args:
            timeout: seconds any one wait may go without progress before the transfer
                counts as stalled (must exceed one chunk's time on the slowest link).
            peer_name: names a rank of the schedule's communicator for messages.
            source: makes the root's source of chunks.
            digest_writes: the writer digests what it writes (off where the sink checks
                the bytes itself, as a tree's does per file).
            corrupt: test hook: flip a byte of the first chunk before writing it.
            watch: called at every wake-up of the engine's waits and once a chunk
                (:meth:`mpistage.engine.recovery.Rounds.watch`: signs of life, and whether the
                round was called off, which it raises as a :class:`Stalled`).
            resume: where a run re-formed after a lost node goes on (:class:`Resume`).
        """
        self.plan, self.schedule, self.progress, self.timeout = plan, schedule, progress, timeout
        self._watch, self.peer_name = watch, peer_name
        self.clock = PhaseClock()
        self.framing = framing = framing_for(plan)
        self._count = framing.chunk_count()  # None: a stream, until its last frame
        self.pool = _pool(depth, schedule, self._count, framing.capacity)
        first, local_until, self._write_from = ((resume.first, resume.local_until,
                                                 resume.write_from) if resume else (0, None, 0))
        self._first, self._local_until = first, local_until
        reads = schedule.is_root or schedule.every_node_reads or (local_until or 0) > first
        self.source = source(plan, self.pool, self.clock) if reads else None
        self.writer, self._trust_source_digest = _writer(
            plan, schedule, sink, self.pool, self.clock, framing, digest_writes, corrupt, resume)
        #: The children a stalled send was for (a stalled receive accuses nobody: its
        #: parent may only be waiting on someone else; see :mod:`mpistage.engine.recovery`).
        self.suspects: list[int] = []
        self.waits = Waits(plan, schedule, self.clock, timeout, self._on_wake, self._blame)
        self.outbox = Outbox(schedule, self.pool, framing, self.waits, watch, self._blame,
                             Progress(progress if schedule.is_root else _no_progress,
                                      first * plan.chunk_size,
                                      0 if plan.stream else plan.size))
        self.inbox = Inbox(schedule, self.pool, framing, self.waits, self.outbox,
                           lambda: buffer_back(self.writer, timeout, watch), peer_name,
                           # from the parent, in this node's order (lazily: a stream's)
                           chunks=(k for k in schedule.order(max(first, local_until or 0),
                                                             self._count)
                                   if not self._is_local(k)),
                           first=max(first, local_until or 0))
        self._started = self._cpu_started = 0.0

    def transfer(self) -> EngineResult:
        """Move every chunk through the schedule (call once).

        Returns once every chunk has been received and forwarded; on the root the
        result then holds the source's digest or why reading failed.  This node's own
        writes may still be under way: :meth:`finish_writes` waits for them.
        """
        self._started, self._cpu_started = time.perf_counter(), time.process_time()
        self.writer.start()
        if self.source is not None:
            self.source.first, self.source.until = self._first, self._local_until
            if self._local_until is None:
                self.source.wanted = self.schedule.reads
            self.source.ahead = self.schedule.read_ahead
            self.source.start()
        try:
            for k in self.schedule.order(self._first, self._count):
                got, index = (_next_from_source(self.source, self.outbox, self.timeout,
                                                lambda: holds_up(self.writer, self.timeout),
                                                self.clock)
                              if self._is_local(k) else self.inbox.next())
                assert got == k, f"chunk {got} came where chunk {k} was due"
                last = self._dispatch(k, index)
                self.outbox.retire(block=False)
                self._watch()
                if last and self._count is None:  # a stream's last frame
                    break
            self.inbox.cancel()
            while self.outbox:
                self.outbox.retire(block=True)
            if self.plan.stream and self.source is not None:
                self.outbox.progress.ended()  # now the total is known
        except BaseException:
            self.close()
            raise
        finally:
            if self.source is not None:
                self.source.join(timeout=self.timeout)
        return self.result()

    def _is_local(self, k: int) -> bool:
        """Whether chunk ``k`` comes from this node's source rather than its parent."""
        return self.source is not None and (self.schedule.reads(k) if self._local_until is None
                                            else k < self._local_until)

    def _dispatch(self, k: int, index: int) -> bool:
        """Chunk ``k`` is here, in order: forward it (unless it went on as it arrived,
        :meth:`Inbox._wait_forwarding`) and hand it to the writer (unless this node's
        copy was abandoned); whether it was the last."""
        if k in self.inbox.early:
            self.inbox.early.discard(k)
            last = self.outbox.frame(k, index)[2]
        else:
            last = self.outbox.forward(k, index)
        if k >= self._write_from and not self.writer.abandoned:
            self.writer.put(k, index)  # the writer lets go of the buffer for the dispatch
        else:
            self.pool.release(index)
        return last

    def _on_wake(self) -> None:
        """A wait woke without its end: move the sends on, and look around."""
        self.outbox.advance()
        self._watch()

    def _blame(self, receiving: bool, failed: Forward | None) -> str:
        """Who a stalled wait was on; a stalled (or ``failed``) send's children become
        :attr:`suspects`."""
        self.suspects = [] if receiving else self.outbox.suspects(failed)
        return stalled_on(self.schedule, self.peer_name, receiving, self.inbox.awaited,
                          self.suspects)

    def finish_writes(self, heartbeat: Callable[[Hashable], None] = no_heartbeat) -> EngineResult:
        """Wait for this node's writes to end, as long as they make progress (each
        change goes to ``heartbeat``, so rank 0 knows this node is alive); a write that
        stands still for the timeout abandons this node's copy."""
        self.writer.finish(self.timeout, heartbeat)
        self.pool.close()
        self.clock.add("transfer", time.perf_counter() - self._started)
        # The process's CPU (every thread) over the same span: a sweep's evidence of
        # runs bound by this machine's cores rather than by the links.
        self.clock.add("cpu", time.process_time() - self._cpu_started)
        return self.result()

    def result(self) -> EngineResult:
        """What this engine did so far (complete after :meth:`finish_writes`)."""
        return EngineResult.of(self.source, self.writer, self._trust_source_digest,
                               self.outbox.wire_bytes, self.clock)

    def close(self) -> None:
        """Stop the writer and wake the reader (idempotent).  The writer may still be
        inside a write that never returns; ``Sink.discard`` makes that harmless."""
        self.writer.close()
        self.pool.close()
        if self.source is not None:
            self.source.stop()
