"""mpistage under a real Slurm on the emulated cluster: every launch a user may pick,
the sbcast replacement, the prolog and epilog, and clean stops on SIGTERM.

Needs root, iproute2 and Debian's slurmctld, slurmd, slurm-client and munge (``.ci/run``
installs them); skipped with the reason elsewhere.  One 4-host Slurm at 100 Mbit/s
serves the module, so a 64 MiB transfer takes about 6 s: long enough to interrupt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpistage import mpi_library
from mpistage.cli.sbcast import SRUN_MPI_PLUGIN
from mpistage.cluster import EmulatedCluster
from mpistage.cluster import slurm as slurm_module
from mpistage.cluster import system, teardown
from mpistage.cluster.launch import mpi_environment
from mpistage.cluster.slurm import SlurmSettings
from mpistage.digest import file_digest

NAME = "slmtest"
TOP = Path(__file__).resolve().parents[1]
JOBSCRIPTS = TOP / "jobscripts"
NOBODY = 65534
MISSING = [t for t in system.TOOLS if shutil.which(t) is None] + slurm_module.missing_tools()
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(MISSING),
        reason="needs root, iproute2 and Slurm (apt-get install slurmctld slurmd slurm-client "
        "munge)" + (f"; missing {', '.join(MISSING)}" if MISSING else ""),
    ),
]
HOSTS = 4
#: The srun plugin this Python's MPI needs: pmi2 (MPICH wheel), pmix (Open MPI wheel).
SRUN_MPI = f"--mpi={SRUN_MPI_PLUGIN[mpi_library.family()]}"
#: The same MPI in the unprivileged user's venv.
MPI_EXTRA = mpi_library.family()
TEMP = re.compile(r"\.mpistage-tmp$")


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    teardown(NAME)
    settings = SlurmSettings(prolog=str(JOBSCRIPTS / "prolog.sh"),
                             epilog=str(JOBSCRIPTS / "epilog.sh"))
    with EmulatedCluster(hosts=HOSTS, rate="100mbit", name=NAME, slurm=settings) as c:
        yield c


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A directory every user can read and write (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mpistage-slurm-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def user_venv(shared: Path) -> Path:
    """mpistage and this MPI's wheel in a venv that user nobody can run (this machine's
    own Python may live under root's private home), as a site would install it."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no /usr/bin/python3 to build a venv for an unprivileged user")
    venv = shared / "venv"
    made = subprocess.run([system_python, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a venv with {system_python}: {made.stderr.strip()[-200:]}")
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         f"{TOP}[{MPI_EXTRA}]"], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    return venv


def sample(directory: Path, size: int, name: str = "input.bin") -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    path.chmod(0o644)
    return path


def slurm(cluster: EmulatedCluster, *argv: str, user_venv: Path | None = None,
          timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A Slurm client command on the head host, as root or (with ``user_venv``) as
    user nobody with that venv first on PATH."""
    env = mpi_environment({"MPIEXEC_TIMEOUT": "300"})
    prefix: list[str] = []
    if user_venv is not None:
        env["PATH"] = f"{user_venv / 'bin'}:/usr/bin:/bin"
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    run = cluster.run(0, [*prefix, *argv], env=env, capture_output=True, text=True,
                      timeout=timeout)
    if check:
        assert run.returncode == 0, f"{' '.join(argv)}: exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    return run


def scratch_listing(cluster: EmulatedCluster) -> dict[int, list[str]]:
    """Everything in every host's scratch, as relative paths."""
    return {i: sorted(str(p.relative_to(cluster.scratch_dir(i)))
                      for p in cluster.scratch_dir(i).rglob("*")) for i in range(cluster.hosts)}


def clear_scratch(cluster: EmulatedCluster) -> None:
    """Empty every node's scratch once the previous test's jobs are gone, epilogs included
    (a job stays in squeue, state CG, until its epilog has finished on every node)."""
    wait_for(lambda: slurm(cluster, "squeue", "--noheader", "--all").stdout.strip() == "", 60,
             "the previous jobs and their epilogs to finish")
    for i in range(cluster.hosts):
        for entry in cluster.scratch_dir(i).iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def copies_match(cluster: EmulatedCluster, relative: str, source: Path) -> list[bool]:
    digest = file_digest(source)
    return [(cluster.scratch_dir(i) / relative).is_file()
            and file_digest(cluster.scratch_dir(i) / relative) == digest
            for i in range(cluster.hosts)]


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def temps_everywhere(cluster: EmulatedCluster) -> bool:
    return all(any(TEMP.search(name) for name in names)
               for names in scratch_listing(cluster).values())


def job_gone(cluster: EmulatedCluster, job: str) -> bool:
    run = slurm(cluster, "squeue", "--noheader", "--jobs", job, check=False)
    return job not in run.stdout


# -- bring-up and teardown ----------------------------------------------------------------

def test_slurm_up_and_down_leave_nothing_behind() -> None:
    from tests.test_cluster import snapshot

    teardown("slmlife")
    before = snapshot()
    cluster = EmulatedCluster(hosts=2, rate="100mbit", name="slmlife",
                              slurm=SlurmSettings()).up()
    try:
        run = slurm(cluster, "sinfo", "--noheader", "--format=%P %D %T")
        assert run.stdout.split() == ["main*", "2", "idle"]
        daemons = subprocess.run(["pgrep", "-f", "slurmd|slurmctld|munged.*slmlife"],
                                 capture_output=True, text=True).stdout.split()
        assert len(daemons) >= 4  # munged, slurmctld, 2 slurmd
    finally:
        removed = cluster.down()
    assert any(item.startswith("daemon munged") for item in removed)
    assert snapshot() == before
    left = subprocess.run(["pgrep", "-af", "slmlife"], capture_output=True, text=True).stdout
    assert left == ""


# -- launches -----------------------------------------------------------------------------

def test_srun_stages_to_every_node(cluster: EmulatedCluster, shared: Path) -> None:
    """srun directly: --mpi=pmi2 with MPICH, --mpi=pmix with Open MPI."""
    clear_scratch(cluster)
    src = sample(shared, 3 << 20)
    run = slurm(cluster, "srun", f"--nodes={HOSTS}", "--ntasks-per-node=1", SRUN_MPI,
                sys.executable, "-m", "mpistage", "-q", str(src), cluster.scratch)
    assert run.stderr == ""
    assert copies_match(cluster, src.name, src) == [True] * HOSTS


@pytest.mark.parametrize("ppn", [1, 2])
def test_mpiexec_inside_salloc(cluster: EmulatedCluster, shared: Path, ppn: int) -> None:
    """The MPI library's mpiexec inside an allocation (hydra's or PRRTE's Slurm
    launcher): one rank per node, or several (one writer per node)."""
    clear_scratch(cluster)
    src = sample(shared, (2 << 20) + 17)
    report = shared / f"salloc-{ppn}.json"
    slurm(cluster, "salloc", f"--nodes={HOSTS}", f"--ntasks-per-node={ppn}",
          "mpiexec", *mpi_library.ranks_per_node_options(ppn),
          sys.executable, "-m", "mpistage", "-q",
          "--report", str(report), str(src), cluster.scratch)
    data = json.loads(report.read_text())
    assert data["ok"] and data["node_count"] == HOSTS and data["rank_count"] == HOSTS * ppn
    assert sorted(n["host"] for n in data["nodes"]) == cluster.hostnames
    assert copies_match(cluster, src.name, src) == [True] * HOSTS


def test_sbatch_stage_and_run_as_a_user_in_the_prolog_directory(
        cluster: EmulatedCluster, shared: Path, user_venv: Path) -> None:
    """The job script's interface, run by an unprivileged user: the prolog's per-job
    directory (owned by the user), every node's output labelled, nothing left after."""
    clear_scratch(cluster)
    src = sample(shared, 5 << 20)
    out = shared / "stage-and-run-%j.txt"
    run = slurm(
        cluster, "sbatch", "--wait", "--parsable", f"--nodes={HOSTS}", f"--chdir={shared}",
        f"--output={out}", f"--export=ALL,INPUT={src}", str(JOBSCRIPTS / "stage-and-run.sbatch"),
        "sh", "-c", 'echo "$(id -un) $(stat -c %U:%a "${1%/*}") ${1%/*} $(cksum < "$1")"', "sh",
        user_venv=user_venv)
    job = run.stdout.strip().split(";")[0]
    text = Path(str(out).replace("%j", job)).read_text()
    with src.open("rb") as data:
        checksum = subprocess.run(["cksum"], stdin=data, capture_output=True, text=True).stdout.split()
    for host in cluster.hostnames:
        line = next(line for line in text.splitlines() if line.startswith(f"{host}: "))
        user, owner, directory, *got = line.split(": ", 1)[1].split()
        assert (user, owner, directory) == ("nobody", "nobody:700", f"/scratch/job-{job}")
        assert got == checksum
    assert "all 4 nodes hold a verified copy" in text
    wait_for(lambda: all(not names for names in scratch_listing(cluster).values()), 30,
             "the epilog to empty every node's scratch")


def test_sbcast_replacement_in_a_job_script(cluster: EmulatedCluster, shared: Path) -> None:
    """``mpistage-sbcast`` as sbcast's one line: --force, --preserve, verified copies."""
    clear_scratch(cluster)
    src = sample(shared, 4 << 20, "model.bin")
    src.chmod(0o775)
    script = shared / "sbcast-job.sh"
    script.write_text(f"#!/bin/bash\numask 022\n"
                      f"mpistage-sbcast --preserve {src} /scratch/model.bin || exit $?\n"
                      "stat -c %a /scratch/model.bin\n")
    out = shared / "sbcast-%j.txt"
    first = slurm(cluster, "sbatch", "--wait", "--parsable", f"--nodes={HOSTS}",
                  f"--output={out}", str(script))
    text = Path(str(out).replace("%j", first.stdout.strip())).read_text()
    assert "all 4 nodes hold a verified copy" in text and text.splitlines()[-1] == "775"
    assert copies_match(cluster, "model.bin", src) == [True] * HOSTS

    # A different file at DEST: refused without --force (sbcast's rule), nothing changed.
    old = file_digest(src)
    src.write_bytes(os.urandom(4 << 20))
    script.write_text(f"#!/bin/bash\nmpistage-sbcast {src} /scratch/model.bin\n")
    refused = slurm(cluster, "sbatch", "--wait", "--parsable", f"--nodes={HOSTS}",
                    f"--output={out}", str(script), check=False)
    text = Path(str(out).replace("%j", refused.stdout.strip().split(";")[0])).read_text()
    assert refused.returncode != 0
    assert "exists and differs from the source (--force replaces it)" in text
    assert all(file_digest(cluster.scratch_dir(i) / "model.bin") == old for i in range(HOSTS))

    script.write_text(f"#!/bin/bash\nmpistage-sbcast --force {src} /scratch/model.bin\n")
    slurm(cluster, "sbatch", "--wait", f"--nodes={HOSTS}", f"--output={out}", str(script))
    assert copies_match(cluster, "model.bin", src) == [True] * HOSTS


def test_a_stream_through_srun_and_the_sbcast_replacement(cluster: EmulatedCluster,
                                                          shared: Path) -> None:
    """SRC -: srun --input=0 forwards a stream to task 0 with back-pressure (MPICH's hydra
    and Open MPI's mpirun cannot: README, Streams); ``producer | mpistage-sbcast -``."""
    clear_scratch(cluster)
    src = sample(shared, 24 << 20, "stream.bin")
    slurm(cluster, "sh", "-c", f"cat {src} | srun --nodes={HOSTS} --ntasks-per-node=1 "
          f"--input=0 {SRUN_MPI} {sys.executable} -m mpistage -q - {cluster.scratch}/direct.bin")
    assert copies_match(cluster, "direct.bin", src) == [True] * HOSTS
    script = shared / "stream-job.sh"
    script.write_text(f"#!/bin/bash\nset -o pipefail\n"
                      f"cat {src} | mpistage-sbcast --force - /scratch/job.bin\n")
    out = shared / "stream-%j.txt"
    job = slurm(cluster, "sbatch", "--wait", "--parsable", f"--nodes={HOSTS}",
                f"--output={out}", str(script))
    text = Path(str(out).replace("%j", job.stdout.strip())).read_text()
    assert "standard input (24.0 MiB)" in text and "all 4 nodes hold a verified copy" in text
    assert copies_match(cluster, "job.bin", src) == [True] * HOSTS


# -- clean stops --------------------------------------------------------------------------

def test_scancel_mid_transfer_stops_every_rank_cleanly(
        cluster: EmulatedCluster, shared: Path, user_venv: Path) -> None:
    """scancel sends SIGTERM to every task: each removes its temp file and exits 143
    within 5 s (long before SIGKILL at KillWait, 30 s); rank 0 says so in one line; no
    final path holds a partial file; after the job nothing is left on any node."""
    clear_scratch(cluster)
    src = sample(shared, 64 << 20)
    script = shared / "cancel-job.sh"
    script.write_text(f"#!/bin/bash\nsrun {SRUN_MPI} --ntasks-per-node=1 mpistage -c 1M {src} "
                      "/scratch/job-$SLURM_JOB_ID/\n")
    out = shared / "cancel-%j.txt"
    run = slurm(cluster, "sbatch", "--parsable", f"--nodes={HOSTS}", f"--chdir={shared}",
                f"--output={out}", str(script), user_venv=user_venv)
    job = run.stdout.strip().split(";")[0]
    wait_for(lambda: temps_everywhere(cluster), 60, "the transfer to start on every node")
    cancelled = time.monotonic()
    slurm(cluster, "scancel", job, user_venv=user_venv)
    wait_for(lambda: job_gone(cluster, job), 30, "the job to end")
    assert time.monotonic() - cancelled < 10  # Slurm's own bookkeeping included
    text = Path(str(out).replace("%j", job)).read_text()
    assert text.count("mpistage: interrupted by SIGTERM") == 1, text
    codes = re.findall(r"task \d+: Exited with exit code (\d+)", text)
    if mpi_library.family() == "openmpi":
        # Open MPI: a task whose neighbour in the chain ended first can be ended by Open
        # MPI's own error handling (exit 14, "writev failed: Broken pipe") before its
        # SIGTERM handler ran; the epilog removes what it left.  README: Signals.
        assert len(codes) == HOSTS and set(codes) <= {"143", "14"} and "143" in codes, text
    else:
        assert codes == ["143"] * HOSTS, text
    wait_for(lambda: all(not names for names in scratch_listing(cluster).values()), 30,
             "the epilog to empty every node's scratch")


@pytest.mark.skipif(mpi_library.family() != "mpich",
                    reason="srun --mpi=pmix (Open MPI) ends the step when a task dies "
                    "(README: When a node dies)")
@pytest.mark.parametrize("chunk", [None, "64K"], ids=["default options", "64 KiB chunks"])
def test_srun_a_lost_node_costs_only_itself(cluster: EmulatedCluster, shared: Path,
                                            chunk: str | None, record_property) -> None:  # type: ignore[no-untyped-def]
    """srun (which lets the others go on when a task dies): node 2's rank killed
    mid-transfer; the others hold verified copies and no temp file, and the summary names
    node 2 alone."""
    clear_scratch(cluster)
    src = sample(shared, 32 << 20)
    report = shared / "lost-report.json"
    report.unlink(missing_ok=True)
    argv = ["srun", f"--nodes={HOSTS}", "--ntasks-per-node=1", SRUN_MPI, sys.executable,
            "-m", "mpistage", "--timeout", "5", *(["-c", chunk] if chunk else []),
            "--report", str(report), str(src), cluster.scratch]
    job = subprocess.Popen(cluster.command(0, argv),
                           env=mpi_environment({"MPIEXEC_TIMEOUT": "300"}),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = 2

    def receiving() -> bool:
        return any(TEMP.search(p.name) and p.stat().st_size > 0
                   for p in cluster.scratch_dir(victim).iterdir())

    wait_for(receiving, 60, "node 2 to receive")
    pid = cluster.mpistage_pid(victim)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    out, err = job.communicate(timeout=120)
    record_property("seconds_to_report", round(time.monotonic() - killed, 2))
    record_property("mpiexec_status", job.returncode)
    nodes = json.loads(report.read_text())["nodes"]
    assert [n["index"] for n in nodes if not n["ok"]] == [victim], out + err
    assert copies_match(cluster, src.name, src) == [i != victim for i in range(HOSTS)]
    assert f"node {victim} ({cluster.hostnames[victim]}" in out and "lost the root" not in out + err
    listing = scratch_listing(cluster)
    assert not [n for i in range(HOSTS) if i != victim for n in listing[i] if TEMP.search(n)]
    # Rank 0 ended the step (MPI_Abort): MPICH's shared-memory files of the ranks it
    # killed stay in /dev/shm (as after any kill -9), for the tests after this one.
    for i in range(HOSTS):
        for name in os.listdir(cluster.shm_dir(i)):
            if name.startswith("mpich_shm_"):
                os.unlink(cluster.shm_dir(i) / name)


def _stage_in_background(cluster: EmulatedCluster, src: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cluster.mpiexec_command([sys.executable, "-m", "mpistage", "-c", "1M", str(src),
                                 cluster.scratch]),
        env=mpi_environment({"MPIEXEC_TIMEOUT": "300"}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _pids(pattern: str) -> list[int]:
    listing = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in listing.split()]


@pytest.mark.parametrize("target", ["ranks", "mpiexec"])
def test_sigterm_under_mpiexec_leaves_nothing(cluster: EmulatedCluster, shared: Path,
                                              target: str) -> None:
    """``kill -TERM`` of every rank, or of hydra's mpiexec (which forwards SIGTERM to
    the ranks): exit 143 within 5 s, one line from rank 0, no temp or partial file."""
    clear_scratch(cluster)
    shm_before = [sorted(os.listdir(cluster.shm_dir(i))) for i in range(HOSTS)]
    if mpi_library.family() == "mpich":
        assert shm_before == [[]] * HOSTS, "MPICH leaves no shared-memory file after a job"
    src = sample(shared, 64 << 20, f"sigterm-{target}.bin")
    started = _stage_in_background(cluster, src)
    try:
        wait_for(lambda: temps_everywhere(cluster), 60, "the transfer to start on every node")
        if target == "ranks":
            pids = _pids(rf"^\S*python\S* -m mpistage -c 1M {re.escape(str(src))}")
            assert len(pids) == HOSTS
        else:
            # hydra's mpiexec; Open MPI's mpiexec execs prterun
            pids = _pids(rf"^\S*/(mpiexec|prterun) (-launcher ssh|--prtemca) .* "
                         rf"{re.escape(str(src))}")
            assert len(pids) == 1
        signalled = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        _, stderr = started.communicate(timeout=30)
        assert time.monotonic() - signalled < 5
    finally:
        if started.poll() is None:
            started.kill()
    assert [line for line in stderr.splitlines() if line.startswith("mpistage")] == [
        "mpistage: interrupted by SIGTERM: every rank stopped and removed its unfinished copy; "
        "copies already in place are complete (exit status 143)"]
    if target == "mpiexec" and mpi_library.family() == "openmpi":
        # Open MPI's mpiexec (prterun) forwards SIGTERM too, but exits 1 itself, and its
        # own ending of the job can end a rank before that rank's handler ran (seen on
        # the node at the far end of the chain): a temp file, never a final path, may be
        # left, which the epilog removes (jobscripts/epilog.sh).  README: Signals.
        assert started.returncode == 1, stderr
        left = scratch_listing(cluster)
        assert all(TEMP.search(name) for names in left.values() for name in names), left
    else:
        assert started.returncode == 128 + signal.SIGTERM, stderr
        assert scratch_listing(cluster) == {i: [] for i in range(HOSTS)}
    # MPI's shared-memory files, which MPI_Finalize would have removed, are gone too.
    # (Compared with before: the sm_segment files that Open MPI left in /dev/shm after
    # the earlier Slurm jobs of this module are not this run's.)
    assert [sorted(os.listdir(cluster.shm_dir(i))) for i in range(HOSTS)] == shm_before

