"""The emulated cluster: bring-up and teardown, shaping, and mpistage across real hosts.

Needs root, iproute2 and util-linux (CI has them); skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mpistage
from mpistage.cluster import ClusterError, EmulatedCluster, HostSpec, parse_rate, system, teardown
from mpistage.digest import file_digest

NAME = "msttest"  # not the default name, so a user's own cluster is never touched
MISSING = [t for t in system.TOOLS if shutil.which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(MISSING),
    reason="needs root and iproute2/util-linux (network and mount namespaces)"
    + (f"; missing {', '.join(MISSING)}" if MISSING else ""),
)
pytestmark = pytest.mark.cluster
TIMEOUT = {"MPIEXEC_TIMEOUT": "300"}


def snapshot() -> dict[str, object]:
    """What a cluster could leave behind on the machine.

    The mount of ``/run/netns`` itself is not counted: iproute2 makes it at the first
    ``ip netns add`` on a machine and keeps it for every later namespace (it is there
    after every run but the first, so a count including it passes only where the tests
    ran before).  What matters is that no namespace of ours stays in it: ``netns``.
    """
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return {
        "netns": sorted(run("ip", "netns", "list").split()),
        "links": sorted(line.split()[0] for line in run("ip", "-br", "link").splitlines()),
        "mounts": sorted(m for m in mounts if m.split()[1] != "/run/netns"),
        "state": system.STATE_ROOT.exists(),
        "scratch": os.path.exists("/scratch"),
    }


def sample(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "sample.bin"
    path.write_bytes(os.urandom(size))
    return path


def stage_on(cluster: EmulatedCluster, tmp_path: Path, src: Path, *options: str,
             ppn: int = 1, hosts: list[int] | None = None) -> tuple[subprocess.CompletedProcess, dict]:  # type: ignore[type-arg]
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    run = cluster.mpiexec(
        [sys.executable, "-m", "mpistage", "--report", str(report), *options, str(src),
         cluster.scratch],
        ppn=ppn, hosts=hosts, env=TIMEOUT, capture_output=True, text=True, timeout=600,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return run, data


# -- pure logic, no root needed -----------------------------------------------------------

@pytest.mark.parametrize("text, bits", [("100mbit", 10**8), ("1gbit", 10**9), ("500kbit", 5 * 10**5),
                                        ("1g", 10**9), ("2.5mbit", 2_500_000), (1234, 1234)])
def test_parse_rate(text: str | int, bits: int) -> None:
    assert parse_rate(text) == bits


def test_bad_names_and_sizes_are_refused() -> None:
    with pytest.raises(ClusterError, match="invalid cluster name"):
        EmulatedCluster(name="Bad-Name")
    with pytest.raises(ClusterError, match="invalid host count"):
        EmulatedCluster(hosts=0)
    with pytest.raises(ClusterError, match="override for host 9"):
        EmulatedCluster(hosts=4, overrides={9: HostSpec(rate=1)})
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate("fast")


def test_clear_error_when_not_root_or_tools_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterError, match="needs root"):
        EmulatedCluster(hosts=2, name=NAME).up()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool in ("ip", "tc") else "/bin/x")
    with pytest.raises(ClusterError, match="missing ip, tc: on Debian, apt-get install iproute2"):
        EmulatedCluster(hosts=2, name=NAME).up()


def test_command_line_reports_not_root_in_one_line() -> None:
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and no setpriv to drop privileges")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        prefix = []
    run = subprocess.run([*prefix, sys.executable, "-m", "mpistage.cluster", "--name", NAME, "up",
                          "--hosts", "2"], capture_output=True, text=True, timeout=60)
    if "No module named" in run.stderr:
        pytest.skip("the interpreter is not usable by user nobody")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "mpistage.cluster: error: the emulated cluster needs root (network and mount namespaces)"]


# -- life cycle ---------------------------------------------------------------------------

@needs_root
def test_up_and_down_leave_nothing_behind() -> None:
    teardown(NAME)
    before = snapshot()
    cluster = EmulatedCluster(hosts=3, rate="100mbit", name=NAME).up()
    try:
        assert set(cluster.hostnames) | {cluster.switch} <= set(snapshot()["netns"])  # type: ignore[operator]
        names = [cluster.run(i, ["hostname"], capture_output=True, text=True).stdout.strip()
                 for i in range(3)]
        assert names == cluster.hostnames, "every host has its own host name"
        cluster.run(1, ["sh", "-c", "echo one > /scratch/mine"], check=True)
        assert (cluster.scratch_dir(1) / "mine").read_text() == "one\n"
        assert not (cluster.scratch_dir(0) / "mine").exists(), "scratch is private per host"
        assert not Path("/scratch/mine").exists(), "nothing lands in the machine's own /scratch"
        with pytest.raises(ClusterError, match="already exists"):
            EmulatedCluster(hosts=2, name=NAME).up()
    finally:
        cluster.down()
    assert snapshot() == before
    assert cluster.down() == [], "teardown is idempotent"
    assert snapshot() == before


@needs_root
def test_teardown_on_error_inside_the_context() -> None:
    teardown(NAME)
    before = snapshot()
    with pytest.raises(RuntimeError, match="boom"):
        with EmulatedCluster(hosts=2, name=NAME):
            raise RuntimeError("boom")
    assert snapshot() == before


@needs_root
def test_command_line_run_is_one_command_and_cleans_up() -> None:
    teardown(NAME)
    before = snapshot()
    run = subprocess.run(
        [sys.executable, "-m", "mpistage.cluster", "--name", NAME, "run", "--hosts", "3",
         "--", "hostname"], capture_output=True, text=True, timeout=120,
        env={**os.environ, **TIMEOUT},
    )
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.split()) == [f"{NAME}-h{i}" for i in range(3)]
    assert snapshot() == before


# -- shaping and MPI over the links -------------------------------------------------------

@pytest.fixture(scope="module")
def cluster8() -> Iterator[EmulatedCluster]:
    if os.geteuid() != 0 or MISSING:
        pytest.skip("needs root and iproute2/util-linux")
    teardown(NAME)
    with EmulatedCluster(hosts=8, rate="100mbit", name=NAME) as cluster:
        yield cluster


@needs_root
def test_point_to_point_throughput_matches_the_shaping(cluster8: EmulatedCluster) -> None:
    tcp = cluster8.probe(0, 5, seconds=2.0)
    assert 90e6 <= tcp <= 110e6, f"TCP probe {tcp / 1e6:.1f} Mbit/s, link 100 Mbit/s"
    # MPI too: a transport that silently used shared memory between the namespaces would
    # bypass the shaping and run at GB/s.
    size = 8 << 20
    run = cluster8.mpiexec([sys.executable, "-m", "mpistage.cluster.p2p", str(size)],
                           hosts=[0, 5], env=TIMEOUT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    mpi = size * 8 / float(run.stdout.split()[-1])
    assert 80e6 <= mpi <= 110e6, f"MPI point-to-point {mpi / 1e6:.1f} Mbit/s over a 100 Mbit/s link"


@needs_root
@pytest.mark.parametrize("algorithm", mpistage.ALGORITHMS)
def test_mpistage_on_8_hosts_every_algorithm(cluster8: EmulatedCluster, tmp_path: Path,
                                            algorithm: str) -> None:
    src = sample(tmp_path, 32 << 20)
    run, report = stage_on(cluster8, tmp_path, src, "--algorithm", algorithm, "--chunk-size", "1M")
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["ok"] and report["node_count"] == 8
    assert sorted(n["host"] for n in report["nodes"]) == sorted(cluster8.hostnames)
    digest = file_digest(src)
    for i in range(8):
        copy = cluster8.scratch_dir(i) / src.name
        assert file_digest(copy) == digest, f"host {i}"
        copy.unlink()
    # 32 MiB over 100 Mbit/s links cannot take less than S·8/rate: the bytes crossed them.
    assert report["transfer_seconds"] >= 0.9 * (32 << 20) * 8 / 1e8


@needs_root
def test_several_ranks_per_host_one_writer_each(cluster8: EmulatedCluster, tmp_path: Path) -> None:
    src = sample(tmp_path, 2 << 20)
    run, report = stage_on(cluster8, tmp_path, src, ppn=3, hosts=[0, 1, 2, 3])
    assert run.returncode == 0, run.stdout + run.stderr
    assert (report["node_count"], report["rank_count"]) == (4, 12)
    assert sum(r["leader"] for r in report["ranks"]) == 4
    for i in range(4):
        assert os.listdir(cluster8.scratch_dir(i)) == [src.name]
        (cluster8.scratch_dir(i) / src.name).unlink()


def text_sample(tmp_path: Path, size: int) -> Path:
    """Compressible bytes (CSV-like lines)."""
    import random

    rng = random.Random(5)
    path = tmp_path / "text.csv"
    lines = (f"{i},w{rng.randrange(3000)},{rng.randrange(10**6)}\n" for i in range(size))
    path.write_bytes("".join(lines).encode()[:size])
    return path


@needs_root
def test_a_compressed_stream_into_every_hosts_command(cluster8: EmulatedCluster,
                                                      tmp_path: Path) -> None:
    """--from-cmd on the root, --compress zstd on the wire, --pipe on every host."""
    src = text_sample(tmp_path, 6 << 20)
    report_path = tmp_path / "report.json"
    run = cluster8.mpiexec(
        [sys.executable, "-m", "mpistage", "--report", str(report_path), "--chunk-size", "256K",
         "--compress", "zstd", "--from-cmd", f"cat {src}",
         "--pipe", f"cat > {cluster8.scratch}/piped; echo 'host {{host}} done' >&2"],
        env=TIMEOUT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["codec"] == "zstd:3" and report["source"]["size"] == src.stat().st_size
    assert report["wire_bytes"] < src.stat().st_size / 2
    assert "took the verified stream" in run.stdout and "done" in run.stdout
    digest = file_digest(src)
    for i in range(8):
        assert file_digest(cluster8.scratch_dir(i) / "piped") == digest, f"host {i}"
        (cluster8.scratch_dir(i) / "piped").unlink()


@needs_root
def test_explain_on_8_hosts_probes_and_chooses_without_moving_data(cluster8: EmulatedCluster,
                                                                   tmp_path: Path) -> None:
    """``--explain`` across hosts: the root probes its first link while the other ranks
    wait; the cores' share is gathered before the probe (a rank's first message to a
    root busy probing was once refused: EAGAIN after MPICH's bounded retries, 1 run in
    14).  Three runs: each prints the table and moves no byte."""
    src = sample(tmp_path, 8 << 20)
    for _ in range(3):
        run = cluster8.mpiexec([sys.executable, "-m", "mpistage", "--explain", str(src),
                                cluster8.scratch], env=TIMEOUT, capture_output=True,
                               timeout=600)
        said = run.stdout.decode() + run.stderr.decode()
        assert run.returncode == 0, said
        assert "8 nodes to serve; parameters from the quick measurement" in said, said
        assert "<- chosen" in said, said
        assert all(os.listdir(cluster8.scratch_dir(i)) == [] for i in range(8))


@needs_root
def test_standard_input_through_mpiexec(cluster8: EmulatedCluster, tmp_path: Path) -> None:
    """SRC - under hydra: a stream that fits its 64 KiB pipe (README: Streams)."""
    data = os.urandom(60_000)
    run = cluster8.mpiexec([sys.executable, "-m", "mpistage", "-", f"{cluster8.scratch}/in.bin"],
                           hosts=[0, 1, 2, 3], env=TIMEOUT, capture_output=True, timeout=600,
                           input=data)
    assert run.returncode == 0, run.stdout + run.stderr
    assert b"standard input" in run.stdout
    for i in range(4):
        assert (cluster8.scratch_dir(i) / "in.bin").read_bytes() == data, f"host {i}"
        (cluster8.scratch_dir(i) / "in.bin").unlink()


@needs_root
def test_a_command_that_exits_early_on_a_middle_host_stalls_no_one(cluster8: EmulatedCluster,
                                                                   tmp_path: Path) -> None:
    src = sample(tmp_path, 8 << 20)
    run = cluster8.mpiexec(
        [sys.executable, "-m", "mpistage", "--algorithm", "chain", "--chunk-size", "256K",
         "--timeout", "30", str(src), "--pipe",
         f"if [ {{node}} = 3 ]; then exit 7; else cat > {cluster8.scratch}/piped; fi"],
        env=TIMEOUT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "node 3" in run.stdout and "exited with status 7" in run.stdout
    digest = file_digest(src)
    for i in range(8):
        copy = cluster8.scratch_dir(i) / "piped"
        assert (not copy.exists()) if i == 3 else file_digest(copy) == digest, f"host {i}"
        copy.unlink(missing_ok=True)


@needs_root
def test_link_down_and_up(cluster8: EmulatedCluster) -> None:
    connect = [sys.executable, "-c",
               f"import socket; socket.create_connection(('{cluster8.address(6)}', 9), timeout=2)"]
    refused = cluster8.run(0, connect, capture_output=True, text=True, timeout=30)
    assert "ConnectionRefused" in refused.stderr, "link up: the host answers (with a refusal)"
    cluster8.set_link(6, up=False)
    try:
        down = cluster8.run(0, connect, capture_output=True, text=True, timeout=30)
        assert "timed out" in down.stderr or "unreachable" in down.stderr.lower(), down.stderr
    finally:
        cluster8.set_link(6, up=True)
    assert cluster8.probe(0, 6, seconds=1.0) > 50e6


# -- stragglers and full disks ------------------------------------------------------------

@pytest.fixture(scope="module")
def faulty4() -> Iterator[EmulatedCluster]:
    """Host 1 has a 20 Mbit/s link; host 2's scratch holds 1 MiB."""
    if os.geteuid() != 0 or MISSING:
        pytest.skip("needs root and iproute2/util-linux")
    teardown(f"{NAME}f")
    overrides = {1: HostSpec(rate=parse_rate("20mbit")), 2: HostSpec(scratch_size="1m")}
    with EmulatedCluster(hosts=4, rate="100mbit", name=f"{NAME}f", overrides=overrides) as c:
        yield c


