"""Stagings that meet on a node: several jobs' prologs staging at once on shared hosts.

Every case starts separate ``mpiexec`` jobs at the same time on 4 emulated hosts at
1 Gbit/s, while a watcher samples every host's scratch every few milliseconds (which temp
files stand there, whose they are, what stands at the final names).  For every case:
each run ends with exit 0 and its usual summary (the interrupted one with 143 and its
one line); every final file equals one of the sources staged to that name (by digest);
no temp file is left on any host; and no run loses its temp file to another (a run whose
temp file vanished could not rename it in and would fail).  The watcher also shows that
the runs did meet: temp files of two runs for the same name stood on a host together.

Needs root; skipped elsewhere.  README "What it guarantees" quotes the times.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mpistage.cluster import EmulatedCluster, system, teardown
from mpistage.cluster.launch import mpi_environment
from mpistage.digest import file_digest
from mpistage.sinks.file import TEMP_SUFFIX

NAME = "mstmeet"
HOSTS = 4
TIMEOUT = 10
SLOW = 3  # the host that puts its copies in place 5 s late in cases 1-3 (see start())
MISSING = [t for t in system.TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0 or bool(MISSING),
                       reason="needs root and iproute2/util-linux (network and mount namespaces)"),
]

COPIED = f"all {HOSTS} nodes hold a verified copy"
UP_TO_DATE = f"all {HOSTS} nodes were up to date already; nothing was sent"
INTERRUPTED = ("mpistage: interrupted by SIGTERM: every rank stopped and removed its unfinished "
               "copy; copies already in place are complete (exit status 143)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    teardown(NAME)
    with EmulatedCluster(hosts=HOSTS, rate="1gbit", name=NAME) as c:
        yield c


@pytest.fixture
def clean(cluster: EmulatedCluster) -> Iterator[EmulatedCluster]:
    """Empty scratches before and after; no process of a test outlives it."""
    empty_scratches(cluster)
    yield cluster
    for i in range(HOSTS):
        for pid in cluster.pids(i):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    empty_scratches(cluster)


def empty_scratches(cluster: EmulatedCluster) -> None:
    for i in range(HOSTS):
        for entry in cluster.scratch_dir(i).iterdir():  # contents only: it is a mount
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def sample(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


# -- runs ---------------------------------------------------------------------------------

@dataclass
class Run:
    """One mpistage job in the background; a thread collects its output as it ends."""

    label: str
    job: subprocess.Popen  # type: ignore[type-arg]
    report_path: Path
    started: float
    out: str = ""
    err: str = ""
    ended: float | None = None
    _reader: threading.Thread | None = None

    @property
    def report(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.report_path.read_text())

    def statuses(self) -> set[str]:
        return {node["status"] for node in self.report["nodes"]}

    def text(self) -> str:
        return f"[{self.label}: exit {self.job.returncode}]\n{self.out}{self.err}"


def start(cluster: EmulatedCluster, tmp_path: Path, label: str, args: Sequence[str],
          timeout: float = TIMEOUT, slow_host: int | None = None) -> Run:
    """``mpistage ARGS`` in the background; with ``slow_host``, that host takes 5 s
    longer to put its copy in place (the test hook ``slow-commit``, as a long --fsync
    or --verify would), so that runs started together certainly have their temp files
    on that host at the same time."""
    report = tmp_path / f"{label}.json"
    faults = {} if slow_host is None else {"MPISTAGE_TEST_FAULTS": f"slow-commit@{slow_host}"}
    job = subprocess.Popen(
        cluster.mpiexec_command([sys.executable, "-m", "mpistage", "--timeout", str(timeout),
                                 "--report", str(report), *args]),
        env=mpi_environment({"MPIEXEC_TIMEOUT": "300", **faults}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = Run(label, job, report, time.monotonic())

    def collect() -> None:
        run.out, run.err = job.communicate()
        run.ended = time.monotonic()

    run._reader = threading.Thread(target=collect, daemon=True)
    run._reader.start()
    return run


def finish(runs: Sequence[Run], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    for run in runs:
        assert run._reader is not None
        run._reader.join(max(0.0, deadline - time.monotonic()))
    hung = [run.label for run in runs if run.ended is None]
    for run in runs:
        if run.ended is None:
            run.job.kill()
    assert not hung, f"runs still going after {timeout} s: {hung}"


def record_times(record_property, runs: Sequence[Run], began: float) -> None:  # type: ignore[no-untyped-def]
    """For the README: the case from the first launch to the last exit, and each run's
    own time ("in all" in its summary), shortest to longest."""
    record_property("seconds", round(max(run.ended or 0.0 for run in runs) - began, 2))
    elapsed = sorted(run.report["elapsed"] for run in runs if run.report_path.exists())
    if elapsed:
        record_property("runs_in_all", f"{elapsed[0]:.2f}-{elapsed[-1]:.2f}")


def assert_succeeded(run: Run) -> None:
    """Exit 0 and the usual summary; no line about a failure of any kind."""
    assert run.job.returncode == 0, run.text()
    lines = run.out.splitlines()
    assert lines[1].startswith(f"  {COPIED} (") or lines[1] == f"  {UP_TO_DATE}", run.text()
    assert run.statuses() <= {"copied", "up-to-date"}, run.text()
    assert not [line for line in run.err.splitlines() if line.startswith("mpistage")], run.text()


# -- what stood on the hosts meanwhile ----------------------------------------------------

@dataclass
class Temp:
    host: int
    final: str   # the final name it was made for
    pid: int     # the rank that made it
    argv: str    # that rank's command line, as first seen
    first: float
    last: float


@dataclass
class Watch:
    """Samples every host's scratch (``under`` it) every few ms until stopped.

    Records every temp file (whose, when first and last seen) and, for the ``watched``
    final names, every change of what stood there: ``(time, (inode, size) or None)``.
    """

    cluster: EmulatedCluster
    under: str = ""
    watched: Sequence[str] = ()
    temps: dict[tuple[int, str], Temp] = field(default_factory=dict)
    finals: dict[tuple[int, str], list[tuple[float, tuple[int, int] | None]]] = field(
        default_factory=dict)
    most_together: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._patterns = [re.compile(rf"^\.(.*)\.{re.escape(host)}\.(\d+)\.[^.]+"
                                     rf"{re.escape(TEMP_SUFFIX)}$")
                          for host in self.cluster.hostnames]
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.003)

    def sample(self) -> None:
        for host in range(HOSTS):
            directory = self.cluster.scratch_dir(host) / self.under
            now = time.monotonic()
            try:
                names = os.listdir(directory)
            except OSError:
                names = []
            together = 0
            for name in names:
                match = self._patterns[host].match(name)
                if match is None:
                    continue
                together += 1
                final, pid = match.group(1), int(match.group(2))
                seen = self.temps.get((host, name))
                if seen is None:
                    try:
                        argv = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                    except OSError:
                        argv = ""
                    self.temps[(host, name)] = Temp(host, final, pid, argv.replace("\0", " "),
                                                    now, now)
                else:
                    seen.last = now
            self.most_together[host] = max(self.most_together.get(host, 0), together)
            for final in self.watched:
                try:
                    found = os.lstat(directory / final)
                    state: tuple[int, int] | None = (found.st_ino, found.st_size)
                except FileNotFoundError:
                    state = None
                history = self.finals.setdefault((host, final), [])
                if not history or history[-1][1] != state:
                    history.append((now, state))

    def stop(self) -> Watch:
        self._stop.set()
        self._thread.join()
        self.sample()  # one more, after every run ended
        return self

    def met(self) -> int:
        """The most temp files seen on one host at once."""
        return max(self.most_together.values(), default=0)

    def runs_met(self, final: str) -> bool:
        """Whether temp files of two different runs for ``final`` stood on a host together."""
        for host in range(HOSTS):
            spans = sorted((t.first, t.last) for t in self.temps.values()
                           if t.host == host and t.final == final)
            if any(later[0] <= earlier[1] for earlier, later in zip(spans, spans[1:])):
                return True
        return False


def assert_nothing_left(cluster: EmulatedCluster, under: str = "") -> None:
    for i in range(HOSTS):
        left = [p.name for p in (cluster.scratch_dir(i) / under).iterdir()
                if p.name.endswith(TEMP_SUFFIX)]
        assert not left, f"temp files left on host {i}: {left}"


def assert_finals(cluster: EmulatedCluster, final: str, sources: Sequence[Path],
                  under: str = "") -> list[str]:
    """Every host holds ``final`` whole: equal to one of ``sources``; which, per host."""
    names = {file_digest(src): str(src) for src in sources}
    found = []
    for i in range(HOSTS):
        path = cluster.scratch_dir(i) / under / final
        assert path.is_file() and not path.is_symlink(), f"no file {final} on host {i}"
        digest = file_digest(path)
        assert digest in names, f"host {i}: {final} is none of the sources staged to it"
        found.append(names[digest])
    return found


@dataclass
class Seen:
    host: int
    name: str


def wait_for_temps(watch: Watch, marker: str, size: int, timeout: float = 60) -> list[Seen]:
    """The temp files of the run whose command line holds ``marker``, once one stands on
    every host with at least ``size`` bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for (host, name), temp in list(watch.temps.items()):
            if marker in temp.argv and temp.last >= time.monotonic() - 0.5:
                try:
                    if (watch.cluster.scratch_dir(host) / name).stat().st_size >= size:
                        found.append(Seen(host, name))
                except FileNotFoundError:
                    pass
        if sorted(s.host for s in found) == list(range(HOSTS)):
            return found
        time.sleep(0.02)
    raise AssertionError(f"the run with {marker!r} never had {size} bytes on every host")


