"""A source on a file system every host mounts (the emulated cluster's --shared-fs: sshfs
from a storage host, one client at most C, all together at most A): every node reads its
share (--read-by all), auto's choice, the refusal of a source seen otherwise, a lost node.

Needs root, iproute2, util-linux, sshfs, socat and sftp-server (CI installs them);
skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpistage.cluster import EmulatedCluster, system, teardown
from mpistage.cluster.launch import mpi_environment
from mpistage.cluster.shared_fs import TOOLS, SharedFS
from mpistage.cluster.storage import measure_reads, reshape
from mpistage.digest import file_digest
from mpistage.sinks.file import TEMP_SUFFIX

NAME = "mstshared"
HOSTS = 4
SLOW = SharedFS.of("25mbit", "60mbit")  # one reader binds: 4 MiB take 1.4 s, 4 readers 0.6 s
MISSING = [t for t in (*system.TOOLS, *TOOLS)
           if shutil.which(t) is None and not os.access(t, os.X_OK)]
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0 or bool(MISSING),
                       reason="needs root, iproute2, util-linux, sshfs, socat and sftp-server"
                       + (f"; missing {', '.join(MISSING)}" if MISSING else "")),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    teardown(NAME)
    with EmulatedCluster(hosts=HOSTS, rate="100mbit", name=NAME, shared_fs=SLOW) as up:
        yield up
    mounts = Path("/proc/self/mounts").read_text()
    assert NAME not in mounts, "a mount of the shared file system was left behind"


@pytest.fixture
def source(cluster: EmulatedCluster) -> Iterator[Path]:
    """4 MiB in the storage host's export, at /shared/input.bin on every host; the
    hosts' scratch emptied after."""
    reshape(cluster, SLOW)
    (cluster.export_dir / "input.bin").write_bytes(os.urandom(4 << 20))
    yield Path(SLOW.path) / "input.bin"
    for i in range(HOSTS):
        for entry in cluster.scratch_dir(i).iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def stage(cluster: EmulatedCluster, tmp_path: Path, *options: str, src: str,
          dest: str = "/scratch/", keep_going: bool = False, background: bool = False,
          ) -> tuple[subprocess.CompletedProcess | subprocess.Popen, dict]:  # type: ignore[type-arg]
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    argv = cluster.mpiexec_command(
        [sys.executable, "-m", "mpistage", "--report", str(report), *options, src, dest],
        keep_going=keep_going)
    env = mpi_environment({"MPIEXEC_TIMEOUT": "300"})
    if background:
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True), {}
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    return run, json.loads(report.read_text()) if report.exists() else {}


def copies(cluster: EmulatedCluster, name: str, digest: str) -> list[int]:
    """Hosts holding the final copy; each must be whole."""
    holders = []
    for i in range(HOSTS):
        final = cluster.scratch_dir(i) / name
        if final.exists():
            assert file_digest(final) == digest, f"a partial copy on host {i}"
            holders.append(i)
    return holders


def test_each_client_reads_at_most_C_and_all_together_at_most_A(cluster: EmulatedCluster
                                                                 ) -> None:
    alone, together = measure_reads(cluster, 2 << 20)
    # SFTP's own messages take ~10 % of what the shaper lets through
    assert 0.75 * SLOW.client_rate < alone < 1.05 * SLOW.client_rate, alone
    most = min(HOSTS * SLOW.client_rate, SLOW.total_rate)
    assert 0.75 * most < together < 1.05 * most, together


def test_every_node_reads_its_share(cluster: EmulatedCluster, source: Path,
                                    tmp_path: Path) -> None:
    digest = file_digest(cluster.export_dir / source.name)
    run, report = stage(cluster, tmp_path, "--read-by", "all", src=str(source))
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["algorithm"] == "ring" and report["source"]["read_by"] == "all"
    assert "every node read its share, and each chunk was checked" in run.stdout
    assert copies(cluster, source.name, digest) == list(range(HOSTS))
    assert all("read" in r["phases"] for r in report["ranks"])