@needs_root
def test_slow_link_host_gets_its_copy_and_paces_the_chain(faulty4: EmulatedCluster,
                                                         tmp_path: Path) -> None:
    assert 18e6 <= faulty4.probe(0, 1, seconds=2.0) <= 22e6, "the straggler's link is shaped"
    size = 4 << 20
    src = sample(tmp_path, size)
    run, report = stage_on(faulty4, tmp_path, src, "--chunk-size", "256K", hosts=[0, 1, 3])
    assert run.returncode == 0, run.stdout + run.stderr
    for i in (0, 1, 3):
        assert file_digest(faulty4.scratch_dir(i) / src.name) == file_digest(src)
        (faulty4.scratch_dir(i) / src.name).unlink()
    # The chain cannot run faster than its slowest link.
    assert report["transfer_seconds"] >= 0.9 * size * 8 / 20e6


@needs_root
def test_full_disk_host_stops_the_run_before_any_data_moves(faulty4: EmulatedCluster,
                                                           tmp_path: Path) -> None:
    src = sample(tmp_path, 4 << 20)
    run, report = stage_on(faulty4, tmp_path, src)
    assert run.returncode == 2 and report == {}
    assert run.stderr.strip() == (f"mpistage: error: node 2 ({faulty4.hostnames[2]}): not enough "
                                  "space in /scratch: 1.0 MiB free, 4.0 MiB needed")
    assert all(os.listdir(faulty4.scratch_dir(i)) == [] for i in range(4)), "nothing created"