# -- the cases ----------------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["empty", "over an old copy",
                                     "over an old copy, both --remove-first"])
def test_1_two_runs_of_the_same_source_to_the_same_dest(
        clean: EmulatedCluster, tmp_path: Path, record_property, setting: str) -> None:  # type: ignore[no-untyped-def]
    """Two jobs stage the same file to the same DEST at once: into an empty scratch, over
    an old version of the same size (each run digests it and finds it outdated), and
    over it with --remove-first (both runs judge the old copy outdated; the first to
    remove it must not make the other fail)."""
    src = sample(tmp_path / "src" / "data.bin", 8 << 20)
    if setting != "empty":  # an old version of the same size: both runs digest it first
        for i in range(HOSTS):
            sample(clean.scratch_dir(i) / "data.bin", 8 << 20)
    options = ["--remove-first"] if "remove-first" in setting else []
    watch = Watch(clean, watched=["data.bin"])
    began = time.monotonic()
    runs = [start(clean, tmp_path, f"run{k}", [*options, str(src), clean.scratch],
                  slow_host=SLOW) for k in range(2)]
    finish(runs)
    watch.stop()
    record_times(record_property, runs, began)
    for run in runs:
        assert_succeeded(run)
    assert any("copied" in run.statuses() for run in runs)
    assert_finals(clean, "data.bin", [src])
    assert_nothing_left(clean)
    assert watch.runs_met("data.bin"), "the two runs never had temp files on a host together"
    if not options:  # each rename replaced the name in one step: once there, never missing
        for (host, _), history in watch.finals.items():
            states = [state for _, state in history]
            if states[0] is None:
                assert setting == "empty", (host, history)
                states = states[1:]
            assert None not in states, (host, history)


