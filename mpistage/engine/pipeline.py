"""The hot path: one engine that runs every schedule, chunk by chunk.

Per leader, three activities overlap, each in its own unit:

* the **source** (:mod:`mpistage.sources.source`, root only) reads chunk k+1, k+2 … ahead into
  free buffers in a thread and digests the file as it goes;
* the **engine** (this module, the main thread) makes every MPI call (so
  ``MPI_THREAD_FUNNELED`` is enough): it takes chunk k from the source or receives it
  from the schedule's parent, forwards it to the schedule's children with non-blocking
  sends, keeps several receives posted ahead, and hands it to the writer;
* the **writer** (:mod:`mpistage.engine.writer`) writes chunk k to the sink in a thread and
  digests what it wrote.

A small fixed pool of buffers (:mod:`mpistage.engine.buffers`) bounds memory whatever the file
size.  A node whose write fails, or hangs, keeps receiving and forwarding, so the nodes
after it still get the file.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from mpi4py import MPI

from ..errors import Stalled
from ..plan import Plan
from .buffers import Buffer, BufferPool, PhaseClock
from .codec import make as make_codec
from .forward import Forward, HeldBack, suspects
from .frames import framing_for
from .liveness import no_heartbeat
from .reader import ChunkSource
from .schedules import Schedule
from .waiting import Pace, poll, poll_any
from .writer import ChunkWriter, CopySink

#: ``progress(bytes_done, bytes_total)``; called on the root only.
ProgressCallback = Callable[[int, int], None]
#: Makes the root's source (:mod:`mpistage.sources`: one file's, a tree's, a stream's).
SourceFactory = Callable[[Plan, BufferPool, PhaseClock], ChunkSource]

DEFAULT_DEPTH = 4
#: Sends in flight to one child at most (:class:`mpistage.engine.forward.Forward`).  One
#: cost throughput at large chunks while ranks slept long between polls (a chain to 8
#: hosts at 100 Mbit/s, 64 MiB in 256 KiB chunks: 6.86 s, 5.83 s with two in flight);
#: with pauses bounded by :data:`SLEEP_BYTES`, 5.82-6.06 s (point-to-point 5.61 s).
#: Two are unsafe: a second send to a child that died blocks inside ``MPI_Isend`` until
#: MPICH's retry limit, again at every retry, and its parent, silent meanwhile, was
#: counted lost with it (a randomised kill, seed 614042548, run 22).
SENDS_IN_FLIGHT = 1
#: Bytes the links may carry while this rank sleeps in a wait (:meth:`Engine._wait`'s
#: longest pause is the time they take).  MPI's TCP transports move a message's data
#: only inside MPI calls (MPICH over libfabric's tcp provider progresses manually), so
#: a pause longer than the socket buffers take to drain (a sender) or fill (a receiver)
#: idles the link.  A chain to 8 hosts at 100 Mbit/s, 64 MiB in 256 KiB chunks: pauses
#: up to 20 ms 6.85 s, 5 ms 5.86 s, 2 ms 5.77 s, 0.5 ms 5.83 s; CPU per rank 0.6, 0.6,
#: 0.7, 1.0 s (point-to-point 5.61 s).  64 KiB take 5 ms at 100 Mbit/s.
SLEEP_BYTES = 64 * 1024
#: Bytes/s to take a link for when the plan does not know (a small file is sent without
#: probing the link first): pauses of 0.5 ms at most.
UNKNOWN_LINK_RATE = 125e6
DEFAULT_TIMEOUT = 120.0


def longest_pause(chunk: int, message: int, chunk_seconds: float, link_rate: float,
                  collective: bool = False) -> float:
    """How long a rank may sleep in a wait: the time the links take to carry
    :data:`SLEEP_BYTES` (or, for a ``collective``, an eighth of MPI's largest ``message``
    if less: its next step is begun only when this rank wakes), by ``link_rate`` (the
    plan's, known from the start: a rank waiting for its first chunk far down a chain
    would otherwise sleep ever longer and see it late, hop after hop; 0:
    :data:`UNKNOWN_LINK_RATE`) and by ``chunk_seconds`` (the pace of such waits, 0
    unknown: a chunk's wait is about as long as the link needs for it); the shorter.

    Point-to-point sends wake no more often: a message up to a socket buffer's size is in
    the kernel once posted, and a larger one keeps :data:`SLEEP_BYTES` queued there.  An
    eighth of a message made a relaying rank wake ~6 times per 64 KiB chunk at 100 Mbit/s
    (8 hosts, 64 MiB: 6300 wake-ups, 1.11-1.17 s of CPU; with 64 KiB 3100, 0.74-0.93 s,
    transfer 5.67 s either way; at 1 Gbit/s, 256 MiB in 1 MiB chunks, 1.03x p2p)."""
    wake = min(SLEEP_BYTES, message / 8) if collective else SLEEP_BYTES
    by_link = wake / (link_rate or UNKNOWN_LINK_RATE)
    return min(by_link, chunk_seconds * min(1.0, wake / chunk)) if chunk_seconds else by_link


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


class Engine:
    """Moves one file through one schedule on one leader: :meth:`transfer`, then
    :meth:`finish_writes`; :meth:`close` in any case."""

    def __init__(
        self,
        plan: Plan,
        schedule: Schedule,
        sink: CopySink | None,
        *,
        depth: int = DEFAULT_DEPTH,
        progress: ProgressCallback = _no_progress,
        timeout: float = DEFAULT_TIMEOUT,
        peer_name: Callable[[int], str] = lambda rank: f"rank {rank}",
        source: SourceFactory,
        digest_writes: bool = True,
        corrupt: bool = False,
        first: int = 0,
        local_until: int | None = None,
        write_from: int = 0,
        writer: ChunkWriter | None = None,
        watch: Callable[[], None] = _nothing_to_watch,
    ) -> None:
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
            first, local_until, write_from, writer: a run re-formed after a lost node
                (:mod:`mpistage.engine.recovery`) starts at chunk ``first``; chunks before
                ``local_until`` come from ``source`` (the root's file, or this node's
                own copy read back), the rest from the parent; only chunks from
                ``write_from`` on are written, by the ``writer`` of the earlier run, so
                the copy and its digest go on where they stopped.  By default the root
                reads every chunk and the others receive every chunk.

        How chunks travel is the plan's: as they are, or framed (a stream, whose end
        only its last frame tells; chunks encoded once on the root by ``plan.codec``,
        forwarded as they came and decoded by each node's writer; :mod:`mpistage.engine.frames`).
        """
        self.plan = plan
        self.schedule = schedule
        self.progress = progress
        self._watch = watch
        self.timeout = timeout
        self.peer_name = peer_name
        self.clock = PhaseClock()
        self.framing = framing_for(plan)
        self._count = self.framing.chunk_count()  # None: a stream, until its last frame
        # More buffers than chunks would only hold memory.
        depth = max(depth, schedule.min_depth())
        self.pool = BufferPool(max(2, min(depth, self._count if self._count is not None
                                          else depth)), self.framing.capacity)
        self._first, self._local_until, self._write_from = first, local_until, write_from
        reads = schedule.is_root or (local_until or 0) > first
        self.source = source(plan, self.pool, self.clock) if reads else None
        # The root writes the very bytes it read (and digested) unless they were encoded:
        # then it decodes them, as every node does, and digests what it wrote; so it does
        # when the test hook damages what it writes.
        encoded = plan.codec != "none" or corrupt
        if writer is None:
            writer = ChunkWriter(plan, sink, self.pool, self.clock, self.framing,
                                 digests=digest_writes and (encoded or not schedule.is_root),
                                 codec=make_codec(plan.codec), corrupt=corrupt)
        else:
            writer.resume(self.pool)
        self.writer = writer
        self._trust_source_digest = schedule.is_root and not encoded
        self._sends: deque[tuple[int, int, int, Forward]] = deque()  # chunk, buffer, bytes, sends
        self._recvs: deque[tuple[int, int, MPI.Request]] = deque()
        self._done_bytes = first * plan.chunk_size
        self._wire_bytes = 0
        #: The children a stalled send was for (a stalled receive accuses nobody: its
        #: parent may only be waiting on someone else; see :mod:`mpistage.engine.recovery`).
        self.suspects: list[int] = []
        self._awaited = first  # the chunk a receive is waiting for
        self._early: set[int] = set()  # chunks forwarded as they arrived, ahead of their turn
        self._started = 0.0
        self._cpu_started = 0.0
        # How long waiting for a chunk, and for a send to finish, has been taking.
        self._receive_pace, self._send_pace = Pace(), Pace()

    # -- the writer, seen from the MPI loop -----------------------------------------------

    def _writer_holds_up(self) -> bool:
        """Whether the writer explains a wait for buffers: it is inside a write.  One
        write that lasts half the timeout abandons this node's copy (a dead disk, a hung
        file server) and frees the buffers.  Half, because while this node's buffers are
        all with the writer it posts no receives, and its parent counts that against the
        same timeout: this node must take data again before its parent gives up on it."""
        if self.writer.stuck(after=self.timeout / 2):
            self.writer.abandon(self.timeout / 2)
        return self.writer.busy and not self.writer.abandoned

    def _buffer_back_from_writer(self) -> int:
        """Every buffer is with the writer: wait for one to come back."""
        deadline = time.monotonic() + self.timeout
        while True:
            index = self.pool.take(block=True, timeout=min(0.1, self.timeout))
            if index is not None:
                return index
            self._watch()
            if not self._writer_holds_up() and time.monotonic() >= deadline:
                raise Stalled(f"no buffer came back from the writer for {self.timeout:g} s")

    # -- main thread: all MPI calls -------------------------------------------------------

    def _wait(self, requests: list[MPI.Request], receiving: bool,
              on: Forward | None = None, any_of: bool = False,
              status: MPI.Status | None = None) -> int:
        """Wait for ``requests`` (``on``'s, if they are one chunk's sends; with
        ``any_of``, for one of them: its index is returned; ``status``: a receive's,
        or the one that arrived) without spinning, at the pace such waits have had
        (see :mod:`mpistage.engine.waiting`).

        Raises:
            Stalled: no progress within the timeout, or MPI reported a lost peer; the
                message names the peer (node and host) the transfer was waiting on.
        """
        started = time.perf_counter()
        pace = self._receive_pace if receiving else self._send_pace
        longest = self._longest_pause(pace)
        try:
            if any_of:
                arrived = poll_any(requests, self.timeout, expected=pace.expected,
                                   on_wake=self._on_wake, longest=longest, status=status)
                done = arrived is not None
            else:
                done, arrived = poll(requests, self.timeout, expected=pace.expected,
                                     on_wake=self._on_wake, longest=longest,
                                     statuses=None if status is None else [status]), 0
        except MPI.Exception as exc:
            self._suspect(receiving, failed=on)
            raise Stalled(f"{self._stalled_on(receiving)}: {exc.Get_error_string()}") from exc
        finally:
            waited = time.perf_counter() - started
            self.clock.add("wait", waited)
            pace.add(waited)
        if not done:
            self._suspect(receiving)
            raise Stalled(f"{self._stalled_on(receiving)} for {self.timeout:g} s")
        return arrived or 0

    def _longest_pause(self, pace: Pace) -> float:
        """:func:`longest_pause` for this plan, schedule and kind of wait."""
        chunk = self.plan.chunk_size
        return longest_pause(chunk, self.schedule.message_bytes(chunk), pace.expected,
                             self.plan.link_rate,
                             collective=not self.schedule.point_to_point)

    def _suspect(self, receiving: bool, failed: Forward | None = None) -> None:
        """Name the children a stalled or failed send was for (:func:`suspects`)."""
        children = getattr(self.schedule, "children", None) or []
        self.suspects = [] if receiving else suspects(
            [f for *_, f in self._sends], children, failed)

    def _stalled_on(self, receiving: bool) -> str:
        parent = self.schedule.parent_for(self._awaited)
        children = getattr(self.schedule, "children", None)
        if receiving and parent is not None:
            return f"no data from {self.peer_name(parent)}"
        if not receiving and (self.suspects or children):
            return f"{', '.join(self.peer_name(c) for c in self.suspects or children)} took no data"
        return "MPI's broadcast made no progress"

    def _on_wake(self) -> None:
        """A wait woke without its end: move the sends on, and look around."""
        self._advance_sends()
        self._watch()

    def _advance_sends(self) -> None:
        """Post each chunk's next send where the last one is done (also while waiting
        for something else, so the next child need not wait for that), never ahead of
        the chunk before it, and never more than :data:`SENDS_IN_FLIGHT` to a child."""
        held = HeldBack(SENDS_IN_FLIGHT)
        for *_, forward in self._sends:
            self._advance(forward, held.peers)
            held.add(forward)

    def _advance(self, forward: Forward, blocked: set[int | None] | None = None) -> bool:
        """:meth:`Forward.advance`; a send that could not even be posted (MPI's error
        after :data:`mpistage.mpi_library.SEND_RETRIES`: its peer is gone) is a stall."""
        try:
            return forward.advance(blocked or frozenset())
        except MPI.Exception as exc:
            self._suspect(receiving=False, failed=forward)
            raise Stalled(f"{self._stalled_on(False)}: {exc.Get_error_string()}") from exc

    def _retire_sends(self, block: bool) -> None:
        """Move every chunk's sends on and release the buffers of chunks sent to all
        children, oldest first; with ``block``, wait until the oldest chunk is."""
        self._advance_sends()
        if block and self._sends:
            oldest = self._sends[0][3]
            while not self._advance(oldest):
                if not oldest.requests:  # its next send could not be posted yet (MPI
                    time.sleep(0.001)    # retried it up to a second): still alive
                    self._watch()
                self._wait(oldest.requests, receiving=False, on=oldest)
        while self._sends and self._sends[0][3].done:
            _, index, length, _ = self._sends.popleft()
            self.pool.release(index)
            self._sent(length)

    def _sent(self, length: int) -> None:
        """``length`` source bytes left this node; the root tells the progress callback
        (a stream's total is unknown, 0, until it ended)."""
        self._done_bytes += length
        if self.schedule.is_root:
            self.progress(self._done_bytes, 0 if self.plan.stream else self.plan.size)

    def _next_from_source(self) -> tuple[int, int]:
        assert self.source is not None
        while (item := self.source.ready_chunk()) is None:
            if self._sends:
                self._retire_sends(block=True)  # frees a buffer for the reader
                continue
            started = time.perf_counter()
            try:
                return self.source.next_chunk(self.timeout, excused=self._writer_holds_up)
            finally:
                self.clock.add("wait", time.perf_counter() - started)
        return item

    def _next_from_parent(self, next_post: int) -> tuple[int, int, int]:
        """Keep receives posted ahead; return the oldest once it arrived."""
        count = self._count
        while (count is None or next_post < count) and len(self._recvs) < len(self.pool.buffers):
            index = self.pool.take(block=False)
            if index is None:
                if self._recvs:
                    break
                if self._sends:
                    self._retire_sends(block=True)
                    continue
                index = self._buffer_back_from_writer()
            view = self.framing.receive_space(self.pool.buffers[index], next_post)
            self._recvs.append((next_post, index, self.schedule.post_receive(view, next_post)))
            next_post += 1
        k, index, request = self._recvs.popleft()
        self._awaited = k
        if self.schedule.forwards_as_received:
            self._wait_forwarding(k, index, request)
        else:
            status = MPI.Status()
            self._wait([request], receiving=True, status=status)
            self._check_whole(k, index, status)
        return k, index, next_post

    def _check_whole(self, k: int, index: int, status: MPI.Status) -> None:
        """Chunk ``k`` arrived whole in buffer ``index``.

        Raises:
            Stalled: it arrived short (its sender was killed in mid-message): the chunk
                is neither forwarded nor written, and the next round sends it again.
        """
        if not self.schedule.point_to_point:  # a collective's status has no count
            return
        count = status.Get_count(MPI.BYTE)
        if not self.framing.whole(self.pool.buffers[index], k, count):
            parent = self.schedule.parent_for(k)
            sender = "MPI" if parent is None else self.peer_name(parent)
            raise Stalled(f"chunk {k} from {sender} arrived cut short ({count} bytes): "
                          "its sender stopped mid-message")

    def _wait_forwarding(self, k: int, index: int, oldest: MPI.Request) -> None:
        """Wait for chunk ``k``'s receive, forwarding every later chunk the moment it
        arrives (:attr:`Schedule.forwards_as_received`: chunks that come from several
        parents; were they forwarded in order, each tree would wait for the other's
        chunks, and the pipeline would step at the pace of both trees' depths)."""
        status = MPI.Status()
        while k not in self._early:
            later = [(j, i, r) for j, i, r in self._recvs if j not in self._early]
            arrived = self._wait([oldest, *(r for *_, r in later)], receiving=True,
                                 any_of=True, status=status)
            if arrived == 0:
                self._check_whole(k, index, status)
                return
            j, i, _ = later[arrived - 1]
            self._check_whole(j, i, status)
            self._early.add(j)
            self._forward(j, i)

    def transfer(self) -> EngineResult:
        """Move every chunk through the schedule (call once).

        Returns once every chunk has been received and forwarded; on the root the
        result then holds the source's digest or why reading failed.  This node's own
        writes may still be under way: :meth:`finish_writes` waits for them.
        """
        self._started = time.perf_counter()
        self._cpu_started = time.process_time()
        self.writer.start()
        if self.source is not None:
            self.source.first, self.source.until = self._first, self._local_until
            self.source.start()
        k = self._first
        next_post = max(k, self._local_until or 0)  # the first chunk from the parent
        try:
            while self._count is None or k < self._count:
                if self._is_local(k):
                    k, index = self._next_from_source()
                else:
                    k, index, next_post = self._next_from_parent(next_post)
                last = self._dispatch(k, index)
                self._retire_sends(block=False)
                self._watch()
                k += 1
                if last:
                    break
            self._cancel_receives()
            while self._sends:
                self._retire_sends(block=True)
            if self.plan.stream and self.source is not None:
                self.progress(self._done_bytes, self._done_bytes)  # now the total is known
        except BaseException:
            self.close()
            raise
        finally:
            if self.source is not None:
                self.source.join(timeout=self.timeout)
        return self.result()

    def _is_local(self, k: int) -> bool:
        """Whether chunk ``k`` comes from this node's source rather than its parent."""
        return self.source is not None and (self._local_until is None or k < self._local_until)

    def _dispatch(self, k: int, index: int) -> bool:
        """Chunk ``k`` is here, in order: forward it (unless it went on as it arrived,
        :meth:`_wait_forwarding`) and hand it to the writer (unless this node's copy
        was abandoned); whether it was the last."""
        if k in self._early:
            self._early.discard(k)
            last = self._frame(k, index)[2]
        else:
            last = self._forward(k, index)
        if k >= self._write_from and not self.writer.abandoned:
            self.writer.put(k, index)  # the writer lets go of the buffer for the dispatch
        else:
            self.pool.release(index)
        return last

    def _frame(self, k: int, index: int) -> tuple[Buffer, int, bool]:
        """Chunk ``k``'s message as it travels, its length in source bytes, and
        whether it is the last.

        Raises:
            Stalled: a frame's header is damaged (the stream cannot go on).
        """
        buffer = self.pool.buffers[index]
        try:
            return (self.framing.message(buffer, k), self.framing.raw_length(buffer, k),
                    self.framing.is_last(buffer, k))
        except ValueError as exc:
            raise Stalled(f"chunk {k}: {exc}") from None

    def _forward(self, k: int, index: int) -> bool:
        """Post chunk ``k``'s sends to the schedule's children, as it came; its buffer
        is held by them and by the chunk's dispatch (then the writer); whether it was
        the last."""
        message, length, last = self._frame(k, index)
        self._wire_bytes += len(message)
        forward = self.schedule.post_forward(message, k)
        sends = not forward.done
        self.pool.hold(index, sends + 1)
        if sends:
            self._sends.append((k, index, length, forward))
        else:
            self._sent(length)
        return last

    def _cancel_receives(self) -> None:
        """A stream ended: the receives posted ahead for chunks that never come are
        cancelled (MPI completes a cancelled receive at once) and their buffers freed."""
        while self._recvs:
            _, index, request = self._recvs.popleft()
            request.Cancel()
            request.Wait()
            self.pool.release(index)

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
        source = self.source
        digest = self.writer.digest
        if source is not None and self._trust_source_digest and self.writer.error is None:
            digest = source.digest  # the root wrote the very buffers the reader digested
        return EngineResult(
            digest=digest,
            source_digest=source.digest if source is not None else None,
            source_size=source.bytes_read if source is not None else None,
            wire_bytes=self._wire_bytes,
            read_error=source.error if source is not None else None,
            write_error=self.writer.error,
            phases=dict(self.clock.seconds),
        )

    def close(self) -> None:
        """Stop the writer and wake the reader (idempotent).  The writer may still be
        inside a write that never returns; ``Sink.discard`` makes that harmless."""
        self.writer.close()
        self.pool.close()
        if self.source is not None:
            self.source.stop()