@needs_root
def test_full_disk_host_skipped_on_request(faulty4: EmulatedCluster, tmp_path: Path) -> None:
    src = sample(tmp_path, 4 << 20)
    run, report = stage_on(faulty4, tmp_path, src, "--skip-bad-nodes", "--chunk-size", "256K")
    assert run.returncode == 1, run.stdout + run.stderr
    failed = [n for n in report["nodes"] if not n["ok"]]
    assert [(n["host"], n["status"]) for n in failed] == [(faulty4.hostnames[2], "skipped")]
    assert "not enough space in /scratch" in failed[0]["error"]
    assert f"({faulty4.hostnames[2]}, rank 2): skipped: not enough space" in run.stdout
    assert os.listdir(faulty4.scratch_dir(2)) == [], "nothing written on the full host"
    for i in (0, 1, 3):  # the chain was re-formed around the full host
        assert file_digest(faulty4.scratch_dir(i) / src.name) == file_digest(src)
        (faulty4.scratch_dir(i) / src.name).unlink()


# -- trees ----------------------------------------------------------------------------------

def sample_tree(tmp_path: Path) -> Path:
    """``tmp_path/dataset``: 300 small files in nested directories, one of 3 MiB, an
    empty directory and a symlink."""
    top = tmp_path / "dataset"
    for shard in range(3):
        folder = top / f"shard{shard}" / "part"
        folder.mkdir(parents=True)
        for number in range(100):
            (folder / f"{number:03d}.txt").write_bytes(os.urandom(number * 41))
    (top / "weights.bin").write_bytes(os.urandom(3 << 20))
    (top / "empty").mkdir()
    (top / "latest").symlink_to("shard2")
    return top