def test_auto_has_every_node_read_where_one_reader_binds(cluster: EmulatedCluster,
                                                         source: Path, tmp_path: Path) -> None:
    """25 Mbit/s per client, 100 Mbit/s links: one reader takes 4x as long as the links;
    the model, told the read rates the run measured, has every node read."""
    run, report = stage(cluster, tmp_path, src=str(source))
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["algorithm"] == "ring", run.stdout
    parameters = report["prediction"]["parameters"]
    assert 0.5 * SLOW.client_rate / 8 < parameters["read_bandwidth"] < 1.5 * SLOW.client_rate / 8
    # min(4 C, A) = 60 Mbit/s, measured on blocks of 256 KiB: 40-60
    assert parameters["shared_read_bandwidth"] > 1.5 * parameters["read_bandwidth"]


def test_auto_reads_on_the_root_where_the_file_system_keeps_up(cluster: EmulatedCluster,
                                                               source: Path,
                                                               tmp_path: Path) -> None:
    """A client reads as fast as its link carries (50 Mbit/s links here: one sshfs
    client on this machine reads ~75 Mbit/s at most): the root reads, as every node
    would gain little and the run could no longer go on without a lost node."""
    reshape(cluster, SharedFS.of("1gbit", "1gbit"))
    for i in range(HOSTS):
        cluster.set_rate(i, "50mbit")
    try:
        run, report = stage(cluster, tmp_path, src=str(source))
    finally:
        for i in range(HOSTS):
            cluster.set_rate(i, "100mbit")
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["algorithm"] != "ring", run.stdout
    assert "ring" in report["prediction"]["predictions"], "weighed, not chosen"


def test_a_source_another_node_sees_otherwise_is_refused(cluster: EmulatedCluster,
                                                         tmp_path: Path) -> None:
    """Each host's own /scratch/x.bin, with other bytes on host 2: one line from rank 0,
    exit 2, nothing written anywhere."""
    for i in range(HOSTS):
        (cluster.scratch_dir(i) / "x.bin").write_bytes(b"a" * 1000 if i != 2 else b"b" * 1000)
        os.utime(cluster.scratch_dir(i) / "x.bin", ns=(0, 10**18))
    try:
        run, _ = stage(cluster, tmp_path, "--read-by", "all", src="/scratch/x.bin",
                       dest="/scratch/copy.bin")
        assert run.returncode == 2, run.stdout + run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs the same source on every node: node 2" in lines[0]
        assert "sees other bytes at /scratch/x.bin" in lines[0]
        assert not any((cluster.scratch_dir(i) / "copy.bin").exists() for i in range(HOSTS))
    finally:
        for i in range(HOSTS):
            (cluster.scratch_dir(i) / "x.bin").unlink()


def test_a_lost_node_ends_a_ring_cleanly(cluster: EmulatedCluster, source: Path,
                                         tmp_path: Path) -> None:
    """A ring cannot go on without a member: killed mid-transfer, the run ends with exit
    1 well within the timeout, the lost node named, no copy and no temp file anywhere
    but on the killed host (the next run's pre-flight removes it)."""
    job, _ = stage(cluster, tmp_path, "--read-by", "all", "--timeout", "5", "-c", "64K",
                   src=str(source), keep_going=True, background=True)
    assert isinstance(job, subprocess.Popen)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = list(cluster.scratch_dir(2).glob(f"*{TEMP_SUFFIX}"))
        if temps and temps[0].stat().st_size > 0:
            break
        time.sleep(0.05)
    pid = cluster.mpistage_pid(2)
    assert pid is not None, "host 2 never started receiving"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    out, err = job.communicate(timeout=120)
    assert time.monotonic() - killed < 30, "no hang"
    assert job.returncode == 1, out + err
    report = json.loads((tmp_path / "report.json").read_text())
    lost = [n for n in report["nodes"] if n["index"] == 2]
    assert lost and not lost[0]["ok"]
    assert "FAILED" in out and "node 2" in out
    assert copies(cluster, source.name, "") == []
    for i in (0, 1, 3):
        assert not list(cluster.scratch_dir(i).glob(f"*{TEMP_SUFFIX}")), f"temp on host {i}"
