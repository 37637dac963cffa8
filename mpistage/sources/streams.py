"""A stream as the source: standard input (``mpistage - DEST``), read to its end.

Nobody knows a stream's size in advance: the root reads chunk after chunk until the
stream ends, and the last frame says so (:mod:`mpistage.engine.frames`); the digest covers
exactly the bytes read, and every node learns the size with the digest at the end.

A stream cannot be read twice, so the bytes the root looks at before the transfer (a
sample for ``--compress auto``) are kept and sent first (:meth:`StreamInput.peek`).

A writer that dies mid-stream closes the pipe just as one that finished does: the
stream simply ends there, and every node holds exactly the bytes that came.  Only the
shell knows the difference (``set -o pipefail``); ``--expect-size`` makes a stream that
ends short of the announced size fail instead (see :func:`check_size`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import BinaryIO

from .. import interrupt
from ..digest import new_digest
from ..engine.buffers import Buffer, BufferPool, PhaseClock, pieces
from ..engine.reader import ChunkSource
from ..errors import UsageError
from ..plan import Plan, SourceInfo, check_template, source_label

#: The source name that means standard input.
STDIN = "-"
#: The size the model plans a stream for when ``--expect-size`` does not say.
ASSUMED_STREAM_SIZE = 1 << 30


class StreamInput:
    """A binary stream read once: first what :meth:`peek` kept, then the rest.

    Attributes:
        name: the source's name in the plan and the report (``-``: standard input).
    """

    name = STDIN

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._kept = b""

    def close(self) -> str | None:
        """The stream was read to its end: why it must not be kept, or ``None``."""
        return None

    def discard(self) -> None:
        """Reading ended, cleanly or not: release what the stream holds (idempotent)."""

    def peek(self, size: int) -> bytes:
        """Up to ``size`` bytes from the start (fewer only if the stream ends first);
        :meth:`readinto` returns them again."""
        while len(self._kept) < size:
            more = self.stream.read(size - len(self._kept))
            if not more:
                break
            self._kept += more
        return self._kept[:size]

    def readinto(self, view: Buffer) -> int:
        """Fill ``view`` until it is full or the stream ends; the bytes filled."""
        done = 0
        if self._kept:
            done = min(len(self._kept), len(view))
            view[:done] = self._kept[:done]
            self._kept = self._kept[done:]
        while done < len(view):
            got = self.stream.readinto(view[done:])
            if not got:
                break
            done += got
        return done


class FromCommand:
    """``--from-cmd CMD``: the stream is a command's standard output, run on the root.

    It needs no launcher to forward standard input (MPICH's hydra cannot hold back a
    fast producer: it ends the job when rank 0's input pipe is full), and unlike a pipe
    into ``mpistage -`` its exit status is known: a producer that fails or dies
    mid-stream fails the run, and no node keeps what it sent.
    """

    def __init__(self, command: str) -> None:
        if not command.strip():
            raise UsageError("--from-cmd command is empty")
        self.command = command

    def open(self) -> StreamInput:
        return CommandOutput(self.command)


class CommandOutput(StreamInput):
    """A :class:`FromCommand`'s output, read as it comes; its exit status at the end."""

    def __init__(self, command: str) -> None:
        import subprocess  # only a --from-cmd run pays for it

        self.command = command
        self.name = f"the output of {command!r}"
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE,
                                        start_new_session=True)
        interrupt.register_process(self.process.pid)
        assert self.process.stdout is not None
        super().__init__(self.process.stdout)

    def close(self) -> str | None:
        self.stream.close()
        status = self.process.wait()
        interrupt.forget_process(self.process.pid)
        if status == 0:
            return None
        how = (f"was killed by {interrupt.signal_name(-status)}" if status < 0
               else f"exited with status {status}")
        return f"--from-cmd {self.command!r} {how}; nothing it sent is kept"

    def discard(self) -> None:
        """Kill the producer if it still runs (the transfer ended without its output),
        and reap it."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                pass
            self.process.wait()
        interrupt.forget_process(self.process.pid)
        self.stream.close()


def describe_stream(dest: str, expect_size: int | None, name: str = STDIN) -> SourceInfo:
    """A stream's description: size as announced (or 0), mode as a new file's, now."""
    check_template(dest)
    return SourceInfo(source=name, size=expect_size or 0, mode=0o666,
                      mtime_ns=time.time_ns(), dest=dest, stream=True)


class StreamSource(ChunkSource):
    """The root's source for a stream: chunks from a :class:`StreamInput`, to its end
    (the engine takes ``functools.partial(StreamSource, stream=…)`` as its source)."""

    def __init__(self, plan: Plan, pool: BufferPool, clock: PhaseClock, *,
                 stream: StreamInput) -> None:
        super().__init__(plan, pool, clock)
        self.stream = stream
        self._digest = new_digest()

    def _fill(self, k: int, view: Buffer) -> int:
        started = time.perf_counter()
        try:
            got = self.stream.readinto(view)
        except OSError as exc:
            self.error = f"reading {source_label(self.plan.source)} failed: {exc.strerror or exc}"
            return 0
        finally:
            self.clock.add("read", time.perf_counter() - started)
        started = time.perf_counter()
        for piece in pieces(view[:got]):
            self._digest.update(piece)
        self.clock.add("digest", time.perf_counter() - started)
        return got

    def _finish(self) -> None:
        self.error = self.stream.close()
        if self.error is None:
            self.digest = self._digest.hexdigest()

    def _close(self) -> None:
        self.stream.discard()

    def stop(self) -> None:
        self.stream.discard()  # a producer is killed: the read it blocks returns


def is_stream(source: object) -> bool:
    """Whether :func:`mpistage.stage`'s ``source`` names a stream: ``"-"`` (standard
    input), a :class:`FromCommand`, or a binary file object (anything with ``readinto``)."""
    return source == STDIN or isinstance(source, FromCommand) or hasattr(source, "readinto")


def open_stream(source: object) -> StreamInput:
    """The :class:`StreamInput` for a ``source`` that :func:`is_stream` (root only)."""
    if source == STDIN:
        return StreamInput(sys.stdin.buffer)
    if isinstance(source, FromCommand):
        return source.open()
    stream = StreamInput(source)  # type: ignore[arg-type]
    stream.name = str(getattr(source, "name", "a stream"))  # an open file's path
    return stream