def tree_listing(top: Path) -> dict[str, object]:
    return {str(p.relative_to(top)): (os.readlink(p) if p.is_symlink() else
                                      None if p.is_dir() else file_digest(p))
            for p in sorted(top.rglob("*"))}


@needs_root
def test_a_tree_on_8_hosts_then_only_what_changed(cluster8: EmulatedCluster,
                                                  tmp_path: Path) -> None:
    src = sample_tree(tmp_path)
    run, report = stage_on(cluster8, tmp_path, src)
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["ok"] and report["tree"]["files"] == 301 and report["tree"]["files_sent"] == 301
    expected = tree_listing(src)
    for i in range(8):
        assert tree_listing(cluster8.scratch_dir(i) / "dataset") == expected, f"host {i}"
        assert os.listdir(cluster8.scratch_dir(i)) == ["dataset"], "no temp entry left"
    (cluster8.scratch_dir(5) / "dataset" / "shard1" / "part" / "007.txt").write_bytes(b"bad")
    (src / "shard0" / "part" / "003.txt").write_bytes(b"new on the root")
    run, report = stage_on(cluster8, tmp_path, src)
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["tree"]["files_sent"] == 2, report["tree"]
    copied = {n["host"]: n["files_copied"] for n in report["nodes"]}
    assert copied[cluster8.hostnames[5]] == 2
    assert all(copied[h] == 1 for h in cluster8.hostnames if h != cluster8.hostnames[5])
    expected = tree_listing(src)
    for i in range(8):
        assert tree_listing(cluster8.scratch_dir(i) / "dataset") == expected, f"host {i}"
        shutil.rmtree(cluster8.scratch_dir(i) / "dataset")


