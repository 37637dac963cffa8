"""Stopping cleanly on SIGTERM and SIGINT: no temp file left, no partial file in place.

Slurm's time limit and ``scancel`` send SIGTERM to every task (SIGKILL follows after
``KillWait``, 30 s by default); Ctrl-C sends SIGINT.  A Python signal handler would run
only when the main thread next returns to the interpreter, which may be never while it
sits in a blocking MPI call; and blocking the signals does not work either, because MPI's
own threads (libfabric's progress thread, for one) unblock them.  So :func:`install`
sets a handler whose C part, run in whichever thread the signal hits, writes the signal
number to a pipe (``signal.set_wakeup_fd``); a watcher thread reads the pipe, removes
every temp file still registered here and the shared-memory files that MPI maps in
``/dev/shm`` (MPICH unlinks them in ``MPI_Finalize``, which an interrupted rank never
reaches: without this every interrupted run would leave one per rank on every node),
lets rank 0 say what happened and ends the process with status 128 + the signal number.

The temp files themselves are registered by :class:`mpistage.sinks.file.Sink`; its rename
into place runs under :func:`renaming`, so a signal either comes before the rename (the
temp file is removed, the final path untouched) or after it (the copy is complete).
A program that uses :func:`mpistage.stage` with its own signal handling can call
:func:`remove_temp_files` from its handler.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

#: The signals that end a run cleanly.
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

#: ``announce(signal_number)``: called once, on the watcher thread, before the exit.
Announce = Callable[[int], None]


class Interrupted(Exception):
    """A signal came before the rename; the temp file is gone, the final path untouched."""


class _TempFiles:
    """Temp files (and a tree's temp directories) in progress in this process; one lock
    orders removal and renames."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[Path] = set()
        self._processes: set[int] = set()  # --pipe commands, each its own process group
        self.signal: int | None = None

    def add_process(self, pid: int) -> None:
        with self._lock:
            self._processes.add(pid)

    def forget_process(self, pid: int) -> None:
        with self._lock:
            self._processes.discard(pid)

    def add(self, path: Path) -> None:
        with self._lock:
            self._paths.add(path)

    def forget(self, path: Path) -> None:
        with self._lock:
            self._paths.discard(path)

    @contextmanager
    def renaming(self, path: Path) -> Iterator[None]:
        with self._lock:
            if self.signal is not None:
                raise Interrupted(f"interrupted by {signal_name(self.signal)}")
            yield
            self._paths.discard(path)

    def remove_all(self, signum: int | None = None) -> list[Path]:
        with self._lock:
            if signum is not None:
                self.signal = signum
            for pid in self._processes:  # before its input ends: it must not see a clean end
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            self._processes.clear()
            removed = []
            for path in self._paths:
                try:
                    os.unlink(path)
                    removed.append(path)
                except IsADirectoryError:  # a tree being built (mpistage.sinks.tree)
                    import shutil

                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                except OSError:
                    pass
            self._paths.clear()
            return removed


_temp_files = _TempFiles()
register_temp_file = _temp_files.add
forget_temp_file = _temp_files.forget
renaming = _temp_files.renaming
#: A ``--pipe`` command's process group, killed (SIGKILL) on a signal, before exiting.
register_process = _temp_files.add_process
forget_process = _temp_files.forget_process


def remove_temp_files() -> list[Path]:
    """Remove every temp file this process still has open for a copy; returns them."""
    return _temp_files.remove_all()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number."""
    return 128 + signum


def install(announce: Announce) -> None:
    """Turn any of :data:`SIGNALS` into a clean exit of this process.

    Call it from the main thread after MPI is initialized (a library that sets its own
    handlers during ``MPI_Init`` would replace ours; before then no temp file exists).
    """
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    signal.set_wakeup_fd(writable, warn_on_full_buffer=False)
    for signum in SIGNALS:
        signal.signal(signum, _ignore_in_main_thread)
    watcher = threading.Thread(target=_watch, args=(readable, announce),
                               name="mpistage-signals", daemon=True)
    watcher.start()


#: Says, for the CLI, why a run gave up from :func:`deadline` (the library never prints).
_on_give_up: list[Callable[[str], None]] = []


def on_give_up(announce: Callable[[str], None]) -> None:
    """Have ``announce(reason)`` called when :func:`deadline` ends this process."""
    _on_give_up[:] = [announce]


def give_up(reason: str | None) -> NoReturn:
    """End this process at once, from any thread: its temp files and MPI's shared memory
    removed, ``reason`` announced (:func:`on_give_up`; ``None``: nothing said), exit
    status 1.  Neither ``MPI_Finalize`` nor ``MPI_Abort``: both would wait on the MPI
    that may be what holds the main thread."""
    _temp_files.remove_all()
    remove_mapped_shared_memory()
    try:
        for announce in _on_give_up if reason is not None else []:
            announce(reason)
    finally:
        os._exit(1)


@contextmanager
def deadline(seconds: float, reason: str | None) -> Iterator[None]:
    """The body must be done within ``seconds``, or this process removes its temp files
    and exits 1 from another thread.  For MPI calls that may never return: with MPICH's
    TCP transport a send to a process that died can block inside MPI for ever, and no
    MPI call (not even ``MPI_Abort``) can end the run cleanly after that."""
    timer = threading.Timer(seconds, give_up, args=(reason,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _ignore_in_main_thread(signum: int, frame: object) -> None:
    """The Python-level handler: the watcher thread already acts on the signal."""


def remove_mapped_shared_memory() -> list[str]:
    """Unlink the files in ``/dev/shm`` that this process maps and owns (MPI's
    shared-memory segments).  Other processes mapping them keep their mappings."""
    removed = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    except OSError:
        return removed
    for path in sorted(p for p in paths if p.startswith("/dev/shm/") and not p.endswith("(deleted)")):
        try:
            if os.stat(path).st_uid == os.geteuid():
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def _watch(readable: int, announce: Announce) -> None:
    while True:
        data = os.read(readable, 1)
        if data and data[0] in {int(s) for s in SIGNALS}:
            break
    signum = data[0]
    _temp_files.remove_all(signum)
    remove_mapped_shared_memory()
    try:
        announce(signum)
    finally:
        os._exit(exit_status(signum))
