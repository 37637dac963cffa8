"""Faults on the emulated cluster, as the failure-semantics issue lists them (a)-(g).

Each test records how long the fault took to be reported (``seconds_to_report`` in the
JUnit XML; README "Faults and outcomes" quotes them).  Needs root; skipped elsewhere.
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

from mpistage.cluster import EmulatedCluster, HostSpec, teardown
from mpistage.cluster import system
from mpistage.cluster.cluster import mpi_environment
from mpistage.digest import file_digest
from mpistage.sink import TEMP_SUFFIX

NAME = "mstfault"
HOSTS = 5
MIDDLE = 2
TIMEOUT = 5
MISSING = [t for t in system.TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0 or bool(MISSING),
                       reason="needs root and iproute2/util-linux (network and mount namespaces)"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    teardown(NAME)
    spec = {MIDDLE: HostSpec(scratch_size="1m")}
    with EmulatedCluster(hosts=HOSTS, rate="100mbit", name=NAME, overrides=spec) as c:
        yield c


@pytest.fixture
def clean(cluster: EmulatedCluster) -> Iterator[EmulatedCluster]:
    """Every test starts with empty scratches, the full host full, every link up."""
    yield cluster
    for i in range(HOSTS):
        cluster.set_link(i, up=True)
        for pid in cluster.pids(i):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(cluster.scratch_dir(i), ignore_errors=True)  # contents only: a mount
    cluster.resize_scratch(MIDDLE, "1m")


def sample(tmp_path: Path, size: int = 32 << 20) -> Path:
    path = tmp_path / "sample.bin"
    path.write_bytes(os.urandom(size))
    return path


def command(cluster: EmulatedCluster, tmp_path: Path, src: Path, *options: str,
            keep_going: bool = False) -> list[str]:
    """The run; with ``keep_going`` under a launcher that lets the others go on when one
    rank dies (hydra's -disable-auto-cleanup)."""
    return cluster.mpiexec_command([
        sys.executable, "-m", "mpistage", "--timeout", str(TIMEOUT), "--chunk-size", "1M",
        "--report", str(tmp_path / "report.json"), *options, str(src), cluster.scratch],
        keep_going=keep_going)


def stage(cluster: EmulatedCluster, tmp_path: Path, src: Path, *options: str,
          env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict, float]:  # type: ignore[type-arg]
    (tmp_path / "report.json").unlink(missing_ok=True)
    started = time.monotonic()
    run = subprocess.run(command(cluster, tmp_path, src, *options),
                         env=mpi_environment({"MPIEXEC_TIMEOUT": "300", **(env or {})}),
                         capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    report = tmp_path / "report.json"
    return run, json.loads(report.read_text()) if report.exists() else {}, seconds


def launch(cluster: EmulatedCluster, tmp_path: Path, src: Path, *options: str,
           keep_going: bool = False) -> subprocess.Popen:  # type: ignore[type-arg]
    """The run in the background; with ``keep_going`` under a launcher that lets the
    others go on when one rank dies."""
    (tmp_path / "report.json").unlink(missing_ok=True)
    return subprocess.Popen(command(cluster, tmp_path, src, *options, keep_going=keep_going),
                            env=mpi_environment({"MPIEXEC_TIMEOUT": "300"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_data_flows(cluster: EmulatedCluster, host: int, timeout: float = 30) -> None:
    """Block until ``host`` has started writing its temp file (the transfer is on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        temps = [p for p in cluster.scratch_dir(host).iterdir() if p.name.endswith(TEMP_SUFFIX)]
        if temps and temps[0].stat().st_size > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"host {host} never started receiving")


def final_files_are_whole(cluster: EmulatedCluster, src: Path) -> list[int]:
    """Hosts holding the final file; asserts each such file is byte-identical."""
    holders = []
    for i in range(HOSTS):
        final = cluster.scratch_dir(i) / src.name
        if final.exists():
            assert file_digest(final) == file_digest(src), f"partial final file on host {i}"
            holders.append(i)
    return holders


def test_a_full_scratch_middle_node(clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    src = sample(tmp_path, 4 << 20)
    run, _, seconds = stage(clean, tmp_path, src)
    assert run.returncode == 2 and "not enough space" in run.stderr, "default: stop before sending"
    run, report, seconds = stage(clean, tmp_path, src, "--skip-bad-nodes")
    record_property("seconds_to_report", round(seconds, 2))
    assert run.returncode == 1, run.stdout + run.stderr
    assert [(n["index"], n["status"]) for n in report["nodes"] if not n["ok"]] == [(MIDDLE, "skipped")]
    assert final_files_are_whole(clean, src) == [i for i in range(HOSTS) if i != MIDDLE]


def test_f_rerun_after_space_is_freed_sends_only_to_the_failed_node(
        clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    src = sample(tmp_path, 4 << 20)
    run, _, _ = stage(clean, tmp_path, src, "--skip-bad-nodes")
    assert run.returncode == 1
    clean.resize_scratch(MIDDLE, "64m")
    run, report, seconds = stage(clean, tmp_path, src)
    record_property("seconds_to_report", round(seconds, 2))
    assert run.returncode == 0, run.stdout + run.stderr
    statuses = {n["index"]: (n["status"], n["bytes"]) for n in report["nodes"]}
    assert statuses == {i: ("copied", 4 << 20) if i == MIDDLE else ("up-to-date", 0)
                        for i in range(HOSTS)}
    assert "up to date already, nothing sent: nodes 0-1, 3-4" in run.stdout
    assert final_files_are_whole(clean, src) == list(range(HOSTS))
    # --quick decides on size and mtime alone: nothing at all to send now.
    run, report, _ = stage(clean, tmp_path, src, "--quick")
    assert run.returncode == 0 and {n["status"] for n in report["nodes"]} == {"up-to-date"}


def rank_pid(cluster: EmulatedCluster, host: int) -> int:
    pid = cluster.mpistage_pid(host)
    assert pid is not None, f"no mpistage rank on host {host}"
    return pid


def others_complete(cluster: EmulatedCluster, tmp_path: Path, src: Path, fault: str,
                    record_property) -> None:  # type: ignore[no-untyped-def]
    """Run fault-free, then again with ``fault`` ("kill" or "link") hitting the middle
    host mid-transfer: every other host ends with a verified copy, the summary names the
    lost node, exit 1, within the fault-free time + the timeout + 20 %."""
    run, report, _ = stage(cluster, tmp_path, src)
    assert run.returncode == 0, run.stdout + run.stderr
    fault_free = report["elapsed"]
    for i in range(HOSTS):
        shutil.rmtree(cluster.scratch_dir(i), ignore_errors=True)
    job = launch(cluster, tmp_path, src, keep_going=True)
    wait_until_data_flows(cluster, MIDDLE + 1)  # (a kill before: see README, When a node dies)
    if fault == "kill":
        os.kill(rank_pid(cluster, MIDDLE), signal.SIGKILL)
    else:
        cluster.set_link(MIDDLE, up=False)
    hit = time.monotonic()
    out, err = job.communicate(timeout=120)
    seconds = time.monotonic() - hit
    report = json.loads((tmp_path / "report.json").read_text())
    record_property("seconds_to_report", round(seconds, 2))
    record_property("elapsed", round(report["elapsed"], 2))
    record_property("fault_free", round(fault_free, 2))
    assert job.returncode != 0
    assert [(n["index"], n["status"]) for n in report["nodes"] if not n["ok"]] == [(MIDDLE, "failed")]
    assert f"node {MIDDLE} ({cluster.hostnames[MIDDLE]}" in out and "lost mid-transfer" in out, out + err
    assert final_files_are_whole(cluster, src) == [i for i in range(HOSTS) if i != MIDDLE]
    assert report["elapsed"] <= (fault_free + TIMEOUT) * 1.2, (report["elapsed"], fault_free)
    for i in range(HOSTS):
        if i != MIDDLE:  # the lost host could not clean up (killed) or be heard (cut off)
            assert not [p for p in os.listdir(cluster.scratch_dir(i)) if p.endswith(TEMP_SUFFIX)]


def test_b_link_down_mid_transfer(clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    clean.resize_scratch(MIDDLE, "64m")
    others_complete(clean, tmp_path, sample(tmp_path), "link", record_property)


def test_c_rank_killed_mid_transfer(clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    clean.resize_scratch(MIDDLE, "64m")
    others_complete(clean, tmp_path, sample(tmp_path), "kill", record_property)


def test_c_rank_killed_under_a_launcher_that_ends_the_job(
        clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    """hydra's default: a dead rank ends the job; the fallback is a clean failure and a
    re-run that sends only to the nodes without a copy."""
    clean.resize_scratch(MIDDLE, "64m")
    src = sample(tmp_path)
    job = launch(clean, tmp_path, src, keep_going=False)
    wait_until_data_flows(clean, MIDDLE)
    os.kill(rank_pid(clean, MIDDLE), signal.SIGKILL)
    killed = time.monotonic()
    out, err = job.communicate(timeout=120)
    seconds = time.monotonic() - killed
    record_property("seconds_to_report", round(seconds, 2))
    assert job.returncode != 0
    assert seconds <= TIMEOUT + 10
    # The launcher ends the job when a rank dies and says which one, where.
    assert "BAD TERMINATION" in out + err and "EXIT CODE: 9" in out + err, out + err
    assert f"RUNNING AT {clean.hostnames[MIDDLE]}" in out + err
    assert MIDDLE not in final_files_are_whole(clean, src)
    # Killed ranks could not clean up; the next run removes their leftovers and completes.
    deadline = time.monotonic() + 30
    while any(clean.pids(i) for i in range(HOSTS)) and time.monotonic() < deadline:
        time.sleep(0.1)  # the launcher's SIGKILLs take a moment to land
    run, report, _ = stage(clean, tmp_path, src)
    assert run.returncode == 0, run.stdout + run.stderr
    for i in range(HOSTS):
        assert os.listdir(clean.scratch_dir(i)) == [src.name]


def test_the_root_killed_mid_transfer(clean: EmulatedCluster, tmp_path: Path,
                                      record_property) -> None:  # type: ignore[no-untyped-def]
    """The source is gone: every other rank gives up within the timeout + 10 s, rank 1
    says so in one line, and no host but the root's keeps a temp file."""
    clean.resize_scratch(MIDDLE, "64m")
    src = sample(tmp_path)
    job = launch(clean, tmp_path, src, keep_going=True)
    wait_until_data_flows(clean, 1)
    os.kill(rank_pid(clean, 0), signal.SIGKILL)
    killed = time.monotonic()
    out, err = job.communicate(timeout=120)
    seconds = time.monotonic() - killed
    record_property("seconds_to_report", round(seconds, 2))
    assert job.returncode != 0 and seconds <= TIMEOUT + 10, (seconds, out + err)
    assert "mpistage: transfer failed: lost the root, node 0" in err, out + err
    assert final_files_are_whole(clean, src) == []
    for i in range(1, HOSTS):
        assert os.listdir(clean.scratch_dir(i)) == [], i


def test_d_corrupted_bytes_are_detected(clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    clean.resize_scratch(MIDDLE, "64m")
    src = sample(tmp_path, 4 << 20)
    run, report, seconds = stage(clean, tmp_path, src, "--verify",
                                 env={"MPISTAGE_TEST_FAULTS": "corrupt-chunk@1,corrupt-disk@3"})
    record_property("seconds_to_report", round(seconds, 2))
    assert run.returncode == 1, run.stdout + run.stderr
    failed = {n["index"]: n["error"] for n in report["nodes"] if not n["ok"]}
    assert sorted(failed) == [1, 3]
    assert failed[1].startswith("digest mismatch"), "corrupted in memory: the node's digest"
    assert "re-read" in failed[3], "corrupted on disk: --verify's re-read"
    assert final_files_are_whole(clean, src) == [0, 2, 4]
    assert os.listdir(clean.scratch_dir(1)) == os.listdir(clean.scratch_dir(3)) == []


@pytest.mark.parametrize("change", ["shrink", "grow", "rewrite in place"])
def test_e_source_changes_during_the_read(clean: EmulatedCluster, tmp_path: Path,
                                          record_property, change: str) -> None:  # type: ignore[no-untyped-def]
    clean.resize_scratch(MIDDLE, "64m")
    src = sample(tmp_path)
    job = launch(clean, tmp_path, src)
    wait_until_data_flows(clean, 1)
    if change == "shrink":
        os.truncate(src, 8 << 20)
    elif change == "grow":
        with open(src, "ab") as out:
            out.write(b"more")
    else:  # rsync --inplace, or a job still writing its output: same size, new bytes
        with open(src, "r+b") as out:
            out.seek(30 << 20)
            out.write(os.urandom(1 << 20))
    out, err = job.communicate(timeout=120)
    report = json.loads((tmp_path / "report.json").read_text())
    record_property("seconds_to_report", round(report["elapsed"], 2))
    assert job.returncode == 1, out + err
    expected = {"shrink": "shrank during the read",
                "grow": f"changed size ({32 << 20} to {(32 << 20) + 4} bytes) while it was read",
                "rewrite in place": "was modified while it was read"}[change]
    assert expected in report["source"]["error"], report["source"]
    assert {n["status"] for n in report["nodes"]} == {"failed"}
    assert all(os.listdir(clean.scratch_dir(i)) == [] for i in range(HOSTS)), "no copy kept"


def test_h_a_slow_node_is_not_a_dead_node(clean: EmulatedCluster, tmp_path: Path,
                                          record_property) -> None:  # type: ignore[no-untyped-def]
    """slow-commit@3 with --timeout 1: node 3's commit takes 5 s more (a long flush or
    re-read) while showing progress; it is waited for and every node holds the copy."""
    clean.resize_scratch(MIDDLE, "64m")
    src = sample(tmp_path, 4 << 20)
    run, report, seconds = stage(clean, tmp_path, src, "--timeout", "1",
                                 env={"MPISTAGE_TEST_FAULTS": "slow-commit@3"})
    record_property("seconds_to_report", round(seconds, 2))
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["ok"] and report["elapsed"] >= 5
    assert final_files_are_whole(clean, src) == list(range(HOSTS))


def test_i_a_hung_write_is_given_up_and_the_others_still_get_the_file(
        clean: EmulatedCluster, tmp_path: Path, record_property) -> None:  # type: ignore[no-untyped-def]
    """hang-write@2 with --timeout 3: node 2's next write never returns (a hung NFS, a
    dead disk).  It gives up its copy and goes on forwarding; the run ends within
    --timeout + 15 s, exit 1, the summary naming node 2, and no temp file anywhere."""
    clean.resize_scratch(MIDDLE, "64m")
    src = sample(tmp_path, 8 << 20)
    run, report, seconds = stage(clean, tmp_path, src, "--timeout", "3",
                                 env={"MPISTAGE_TEST_FAULTS": "hang-write@2"})
    record_property("seconds_to_report", round(seconds, 2))
    assert run.returncode == 1, run.stdout + run.stderr
    assert seconds < 3 + 15
    assert [n["index"] for n in report["nodes"] if not n["ok"]] == [2]
    assert "node 2 " in run.stdout and "made no progress" in run.stdout
    assert final_files_are_whole(clean, src) == [0, 1, 3, 4]
    assert all(not any(p.name.endswith(TEMP_SUFFIX) for p in clean.scratch_dir(i).iterdir())
               for i in range(HOSTS))


def test_g_symlink_planted_at_dest_is_not_followed(clean: EmulatedCluster, tmp_path: Path) -> None:
    clean.resize_scratch(MIDDLE, "64m")
    src = sample(tmp_path, 1 << 20)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (clean.scratch_dir(3) / src.name).symlink_to(victim)
    run, report, _ = stage(clean, tmp_path, src)
    assert run.returncode == 0, run.stdout + run.stderr
    assert victim.read_bytes() == b"precious"
    assert not (clean.scratch_dir(3) / src.name).is_symlink()
    assert final_files_are_whole(clean, src) == list(range(HOSTS))


def test_remove_first_on_a_disk_too_small_for_both(clean: EmulatedCluster, tmp_path: Path) -> None:
    """mrsync's -X case: the old copy must go before the new one fits."""
    clean.resize_scratch(MIDDLE, "3m")
    old = clean.scratch_dir(MIDDLE) / "sample.bin"
    old.write_bytes(os.urandom(2 << 20))
    src = sample(tmp_path, 2 << 20)
    run, _, _ = stage(clean, tmp_path, src)
    assert run.returncode == 2
    assert "--remove-first would make room" in run.stderr
    run, report, _ = stage(clean, tmp_path, src, "--remove-first")
    assert run.returncode == 0, run.stdout + run.stderr
    assert final_files_are_whole(clean, src) == list(range(HOSTS))
