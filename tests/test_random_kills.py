"""A random rank killed (SIGKILL) at a random moment of the transfer, many times over.

On a 6-host emulated cluster under hydra's ``-disable-auto-cleanup`` (the others go on),
each run draws the algorithm, the victim (the root included) and the moment; every run
must end with no partial file at any final path, within ``--timeout`` + 10 s of the
kill, and name the killed rank: the report's line for its node (lost mid-transfer), or,
for the root, rank 1's one line; a rank killed after its copy was in place may be
reported with that copy, whole.  MPICH may end a survivor from inside MPI ("OFI poll
failed ... Transport endpoint is not connected", an internal assertion; about one run in
40): such runs are counted and held to the first two promises only, and the temp files
such a process could not remove are counted, not failed on (the next run removes them).  A launch whose
``MPI_Init`` never completes (hydra, before mpistage runs: about one in 40 here) is
retried.  Needs root; skipped elsewhere.  ``MPISTAGE_KILL_RUNS``
sets the number of runs (default 50), ``MPISTAGE_KILL_SEED`` repeats a series.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpistage.cluster import EmulatedCluster, teardown
from mpistage.cluster import system
from mpistage.cluster.cluster import mpi_environment
from mpistage.digest import file_digest
from mpistage.sink import TEMP_SUFFIX

NAME = "mstkill"
HOSTS = 6
TIMEOUT = 2
SIZE = 8 << 20
RUNS = int(os.environ.get("MPISTAGE_KILL_RUNS", "50"))
ALGORITHMS = ("chain", "binomial", "tree", "flat")  # twotree: not re-formed yet (recovery.can_recover)
#: MPICH ending a survivor from inside MPI (README: When a node dies); the run is then
#: held to no partial file and no hang, but nobody is left to name the lost node.
MPICH_ABORTS = ("OFI poll failed", "Assertion failed in file /mpich", "Fatal error in internal_")
MISSING = [t for t in system.TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0 or bool(MISSING),
                       reason="needs root and iproute2/util-linux (network and mount namespaces)"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    teardown(NAME)
    with EmulatedCluster(hosts=HOSTS, rate="100mbit", name=NAME) as c:
        yield c


def transfer_started(cluster: EmulatedCluster, deadline: float) -> bool:
    while time.monotonic() < deadline:
        for host in range(1, HOSTS):
            if any(p.name.endswith(TEMP_SUFFIX) for p in cluster.scratch_dir(host).iterdir()):
                return True
        time.sleep(0.01)
    return False


class LaunchFailed(Exception):
    """The job never started transferring (stuck in ``MPI_Init``)."""


def one_run(cluster: EmulatedCluster, src: Path, report: Path, rng: random.Random,
            leftovers: Counter[str]) -> str:
    """One run with one kill; asserts its promises and says what happened."""
    algorithm, victim = rng.choice(ALGORITHMS), rng.randrange(HOSTS)
    delay = rng.uniform(0, 1.2)  # 8 MiB at 100 Mbit/s: ~0.7 s a hop, ~1 s in all
    for host in range(HOSTS):
        for leftover in cluster.scratch_dir(host).iterdir():
            leftover.unlink()
    report.unlink(missing_ok=True)
    command = cluster.mpiexec_command([
        sys.executable, "-m", "mpistage", "--timeout", str(TIMEOUT), "-a", algorithm,
        "-c", "512K", "--report", str(report), str(src), cluster.scratch], keep_going=True)
    job = subprocess.Popen(command, env=mpi_environment({"MPIEXEC_TIMEOUT": "120"}),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    what = f"{algorithm}, kill node {victim} after {delay:.2f} s"
    if not transfer_started(cluster, time.monotonic() + 30):
        job.kill()
        job.communicate()
        raise LaunchFailed(what)
    time.sleep(delay)
    pid = cluster.mpistage_pid(victim)
    killed = time.monotonic()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    out, err = job.communicate(timeout=180)
    seconds = time.monotonic() - killed
    what += f": {out}{err}"
    assert seconds <= TIMEOUT + 10, f"ended {seconds:.1f} s after the kill; {what}"
    whole = []
    for host in range(HOSTS):
        final = cluster.scratch_dir(host) / src.name
        if final.exists():
            assert file_digest(final) == file_digest(src), f"partial file on host {host}; {what}"
            whole.append(host)
        if host != victim and any(p.endswith(TEMP_SUFFIX)
                                  for p in os.listdir(cluster.scratch_dir(host))):
            leftovers[f"host {host} after: {what.splitlines()[0][:200]}"] += 1
    if pid is None:
        assert job.returncode == 0 and whole == list(range(HOSTS)), what
        return "finished before the kill"
    if any(sign in out + err for sign in MPICH_ABORTS):
        return "MPICH aborted a survivor from inside MPI"
    if victim == 0:
        if whole == list(range(HOSTS)):
            return "root killed after the end"
        if "rank 0's report did not arrive" in err:
            return "root killed while it relayed the report (copies in place)"
        assert f"lost the root, node 0 ({cluster.hostnames[0]})" in err, what
        assert whole == [], what
        return "root lost: every rank gave up"
    nodes = json.loads(report.read_text())["nodes"] if report.exists() else None
    assert nodes is not None, f"no report; {what}"
    mine = nodes[victim]
    if mine["ok"]:  # killed after its copy was in place (and reported)
        assert victim in whole, what
        return "killed after its copy was in place"
    assert mine["status"] == "failed" and ("lost mid-transfer" in mine["error"]
                                           or "no status" in mine["error"]), what
    assert f"node {victim} ({cluster.hostnames[victim]}" in out, what
    assert all(n["ok"] for n in nodes if n["index"] != victim), f"others incomplete; {what}"
    assert whole == [h for h in range(HOSTS) if h != victim], what
    return "lost mid-transfer, the others completed"


def test_a_random_rank_killed_at_a_random_moment(cluster: EmulatedCluster, tmp_path: Path,
                                                 record_property) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("MPISTAGE_KILL_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    src = tmp_path / "sample.bin"
    src.write_bytes(os.urandom(SIZE))
    outcomes: Counter[str] = Counter()
    leftovers: Counter[str] = Counter()
    run = launches = 0
    while run < RUNS:
        launches += 1
        assert launches <= RUNS + 5, f"{launches - run} launches never got past MPI_Init"
        try:
            outcomes[one_run(cluster, src, tmp_path / "report.json", rng, leftovers)] += 1
        except LaunchFailed as exc:
            outcomes["relaunched: MPI_Init never completed"] += 1
            print(f"launch {launches}: {exc}: MPI_Init never completed; launching again")
            continue
        except AssertionError as exc:
            raise AssertionError(f"run {run} of seed {seed} (MPISTAGE_KILL_SEED={seed}): "
                                 f"{exc}") from None
        run += 1
    record_property("seed", seed)
    record_property("outcomes", dict(outcomes))
    record_property("temp_files_left", sum(leftovers.values()))
    print(f"\n{RUNS} runs, seed {seed}: {dict(outcomes)}; temp files left by aborted "
          f"survivors: {dict(leftovers) or 'none'}")