def test_2_six_runs_of_different_files_into_one_directory(
        clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    """Six jobs stage six different files into one directory at once: each gets its own
    file whole, and nothing else is left in the directory."""
    for i in range(HOSTS):
        (clean.scratch_dir(i) / "inputs").mkdir()
    sources = [sample(tmp_path / "src" / f"shard{k}.bin", (3 << 20) + k * 4099) for k in range(6)]
    watch = Watch(clean, under="inputs")
    began = time.monotonic()
    runs = [start(clean, tmp_path, src.stem, [str(src), f"{clean.scratch}/inputs/"],
                  slow_host=SLOW) for src in sources]
    finish(runs)
    watch.stop()
    record_times(record_property, runs, began)
    for run in runs:
        assert_succeeded(run)
        assert run.statuses() == {"copied"}, run.text()
    for src in sources:
        assert_finals(clean, src.name, [src], under="inputs")
    assert_nothing_left(clean, under="inputs")
    for i in range(HOSTS):
        assert os.listdir(clean.scratch_dir(i)) == ["inputs"]
        assert sorted(os.listdir(clean.scratch_dir(i) / "inputs")) == sorted(
            src.name for src in sources)
    assert watch.met() >= 2, "no two runs ever had temp files in the directory together"


READER = r"""
import os, sys, xxhash
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
digest = xxhash.xxh3_128()
digest.update(os.read(fd, size // 2))                   # the first half now ...
print("opened", os.fstat(fd).st_ino, flush=True)
sys.stdin.readline()
while chunk := os.read(fd, 1 << 20):                    # ... the rest after the staging
    digest.update(chunk)
print(digest.hexdigest(), flush=True)
"""


def test_3_a_new_version_while_a_program_holds_the_old_copy_open(
        clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    """On every host a program has the old copy open (half read) when two runs stage the
    new version; it reads the old bytes to the end, and the name went from the old copy
    to a whole new one in one step (never missing, never a partial file)."""
    old = sample(tmp_path / "old" / "model.bin", 5 << 20)
    new = sample(tmp_path / "new" / "model.bin", 4 << 20)
    for i in range(HOSTS):
        shutil.copy2(old, clean.scratch_dir(i) / "model.bin")
    programs = [subprocess.Popen(clean.command(i, [sys.executable, "-c", READER,
                                                   f"{clean.scratch}/model.bin"]),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for i in range(HOSTS)]
    try:
        old_inodes = []
        for program in programs:
            assert program.stdout is not None
            word, inode = program.stdout.readline().split()
            assert word == "opened"
            old_inodes.append(int(inode))
        watch = Watch(clean, watched=["model.bin"])
        began = time.monotonic()
        runs = [start(clean, tmp_path, f"new{k}", [str(new), clean.scratch], slow_host=SLOW)
                for k in range(2)]
        finish(runs)
        watch.stop()
        record_times(record_property, runs, began)
        read = [program.communicate("go\n", timeout=30)[0].strip() for program in programs]
    finally:
        for program in programs:
            if program.poll() is None:
                program.kill()
    for run in runs:
        assert_succeeded(run)
    assert read == [file_digest(old)] * HOSTS, "a program holding the old copy saw other bytes"
    assert_finals(clean, "model.bin", [new])
    assert_nothing_left(clean)
    assert watch.runs_met("model.bin")
    for i in range(HOSTS):
        history = [state for _, state in watch.finals[(i, "model.bin")]]
        assert history[0] == (old_inodes[i], 5 << 20), history
        assert None not in history, f"host {i}: model.bin was missing for a while: {history}"
        assert all(size == 4 << 20 for _, size in history[1:]), f"host {i}: {history}"


def test_4_ten_runs_one_interrupted_one_removing_first(
        clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    """Ten runs into one directory: three versions of shared.bin (one run with
    --remove-first) over an old copy, three other files, and one run streaming the third
    version that is interrupted by SIGTERM to its mpiexec mid-transfer.

    The interrupted run starts first and stalls after 1 MiB (its producer pauses), so
    its temp files stand on every host while the nine others check their destinations,
    write and rename beside them; it is signalled when the first of the nine has ended.
    """
    versions = [sample(tmp_path / f"v{k}" / "shared.bin", (4 << 20) + k * 65537)
                for k in (1, 2, 3)]
    others = [sample(tmp_path / "src" / f"other{k}.bin", 3 << 20) for k in range(3)]
    for i in range(HOSTS):
        sample(clean.scratch_dir(i) / "shared.bin", 4 << 20)  # an old copy everywhere
    v1, v2, v3 = versions
    scratch = clean.scratch
    watch = Watch(clean, watched=["shared.bin"])
    began = time.monotonic()
    paused = f"head -c 1M {v3}; sleep 40; tail -c +{(1 << 20) + 1} {v3}"
    interrupted = start(clean, tmp_path, "interrupted",
                        ["--chunk-size", "256K", "--from-cmd", paused, f"{scratch}/shared.bin"],
                        timeout=60)
    mine = wait_for_temps(watch, "--from-cmd", 256 << 10)
    nine = [start(clean, tmp_path, label, args) for label, args in [
        ("v1-a", [str(v1), scratch]), ("v1-b", [str(v1), scratch]), ("v1-c", [str(v1), scratch]),
        ("v2-a", [str(v2), scratch]), ("v2-remove-first", ["--remove-first", str(v2), scratch]),
        ("v3-a", [str(v3), scratch]),
        *[(src.stem, [str(src), scratch]) for src in others]]]
    while all(run.ended is None for run in nine) and time.monotonic() - began < 120:
        time.sleep(0.01)
    assert interrupted.ended is None, interrupted.text()
    # Its temp files are still there: no other run's pre-flight took them for a killed
    # run's leftovers (each of the nine checked the same directory while they stood).
    for temp in mine:
        assert (clean.scratch_dir(temp.host) / temp.name).exists(), temp
    assert "mpiexec" in Path(f"/proc/{interrupted.job.pid}/cmdline").read_text()
    interrupted.job.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    finish([interrupted, *nine])
    watch.stop()
    record_times(record_property, [interrupted, *nine], began)
    record_property("sigterm_to_exit", round((interrupted.ended or 0.0) - signalled, 2))

    assert interrupted.job.returncode == 143, interrupted.text()
    assert [line for line in (interrupted.out + interrupted.err).splitlines()
            if line.startswith("mpistage")] == [INTERRUPTED], interrupted.text()
    for run in nine:
        assert_succeeded(run)
    assert_finals(clean, "shared.bin", versions)
    for src in others:
        assert_finals(clean, src.name, [src])
    assert_nothing_left(clean)
    for i in range(HOSTS):
        assert sorted(os.listdir(clean.scratch_dir(i))) == sorted(
            ["shared.bin", *(src.name for src in others)])
    assert watch.runs_met("shared.bin")
    # shared.bin was missing from a host only while the --remove-first run went on (it
    # removes the copy it found outdated before it writes its own); the others replaced
    # it in one step.
    remover = next(run for run in nine if run.label == "v2-remove-first")
    assert remover.ended is not None
    for (host, _), history in watch.finals.items():
        missing = [t for t, state in history if state is None]
        assert all(remover.started <= t <= remover.ended for t in missing), (host, history)


def test_5_four_prologs_with_remove_first_over_one_old_copy(
        clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    """Four jobs' prologs run the same command, with --remove-first, over an old copy of
    the same size: each pre-flight finds the old copy outdated, and whichever run comes
    second to remove it finds it gone (or another run's new copy in its place)."""
    src = sample(tmp_path / "src" / "data.bin", 6 << 20)
    for i in range(HOSTS):
        sample(clean.scratch_dir(i) / "data.bin", 6 << 20)
    watch = Watch(clean, watched=["data.bin"])
    began = time.monotonic()
    runs = [start(clean, tmp_path, f"run{k}", ["--remove-first", str(src), clean.scratch],
                  slow_host=SLOW) for k in range(4)]
    finish(runs)
    watch.stop()
    record_times(record_property, runs, began)
    for run in runs:
        assert_succeeded(run)
    assert_finals(clean, "data.bin", [src])
    assert_nothing_left(clean)
    assert watch.runs_met("data.bin")
    # A run removes only the old copy: once one run had put its copy in place, no other
    # run removed it (they all stage the same bytes), so it never went missing again.
    first_done = min(run.ended for run in runs if run.ended is not None)
    for (host, _), history in watch.finals.items():
        gone = [t - first_done for t, state in history if state is None and t > first_done]
        assert not gone, f"host {host}: data.bin missing {gone} s after a run ended"
