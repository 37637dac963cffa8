"""``--pipe CMD``: on every node the stream goes to a command's standard input.

Where the seed tools' users write ``nettee ... | tar x -C /scratch``, mpistage runs the
command itself on each node (through the shell, as the rank's user, with ``{node}``,
``{host}`` and ``{rank}`` expanded) and writes the chunks to its input as they arrive,
digesting them as it goes.  A node's copy succeeds when every byte was delivered, the
digest matched the source's and the command exited 0.

A command cannot un-see bytes, so the guarantee a file's temp-and-rename gives becomes
this: the command sees the end of its input only when the stream arrived whole and
verified.  On any failure (a damaged chunk, a source that failed, a signal) it is killed
(SIGKILL, its whole process group) while its input is still open, so a ``tar x`` never
mistakes a cut stream for a whole one.

A command that exits early makes this node's writes fail at once (a broken pipe); one
that stops reading makes them block, and the engine gives up on this node after half the
``--timeout`` (:meth:`mpistage.engine.writer.ChunkWriter.abandon`).  Either way the node goes on
forwarding, so the nodes after it in the chain still get every byte.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from collections import deque

from .. import interrupt
from ..errors import CommandFailed
from .file import _WRITE_SLICE  # the same slices: progress shows during a large chunk

#: Lines of the command's standard error kept for the summary.
STDERR_LINES = 5
_STDERR_LINE_MAX = 300


class PipeSink:
    """Writes the stream to a command's standard input (see the module's doc).

    Same protocol as :class:`mpistage.sinks.file.Sink`: one thread writes, then one commits;
    :meth:`discard` may come at any time, from any thread.

    Attributes:
        final_path: how messages name where the bytes go ("the input of 'CMD'").
        stuck_hint: why a write may stand still, for the message when one does.
    """

    stuck_hint = "the command does not read its input?"
    temp_path = None

    def __init__(self, command: str) -> None:
        self.command = command
        self.final_path = f"the input of {command!r}"
        self.bytes_written = 0
        self.progress = 0
        self.timings: dict[str, float] = {}
        self._tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._lock = threading.Lock()
        self._killed = False
        self._closed = False  # finished or discarded
        # Its own session: a kill reaches the shell and everything it started.
        self.process = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)
        interrupt.register_process(self.process.pid)
        assert self.process.stdin is not None and self.process.stderr is not None
        self._stdin = self.process.stdin.fileno()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True,
                                               name="mpistage-pipe-stderr")
        self._stderr_reader.start()

    def _read_stderr(self) -> None:
        """Keep the last lines of the command's standard error (and keep the pipe
        drained, so that a chatty command never blocks on it)."""
        stream = self.process.stderr
        assert stream is not None
        try:
            for line in iter(stream.readline, b""):
                self._tail.append(line.rstrip(b"\n")[:_STDERR_LINE_MAX].decode(errors="replace"))
        except (OSError, ValueError):
            pass  # closed by _release: the command left something running that holds it
        finally:
            stream.close()

    def _release(self) -> None:
        """The command ended: let its stderr reach its end (a background process it left
        may hold it open: not for long), and reap."""
        self._stderr_reader.join(5.0)
        interrupt.forget_process(self.process.pid)

    def stderr_tail(self) -> str:
        """The last lines the command wrote to its standard error, ``|``-joined."""
        return " | ".join(line for line in self._tail if line.strip())

    def _outcome(self, waited: float, after: str = "") -> str:
        """How the command ended (waiting up to ``waited`` seconds), ``after`` what,
        with its stderr."""
        try:
            status = self.process.wait(waited)
        except subprocess.TimeoutExpired:
            said = "is still running"
        else:
            said = (f"was killed by {interrupt.signal_name(-status)}" if status < 0
                    else f"exited with status {status}")
        self._stderr_reader.join(0.5)
        tail = self.stderr_tail()
        return f"{self.command!r} {said}{after}" + (f"; its stderr ended: {tail}" if tail else "")

    def write(self, data: memoryview) -> None:
        """Append ``data`` to the command's input.

        Raises:
            OSError: the command stopped reading (``EPIPE``: it exited) or was killed.
        """
        view = memoryview(data).cast("B")
        while view:
            try:
                written = os.write(self._stdin, view[:_WRITE_SLICE])
            except BrokenPipeError:
                raise OSError(errno.EPIPE, self._outcome(
                    1.0, f" after taking {self.bytes_written} bytes")) from None
            except (OSError, ValueError):
                if self._killed:
                    raise OSError(errno.ECANCELED, "the copy was abandoned") from None
                raise
            self.bytes_written += written
            self.progress += written
            view = view[written:]

    def finish(self) -> None:
        """The stream arrived whole and verified: end the command's input and wait for
        it to exit (as long as the caller's watchdog sees it alive).

        Raises:
            CommandFailed: the command did not exit 0.
        """
        with self._lock:
            if self._closed:
                raise CommandFailed(f"{self.command!r} was stopped")
            self._closed = True
            self.process.stdin.close()  # type: ignore[union-attr]
        status = self.process.wait()
        self._release()
        if status != 0:
            raise CommandFailed(self._outcome(0.0))

    def discard(self) -> None:
        """Kill the command (its process group) before its input ends, unless it
        already exited; reap it (idempotent; safe while a write blocks; a no-op after
        :meth:`finish`)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.process.poll() is None:
                self._killed = True
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            pass
        self._release()
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
