"""Progress on a terminal: bytes (and a tree's files) done, throughput and ETA, redrawn
in place on stderr.

The library takes any ``progress(done, total)`` callable (no-op by default); this is the
one the CLI uses on the root.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..units import format_bytes, format_rate


class TerminalProgress:
    """Redraws one status line at most every ``interval`` seconds, after ``delay`` seconds
    (short transfers stay silent), and ends the line when the transfer completes."""

    def __init__(self, stream: TextIO = sys.stderr, *, interval: float = 0.25, delay: float = 1.0):
        self.stream = stream
        self.interval = interval
        self.delay = delay
        self._started = time.monotonic()
        self._last = 0.0
        self._shown = False
        self._files: tuple[int, int] | None = None

    def files(self, done: int, total: int) -> None:
        """Files done of the total (a tree's run tells them before the bytes)."""
        self._files = (done, total)

    def __call__(self, done: int, total: int) -> None:
        """``total`` 0 with bytes done: a stream, whose size is known only at its end
        (then ``done == total``): bytes and rate, no percentage or ETA."""
        now = time.monotonic()
        elapsed = now - self._started
        if total == 0 and done > 0:
            self._stream(done, elapsed, now)
            return
        finished = done >= total
        if not finished and (elapsed < self.delay or now - self._last < self.interval):
            return
        if finished and not self._shown:
            return
        self._last = now
        self._shown = True
        percent = 100.0 * done / total if total else 100.0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {(total - done) / rate:5.1f} s" if rate > 0 and not finished else " " * 11
        files = f"  {self._files[0]} / {self._files[1]} files" if self._files else ""
        line = (
            f"\r  {format_bytes(done):>10} / {format_bytes(total)}  {percent:5.1f} %"
            f"{files}  {format_rate(done, elapsed):>12}  {eta}"
        )
        self.stream.write(line + ("\n" if finished else ""))
        self.stream.flush()

    def _stream(self, done: int, elapsed: float, now: float) -> None:
        if elapsed < self.delay or now - self._last < self.interval:
            return
        self._last = now
        self._shown = True
        self.stream.write(f"\r  {format_bytes(done):>10} so far (size unknown)  "
                          f"{format_rate(done, elapsed):>12}")
        self.stream.flush()