@needs_root
def test_a_tree_too_big_for_one_host_stops_before_anything_moves(faulty4: EmulatedCluster,
                                                                tmp_path: Path) -> None:
    src = sample_tree(tmp_path)
    run, report = stage_on(faulty4, tmp_path, src, hosts=[0, 2, 3])
    assert run.returncode == 2 and report == {}
    assert f"node 1 ({faulty4.hostnames[2]}): not enough space in /scratch" in run.stderr
    assert all(os.listdir(faulty4.scratch_dir(i)) == [] for i in range(4)), "nothing created"
    run, report = stage_on(faulty4, tmp_path, src, "--skip-bad-nodes", hosts=[0, 2, 3])
    assert run.returncode == 1 and [n["status"] for n in report["nodes"]] == \
        ["copied", "skipped", "copied"]
    for i in (0, 3):
        assert tree_listing(faulty4.scratch_dir(i) / "dataset") == tree_listing(src)
        shutil.rmtree(faulty4.scratch_dir(i) / "dataset")
    assert os.listdir(faulty4.scratch_dir(2)) == []


@needs_root
def test_a_host_whose_disk_fills_mid_tree_keeps_nothing_of_it(faulty4: EmulatedCluster,
                                                              tmp_path: Path) -> None:
    """On one host the kernel refuses writes past 1 MiB (RLIMIT_FSIZE, set after MPI_Init:
    its shared-memory set-up needs larger files), in the middle of the tree's 3 MiB file:
    that host keeps nothing of the tree, the others get all of it."""
    src = sample_tree(tmp_path)
    victim = faulty4.hostnames[3]
    limited = (
        "import os, resource, sys; from mpi4py import MPI\n"
        f"if os.uname().nodename == {victim!r}:\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))\n"
        "from mpistage.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    report_path = tmp_path / "report.json"
    run = faulty4.mpiexec([sys.executable, "-c", limited, "--report", str(report_path),
                           str(src), faulty4.scratch], hosts=[0, 1, 3], env=TIMEOUT,
                          capture_output=True, text=True, timeout=600)
    report = json.loads(report_path.read_text())
    assert run.returncode == 1, run.stdout + run.stderr
    failed = [n for n in report["nodes"] if not n["ok"]]
    assert [n["host"] for n in failed] == [victim]
    assert "File too large" in failed[0]["error"]
    assert os.listdir(faulty4.scratch_dir(3)) == [], "nothing of the tree, no temp entry"
    for i in (0, 1):
        assert tree_listing(faulty4.scratch_dir(i) / "dataset") == tree_listing(src)
        shutil.rmtree(faulty4.scratch_dir(i) / "dataset")


@needs_root
def test_hosts_sharing_a_dest_are_refused_or_given_their_own(cluster8: EmulatedCluster,
                                                              tmp_path: Path) -> None:
    """/tmp is one file system for every emulated host (only /scratch is each host's own):
    four hosts writing DEST/sample.bin there would write one file.  Refused with one line
    and exit 2, nothing left behind; with {host} in DEST each host gets its own copy."""
    src = sample(tmp_path, 1 << 20)
    shared = tmp_path / "shared"
    shared.mkdir()
    run = cluster8.mpiexec([sys.executable, "-m", "mpistage", str(src), f"{shared}/"],
                           hosts=[0, 1, 2, 3], env=TIMEOUT, capture_output=True, text=True,
                           timeout=600)
    names = [f"{i} ({cluster8.hostnames[i]})" for i in range(4)]
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.splitlines() == [
        f"mpistage: error: nodes {', '.join(names[:3])} and {names[3]} would all write "
        f"{shared}/sample.bin: one file on a file system they share; put {{node}} in DEST "
        f"(e.g. {shared}/{{node}}/sample.bin, with --mkdir) so that each node has its own copy, "
        "or --shared-dest to write it once"]
    assert os.listdir(shared) == []  # no copy, no marker
    run = cluster8.mpiexec([sys.executable, "-m", "mpistage", "--mkdir", str(src),
                            f"{shared}/{{host}}/"], hosts=[0, 1, 2, 3], env=TIMEOUT,
                           capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(os.listdir(shared)) == sorted(cluster8.hostnames[:4])
    for host in cluster8.hostnames[:4]:
        assert file_digest(shared / host / "sample.bin") == file_digest(src)
    # on purpose: one writer, the three others check its file in place
    one = tmp_path / "one"
    one.mkdir()
    report = tmp_path / "report.json"
    run = cluster8.mpiexec([sys.executable, "-m", "mpistage", "--shared-dest", "--report",
                            str(report), str(src), f"{one}/"], hosts=[0, 1, 2, 3],
                           env=TIMEOUT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "nodes 1-3 share another node's file" in run.stdout
    nodes = json.loads(report.read_text())["nodes"]
    assert [n["status"] for n in nodes] == ["copied", "shared", "shared", "shared"]
    assert os.listdir(one) == ["sample.bin"] and file_digest(one / "sample.bin") == file_digest(src)


@needs_root
def test_arguments_that_differ_between_hosts_are_named_on_every_rank(
        cluster8: EmulatedCluster, tmp_path: Path) -> None:
    """From Python, each host passing its own DEST (rank 0's used to count for all): the
    same UsageError on every rank, naming the first argument that differs."""
    src = sample(tmp_path, 1 << 16)
    script = ("import sys\n"
              "from mpi4py import MPI\n"
              "import mpistage\n"
              "rank = MPI.COMM_WORLD.rank\n"
              "try:\n"
              f"    mpistage.stage({str(src)!r}, f'/scratch/n{{rank}}/', mkdir=True)\n"
              "except mpistage.UsageError as exc:\n"
              "    print(f'rank {rank}: {exc}')\n"
              "    sys.exit(2)\n")
    run = cluster8.mpiexec([sys.executable, "-c", script], hosts=[0, 1, 2], env=TIMEOUT,
                           capture_output=True, text=True, timeout=600)
    said = ("stage() was called with dest='/scratch/n1/' on rank 1 but dest='/scratch/n0/' "
            "on rank 0; its arguments must be the same on every rank: for a path per node "
            "or per rank, write {node}, {host} or {rank} in DEST, which each rank fills in")
    # hydra may interleave the ranks' lines: each rank's line is there, whole, once
    assert all(run.stdout.count(f"rank {r}: {said}") == 1 for r in range(3)), \
        run.stdout + run.stderr
    assert run.returncode == 2, run.stdout + run.stderr
    for host in range(3):
        assert not (cluster8.scratch_dir(host) / f"n{host}").exists()  # nothing made
