"""The local copy: a private temp file beside the destination, renamed in when verified.

The final path never holds a partial file: bytes go to a temp file created exclusively
(``O_EXCL``, not following symlinks, mode 0600) in the destination's own directory, so the
closing ``rename`` is atomic and replaces whatever stood at the final path (a symlink
included) without writing through it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from .. import interrupt
from ..digest import file_chunk_digest, file_digest

log = logging.getLogger("mpistage.sinks.file")

TEMP_SUFFIX = ".mpistage-tmp"
_WRITE_SLICE = 8 << 20


#: Random characters ``tempfile.mkstemp`` puts between prefix and suffix.
_RANDOM_PART = 8
_NAME_MAX = 255
_PID_DIGITS = 7  # pid_max is at most 2**22


def temp_prefix(final_name: str, pid: int) -> str:
    """``.NAME.HOST.PID.``: the start of a temp file's name beside ``final_name``.

    The host and pid let a later run (and the Slurm epilog) tell a leftover of a killed
    run from the temp file of a run still in progress (see :func:`remove_stale_temps`).
    NAME is cut short where needed, so that the whole temp name fits in the 255 bytes a
    file name may have whenever the final name itself does.
    """
    host = os.uname().nodename
    room = (_NAME_MAX - len(os.fsencode(f"..{host}..")) - _PID_DIGITS - _RANDOM_PART
            - len(TEMP_SUFFIX))  # the same for every pid, so remove_stale_temps finds it
    name = os.fsdecode(os.fsencode(final_name)[:max(room, 1)])
    return f".{name}.{host}.{pid}."


def current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def copy_mode(source_mode: int, umask: int | None = None) -> int:
    """The permission bits every copy gets: the source's, minus the umask, never
    world-writable, and never setuid or setgid (as ``cp`` without ``-p``: a setuid
    binary owned by root must not become setuid on a thousand nodes).  A tree's sink
    passes ``umask``, read once: reading it costs two system calls, and setting it
    back and forth while another thread creates files would be a race."""
    mask = current_umask() if umask is None else umask
    return source_mode & ~mask & ~0o002 & 0o1777


def directory_mode(source_mode: int, umask: int | None = None) -> int:
    """A directory's bits: as :func:`copy_mode`, but its setgid bit kept (as ``cp -a``
    and ``rsync -p`` do): on a directory it grants nothing, it only makes new entries
    inherit the directory's group, which a group-shared tree needs."""
    return copy_mode(source_mode, umask) | (source_mode & stat.S_ISGID)


class Abandoned(OSError):
    """The owner gave up on this copy (its disk made no progress); nothing is kept."""


