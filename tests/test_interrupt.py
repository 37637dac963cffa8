"""The clean stop on SIGTERM/SIGINT: temp files registered by sinks, removed by the watcher
thread even while the main thread is blocked in C code, exit status 128 + N."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mpistage import interrupt
from mpistage.sinks.file import Sink


def test_a_sink_registers_its_temp_file_until_commit_or_discard(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "out.bin")
    sink.write(memoryview(b"partial"))
    temp = sink.temp_path
    assert temp is not None and temp.exists()
    assert interrupt.remove_temp_files() == [temp]
    assert not temp.exists() and not (tmp_path / "out.bin").exists()
    sink.discard()
    done = Sink(tmp_path / "done.bin")
    done.write(memoryview(b"whole"))
    done.commit(mode=0o644, mtime_ns=0)
    assert interrupt.remove_temp_files() == []  # committed: nothing of it is registered
    assert (tmp_path / "done.bin").read_bytes() == b"whole"


def test_no_rename_after_a_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal that lands between the last write and the rename: no rename, no file."""
    sink = Sink(tmp_path / "late.bin")
    sink.write(memoryview(b"all of it"))
    monkeypatch.setattr(interrupt._temp_files, "signal", signal.SIGTERM)
    with pytest.raises(interrupt.Interrupted, match="SIGTERM"):
        sink.commit(mode=0o644, mtime_ns=0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_while_blocked_in_c_removes_temps_and_exits_128_plus_n(
        tmp_path: Path, signum: int) -> None:
    """The main thread sits in a blocking read (as in a blocking MPI call), a writer
    thread holds a temp file open; the signal ends the process at once, cleanly."""
    script = textwrap.dedent(f"""
        import os, sys, threading
        from mpistage import interrupt
        from mpistage.sinks.file import Sink
        interrupt.install(lambda s: os.write(2, f"announced {{s}}\\n".encode()))
        sink = Sink({str(tmp_path / "big.bin")!r})
        sink.write(memoryview(b"x" * 4096))
        shm = "/dev/shm/mpistage-test-{os.getpid()}-{int(signum)}"
        with open(shm, "wb") as f:
            f.write(b"\\0" * 4096)
        import mmap
        mapped = mmap.mmap(os.open(shm, os.O_RDWR), 4096)
        print("ready", flush=True)
        readable, _ = os.pipe()
        os.read(readable, 1)   # blocks forever in C
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    assert any(name.endswith(".mpistage-tmp") for name in os.listdir(tmp_path))
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=10)
    assert child.returncode == 128 + signum
    assert stderr.strip() == f"announced {int(signum)}"
    assert os.listdir(tmp_path) == []
    assert not os.path.exists(f"/dev/shm/mpistage-test-{os.getpid()}-{int(signum)}")


def test_exit_status_and_names() -> None:
    assert interrupt.exit_status(signal.SIGTERM) == 143
    assert interrupt.signal_name(signal.SIGINT) == "SIGINT"


def test_a_signal_kills_the_pipe_command_before_its_input_ends(tmp_path: Path) -> None:
    """A --pipe command (and a --from-cmd producer) is killed on SIGTERM while its input
    is still open: it never sees a clean end of a cut stream."""
    saw_end = tmp_path / "saw-the-end"
    script = textwrap.dedent(f"""
        import os
        from mpistage import interrupt
        from mpistage.sinks.pipe import PipeSink
        from mpistage.sources.streams import FromCommand
        interrupt.install(lambda s: None)
        sink = PipeSink({f"cat > /dev/null && touch {saw_end}"!r})
        producer = FromCommand("sleep 600").open()
        sink.write(memoryview(b"x" * 4096))
        print(sink.process.pid, producer.process.pid, flush=True)
        readable, _ = os.pipe()
        os.read(readable, 1)   # blocks forever in C
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pids = [int(p) for p in child.stdout.readline().split()]
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=10)
    assert child.returncode == 143
    time.sleep(0.5)  # the command would have touched the file by now had it seen its end
    assert not saw_end.exists()
    for pid in pids:  # killed (a zombie until init reaps it counts as gone)
        try:
            with open(f"/proc/{pid}/stat") as stat:
                assert stat.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            pass
