"""The local copy: a private temp file beside the destination, renamed in when verified.

The final path never holds a partial file: bytes go to a temp file created exclusively
(``O_EXCL``, not following symlinks, mode 0600) in the destination's own directory, so the
closing ``rename`` is atomic and replaces whatever stood at the final path (a symlink
included) without writing through it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

from . import interrupt
from .digest import file_digest

log = logging.getLogger("mpistage.sink")

TEMP_SUFFIX = ".mpistage-tmp"


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class Sink:
    """Receives the file's bytes in order and puts them in place when asked.

    Not thread-safe: one writer thread calls :meth:`write`; the owner calls
    :meth:`commit` or :meth:`discard` after that thread has finished.
    """

    def __init__(self, final_path: str | os.PathLike[str]) -> None:
        self.final_path = Path(final_path)
        self.bytes_written = 0
        self.timings: dict[str, float] = {}
        # The host and pid in the name let a later run tell a leftover of a killed run
        # from the temp file of a run still in progress (see remove_stale_temps).
        prefix = f".{self.final_path.name}.{socket.gethostname()}.{os.getpid()}."
        fd, temp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=self.final_path.parent)
        self._fd: int | None = fd
        self.temp_path: Path | None = Path(temp)
        interrupt.register_temp_file(self.temp_path)  # removed on SIGTERM/SIGINT

    def write(self, data: memoryview) -> None:
        """Append ``data``; raises ``OSError`` (ENOSPC, EFBIG, EIO …) as the kernel reports."""
        assert self._fd is not None, "write after close"
        view = memoryview(data).cast("B")
        while view:
            written = os.write(self._fd, view)
            self.bytes_written += written
            view = view[written:]

    def commit(
        self,
        *,
        mode: int,
        mtime_ns: int,
        fsync: bool = False,
        verify_digest: str | None = None,
    ) -> None:
        """Make the copy final: fsync, re-read check, permissions, mtime, atomic rename.

        Args:
            mode: source permission bits; applied minus the umask and never
                world-writable, like ``cp`` without ``-p``.
            mtime_ns: source modification time, preserved.
            fsync: flush data to the device before the rename (and the directory after).
            verify_digest: when given, re-read the written file and compare.

        Raises:
            OSError: any step failed; the temp file is removed first.
            ValueError: the re-read digest differs.
            mpistage.interrupt.Interrupted: a signal came first (the temp file is gone).
        """
        assert self._fd is not None and self.temp_path is not None, "commit after close"
        try:
            if fsync:
                started = time.perf_counter()
                os.fsync(self._fd)
                self.timings["fsync"] = time.perf_counter() - started
            os.fchmod(self._fd, mode & ~_umask() & ~0o002 & 0o7777)
            os.close(self._fd)
            self._fd = None
            if verify_digest is not None:
                started = time.perf_counter()
                on_disk = file_digest(self.temp_path)
                self.timings["verify"] = time.perf_counter() - started
                if on_disk != verify_digest:
                    raise ValueError(
                        f"re-read of {self.temp_path} gave digest {on_disk}, expected {verify_digest}"
                    )
            started = time.perf_counter()
            os.utime(self.temp_path, ns=(time.time_ns(), mtime_ns), follow_symlinks=False)
            with interrupt.renaming(self.temp_path):
                os.rename(self.temp_path, self.final_path)
            self.temp_path = None
            if fsync:
                _fsync_dir(self.final_path.parent)
            self.timings["rename"] = time.perf_counter() - started
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and remove the temp file, if any (idempotent)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self.temp_path is not None:
            interrupt.forget_temp_file(self.temp_path)
            try:
                os.unlink(self.temp_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove temp file %s: %s", self.temp_path, exc)
            self.temp_path = None

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


def remove_stale_temps(final_path: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files that a killed run left beside ``final_path`` on this host.

    A run killed with SIGKILL (the launcher ending a job whose rank died) cannot clean up
    after itself; its temp file never reached the final path, but it takes space.  Only
    files made on this host by processes that no longer exist are removed.
    """
    final = Path(final_path)
    pattern = re.compile(
        rf"^\.{re.escape(final.name)}\.{re.escape(socket.gethostname())}\.(\d+)\..*"
        rf"{re.escape(TEMP_SUFFIX)}$"
    )
    removed = []
    try:
        names = os.listdir(final.parent)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if match and not _process_exists(int(match.group(1))):
            try:
                os.unlink(final.parent / name)
                removed.append(final.parent / name)
            except OSError:
                pass
    return removed


def _process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live process here (a zombie, killed but not yet reaped by
    its parent, counts as gone: it will never write again)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