class Sink:
    """Receives the file's bytes in order and puts them in place when asked.

    One writer thread calls :meth:`write`, then one thread :meth:`commit`.  The owner may
    call :meth:`discard` at any time, also while a write or a commit hangs in another
    thread (a dead disk, a hung file server): the temp file is removed at once and the
    copy can no longer be renamed into place, but its descriptor is closed only by the
    last thread to leave it, so no other file that reuses the number is written to.

    Attributes:
        progress: bytes written, flushed or re-read so far; a watchdog that sees it stand
            still for the timeout knows the disk is stuck (see :mod:`mpistage.engine.liveness`).
    """

    def __init__(self, final_path: str | os.PathLike[str]) -> None:
        self.final_path = Path(final_path)
        self.bytes_written = 0
        self.progress = 0
        self.timings: dict[str, float] = {}
        fd, temp = tempfile.mkstemp(prefix=temp_prefix(self.final_path.name, os.getpid()),
                                    suffix=TEMP_SUFFIX, dir=self.final_path.parent)
        self._fd: int | None = fd
        self.temp_path: Path | None = Path(temp)
        interrupt.register_temp_file(self.temp_path)  # removed on SIGTERM/SIGINT
        self._lock = threading.Lock()
        self._users = 0  # threads inside write or commit
        self._abandoned = False
        self._write_some = os.write  # a test fault may make it hang (mpistage.faults)

    @contextmanager
    def _using(self) -> Iterator[int]:
        """The descriptor, held open for this thread until it leaves."""
        with self._lock:
            if self._abandoned or self._fd is None:
                raise Abandoned(errno.ECANCELED, f"the copy at {self.final_path} was abandoned")
            self._users += 1
            fd = self._fd
        try:
            yield fd
        finally:
            with self._lock:
                self._users -= 1
                if self._abandoned and self._users == 0:
                    self._close()

    def _close(self) -> None:
        """Close the descriptor (idempotent; call with the lock held)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def write(self, data: memoryview) -> None:
        """Append ``data``; raises ``OSError`` (ENOSPC, EFBIG, EIO …) as the kernel reports."""
        self.write_at(None, data)

    def write_at(self, offset: int | None, data: memoryview) -> None:
        """Write ``data`` at ``offset`` (``None``: after what was written; chunks that
        come out of file order, a ring's, :mod:`mpistage.engine.ring`, have one each)."""
        with self._using() as fd:
            view = memoryview(data).cast("B")
            while view:
                # At most a slice per call, so that progress shows during a large chunk.
                if offset is None:
                    written = self._write_some(fd, view[:_WRITE_SLICE])
                else:
                    written = os.pwrite(fd, view[:_WRITE_SLICE], offset)
                    offset += written
                self.bytes_written += written
                self.progress += written
                view = view[written:]

    def commit(
        self,
        *,
        mode: int,
        mtime_ns: int,
        fsync: bool = False,
        verify_digest: str | None = None,
        verify_chunk: int | None = None,
    ) -> None:
        """Make the copy final: fsync, re-read check, permissions, mtime, atomic rename.

        Args:
            mode: source permission bits; applied as :func:`copy_mode` says.
            mtime_ns: source modification time, preserved.
            fsync: flush data to the device before the rename (and the directory after).
            verify_digest: when given, re-read the written file and compare.
            verify_chunk: the digest to compare is a hash list of chunks this size
                (:func:`mpistage.digest.file_chunk_digest`), not of the bytes in one go.

        Raises:
            OSError: any step failed, or the owner discarded the copy meanwhile
                (:class:`Abandoned`); the temp file is removed first.
            ValueError: the re-read digest differs.
            mpistage.interrupt.Interrupted: a signal came first (the temp file is gone).
        """
        temp = self.temp_path
        assert temp is not None, "commit after close"
        try:
            with self._using() as fd:
                if fsync:
                    started = time.perf_counter()
                    os.fsync(fd)
                    self.timings["fsync"] = time.perf_counter() - started
                os.fchmod(fd, copy_mode(mode))
                with self._lock:
                    self._close()
            if verify_digest is not None:
                started = time.perf_counter()
                reread(temp, verify_digest, verify_chunk, self._advance)
                self.timings["verify"] = time.perf_counter() - started
            started = time.perf_counter()
            os.utime(temp, ns=(time.time_ns(), mtime_ns), follow_symlinks=False)
            with self._lock, interrupt.renaming(temp):
                if self._abandoned:
                    raise Abandoned(errno.ECANCELED, f"the copy at {self.final_path} was abandoned")
                os.rename(temp, self.final_path)
                self.temp_path = None
            if fsync:
                fsync_directory(self.final_path.parent)
            self.timings["rename"] = time.perf_counter() - started
        except BaseException:
            self.discard()
            raise

    def _advance(self, count: int) -> None:
        self.progress += count

    def discard(self) -> None:
        """Remove the temp file, if any, and make sure it is never renamed into place
        (idempotent; safe while another thread hangs in :meth:`write` or :meth:`commit`)."""
        with self._lock:
            self._abandoned = True
            temp, self.temp_path = self.temp_path, None
            if self._users == 0:
                self._close()
        if temp is not None:
            interrupt.forget_temp_file(temp)
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove temp file %s: %s", temp, exc)

    def __enter__(self) -> Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


def reread(path: Path, digest: str, chunk: int | None, progress: Callable[[int], None]
           ) -> None:
    """Re-read ``path`` from disk (its digest, or with ``chunk`` its hash list of chunks
    that size) and compare with ``digest``.

    Raises:
        ValueError: it differs.
    """
    on_disk = (file_digest(path, progress=progress) if chunk is None
               else file_chunk_digest(path, chunk, progress=progress))
    if on_disk != digest:
        raise ValueError(f"re-read of {path} gave digest {on_disk}, expected {digest}")


def remove_stale_temps(final_path: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files (and trees' temp directories) that a killed run left beside
    ``final_path`` on this host.

    A run killed with SIGKILL (the launcher ending a job whose rank died) cannot clean up
    after itself; its temp file never reached the final path, but it takes space.  Only
    files made on this host by processes that no longer exist are removed.
    """
    final = Path(final_path)
    stem = temp_prefix(final.name, 0)[: -len(".0.")]  # .NAME.HOST
    pattern = re.compile(rf"^{re.escape(stem)}\.(\d+)\..*{re.escape(TEMP_SUFFIX)}$")
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
            except IsADirectoryError:  # a tree's (mpistage.sinks.tree)
                import shutil

                shutil.rmtree(final.parent / name, ignore_errors=True)
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


def fsync_directory(directory: Path | bytes) -> None:
    """Flush a directory's entries to its device (a rename in it survives a crash)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
