"""stage() under mpiexec -n 2 and -n 4, every rank its own node.

Run with ``mpiexec -n N python -m pytest --only-mpi``; every assertion is collective, so
a failure on any rank fails on rank 0 too.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

import mpistage
from mpistage import UsageError
from mpistage.digest import file_chunk_digest, file_digest
from mpistage.engine.algorithms import SCHEDULES
from mpistage.model import decide as decide_module
from mpistage.model.choice import TIE
from mpistage.sinks.file import TEMP_SUFFIX
from mpistage.staging.options import DEFAULT_MEMORY

COMM = MPI.COMM_WORLD
CHUNK = 64 << 10
SIZES = {"empty": 0, "one-byte": 1, "chunk-1": CHUNK - 1, "chunk": CHUNK, "chunk+1": CHUNK + 1,
         "3MiB+17": (3 << 20) + 17}

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def area(mpi_tmp_path: Path, make_file) -> Path:  # type: ignore[no-untyped-def]
    """A shared temp dir with one directory per node: ``n0``, ``n1``, …"""
    if COMM.rank == 0:
        for node in range(COMM.size):
            (mpi_tmp_path / f"n{node}").mkdir()
    COMM.Barrier()
    return mpi_tmp_path


def source_file(area: Path, make_file, size: int) -> Path:  # type: ignore[no-untyped-def]
    src = area / "src.bin"
    if COMM.rank == 0:
        make_file(src, size, seed=size)
        os.utime(src, ns=(0, 1_600_000_000_123_456_789))
    COMM.Barrier()
    return src


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(TEMP_SUFFIX)]


@pytest.mark.parametrize("algorithm", mpistage.ALGORITHMS)
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_every_node_gets_a_byte_identical_copy(area, make_file, assert_all, algorithm, size):
    src = source_file(area, make_file, size)
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, algorithm=algorithm,
                            chunk_size=CHUNK, ranks_as_nodes=True)
    copy = area / f"n{COMM.rank}" / "src.bin"
    assert_all(report.ok, f"report not ok: {[n.error for n in report.failed]}")
    assert_all(copy.read_bytes() == src.read_bytes(), f"rank {COMM.rank}: bytes differ")
    assert_all(copy.stat().st_mtime_ns == 1_600_000_000_123_456_789, "mtime not preserved")
    assert_all(leftovers(copy.parent) == [], "temp files left behind")
    assert_all(len(report.nodes) == COMM.size and len(report.ranks) == COMM.size)
    expected = (file_chunk_digest(src, report.chunk_size) if report.read_by == "all"
                else file_digest(src))  # every node read a share: a hash list
    assert_all(report.source_digest == expected)
    assert_all(report == COMM.bcast(report, root=0), "every rank returns the same report")


@pytest.mark.parametrize("algorithm", mpistage.ALGORITHMS)
def test_root_other_than_rank_zero(area, make_file, assert_all, algorithm):
    src = source_file(area, make_file, 300_000)
    root = COMM.size - 1
    report = mpistage.stage(src, str(area / "n{rank}" / "copy.bin"), comm=COMM, root=root,
                            algorithm=algorithm, chunk_size=CHUNK, ranks_as_nodes=True,
                            verify=True, fsync=True, depth=2)
    assert_all(report.ok, str([n.error for n in report.failed]))
    assert_all((area / f"n{COMM.rank}" / "copy.bin").read_bytes() == src.read_bytes())
    reader = next(r for r in report.ranks if r.rank == root)
    assert_all("read" in reader.phases and "verify" in reader.phases and "fsync" in reader.phases)
    others = [r for r in report.ranks if r.rank != root]
    if not SCHEDULES[algorithm].every_node_reads:
        assert_all(all("read" not in r.phases for r in others), "only the root reads the source")
    else:
        assert_all(all("read" in r.phases for r in others), "every node reads its share")


def test_one_node_per_host_without_ranks_as_nodes(area, make_file, assert_all):
    """All ranks share this machine: one node, one leader, one copy."""
    src = source_file(area, make_file, 200_000)
    report = mpistage.stage(src, str(area / "n0"), comm=COMM, chunk_size=CHUNK)
    assert_all(report.ok and len(report.nodes) == 1 and report.nodes[0].rank == 0)
    assert_all(sum(r.leader for r in report.ranks) == 1)
    assert_all(os.listdir(area / "n0") == ["src.bin"])
    assert_all(all(os.listdir(area / f"n{i}") == [] for i in range(1, COMM.size)))


@pytest.mark.parametrize("algorithm", mpistage.ALGORITHMS)
def test_write_failure_on_one_node_mid_transfer(area, make_file, assert_all, algorithm):
    """A node whose disk 'fills' mid-transfer reports it; the others still get the file.

    RLIMIT_FSIZE makes the kernel refuse writes past 256 KiB on that rank (EFBIG; Python
    ignores SIGXFSZ), a real failure in the middle of the transfer with no test hook.
    """
    size = 1 << 20
    src = source_file(area, make_file, size)
    victim = 1 if COMM.size == 2 else COMM.size // 2  # a middle node of the chain
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    if COMM.rank == victim:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, limits[1]))
    try:
        report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, algorithm=algorithm,
                                chunk_size=CHUNK, ranks_as_nodes=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert_all(not report.ok and report.exit_code == 1)
    assert_all([n.index for n in report.failed] == [victim], str(report.failed))
    assert_all("File too large" in (report.failed[0].error or ""), str(report.failed[0].error))
    mine = area / f"n{COMM.rank}"
    if COMM.rank == victim:
        assert_all(os.listdir(mine) == [], "the failed node keeps no partial file")
    else:
        assert_all((mine / "src.bin").read_bytes() == src.read_bytes())
    assert_all("FAILED: " in report.summary() and f"node {victim} " in report.summary())


BAD_INPUTS = {
    "missing source": (lambda a: (a / "nope", a / "n{node}"), "does not exist"),
    "tree holding a FIFO": (lambda a: (a, a / "n{node}"), "1 special file .*fifo \\(a FIFO\\)"),
    "dest parent missing": (lambda a: (a / "src.bin", a / "missing" / "x"), "does not exist"),
    "dest parent missing on one node": (
        lambda a: (a / "src.bin", a / "n{node}" / "sub{node}" / "x"), "node 0 .*does not exist"),
    "bad placeholder": (lambda a: (a / "src.bin", a / "{nodes}"), "unknown placeholder"),
    "format spec unfit for the value": (lambda a: (a / "src.bin", a / "n{node:s}"),
                                        "Unknown format code 's'"),
    "missing directory named by a trailing slash": (
        lambda a: (a / "src.bin", str(a / "n{node}" / "sub") + "/"), "does not exist .*--mkdir"),
    "device node at the final path": (lambda a: (a / "src.bin", "/dev/null"),
                                      "is a character device"),
    "fifo as the source": (lambda a: (a / "fifo", a / "n{node}"), "is a FIFO"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=BAD_INPUTS.keys())
def test_bad_input_raises_on_every_rank_and_creates_nothing(area, make_file, assert_all, case):
    source_file(area, make_file, 1000)  # so that only the case's own fault is wrong
    if COMM.rank == 0:
        (area / "n1" / "sub1").mkdir()  # only node 1 has the subdirectory
        os.mkfifo(area / "fifo")
    COMM.Barrier()
    paths, message = BAD_INPUTS[case]
    source, dest = paths(area)
    before = sorted(str(p) for p in area.rglob("*"))
    with pytest.raises(UsageError, match=message):
        mpistage.stage(source, str(dest), comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK)
    COMM.Barrier()
    assert_all(sorted(str(p) for p in area.rglob("*")) == before, "nothing created")


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": "spiral"}, "expected one of chain, binomial, tree, twotree, flat, bcast, ring or auto"),
    ({"chunk_size": "big"}, "expected bytes or auto"),
    ({"arity": 1}, "invalid arity"),
    ({"calibration": "/nonexistent.json"}, "cannot use calibration"),
    ({"chunk_size": 0}, "invalid chunk size"),
    ({"root": 99}, "invalid root 99"),
    ({"depth": 1}, "invalid depth"),
    ({"depth": 65}, "expected 2 to 64 buffers"),
    ({"timeout": math.inf}, "invalid timeout"),
    ({"timeout": 1e10}, "invalid timeout"),
])
def test_bad_options_raise_on_every_rank(area, make_file, kwargs, message):
    src = source_file(area, make_file, 10)
    with pytest.raises(UsageError, match=message):
        mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True, **kwargs)


@pytest.mark.mpi(min_size=2)
def test_file_larger_than_2_gib(assert_all):
    """Offsets and digests past 2**31 bytes: a sparse 2 GiB + 4 KiB file with data at
    both ends, staged between two ranks through tmpfs."""
    shm = Path("/dev/shm")
    size = (2 << 30) + 4097
    room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    if COMM.bcast(room < 3 * size, root=0):
        pytest.skip("needs /dev/shm with 6.5 GiB free (two copies of a 2 GiB file)")
    pair = COMM.Split(0 if COMM.rank < 2 else 1, COMM.rank)
    if COMM.rank > 1:
        pair.Free()
        return  # two ranks are enough to cross 2 GiB; the others have nothing to do
    work = Path(pair.bcast(tempfile.mkdtemp(dir=shm, prefix="mpistage-big-") if pair.rank == 0 else None))
    try:
        src = work / "big.bin"
        if pair.rank == 0:
            (work / "n0").mkdir()
            (work / "n1").mkdir()
            with open(src, "wb") as out:
                out.write(b"head")
                out.seek(size - 4)
                out.write(b"tail")
        pair.Barrier()
        report = mpistage.stage(src, str(work / "n{node}"), comm=pair, ranks_as_nodes=True,
                                chunk_size=64 << 20, memory=128 << 20)
        copy = work / f"n{pair.rank}" / "big.bin"
        ok = report.ok and copy.stat().st_size == size
        with open(copy, "rb") as data:
            head = data.read(4)
            data.seek(size - 4)
            ok = ok and head == b"head" and data.read(4) == b"tail"
        assert pair.allreduce(ok, op=MPI.LAND), str([n.error for n in report.failed])
    finally:
        pair.Barrier()
        if pair.rank == 0:
            shutil.rmtree(work, ignore_errors=True)
        pair.Free()


def test_rerun_sends_only_to_nodes_without_a_good_copy(area, make_file, assert_all):
    src = source_file(area, make_file, 500_000)
    dest = str(area / "n{node}")
    assert_all(mpistage.stage(src, dest, comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK).ok)
    if COMM.rank == 0:  # node 1: same size, other bytes, same mtime; last node: no copy
        copy = area / "n1" / "src.bin"
        mtime = copy.stat().st_mtime_ns
        copy.write_bytes(bytes(500_000))
        os.utime(copy, ns=(mtime, mtime))
        (area / f"n{COMM.size - 1}" / "src.bin").unlink()
    COMM.Barrier()
    report = mpistage.stage(src, dest, comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK)
    expected = {i: "up-to-date" for i in range(COMM.size)}
    expected[1] = expected[COMM.size - 1] = "copied"
    assert_all(report.ok and {n.index: n.status for n in report.nodes} == expected, str(report.nodes))
    assert_all(all(n.bytes == 0 for n in report.nodes if n.status == "up-to-date"))
    assert_all((area / f"n{COMM.rank}" / "src.bin").read_bytes() == src.read_bytes())
    # --quick trusts size and mtime: a same-size, same-mtime file with other bytes passes.
    if COMM.rank == 0:
        copy = area / "n1" / "src.bin"
        mtime = copy.stat().st_mtime_ns
        copy.write_bytes(bytes(500_000))
        os.utime(copy, ns=(mtime, mtime))
    COMM.Barrier()
    quick = mpistage.stage(src, dest, comm=COMM, ranks_as_nodes=True, quick=True)
    assert_all({n.status for n in quick.nodes} == {"up-to-date"})


def test_mkdir_and_skip_bad_nodes(area, make_file, assert_all):
    src = source_file(area, make_file, 100_000)
    with pytest.raises(UsageError, match="does not exist"):
        mpistage.stage(src, str(area / "new{node}" / "x.bin"), comm=COMM, ranks_as_nodes=True)
    report = mpistage.stage(src, str(area / "new{node}" / "deep") + "/", comm=COMM,
                            ranks_as_nodes=True, mkdir=True)
    assert_all(report.ok)
    assert_all((area / f"new{COMM.rank}" / "deep" / "src.bin").read_bytes() == src.read_bytes())
    # Node 1 alone lacks its directory: skipped on request, the others served.
    if COMM.rank == 0:
        for node in range(COMM.size):
            if node != 1:
                (area / f"only{node}").mkdir()
    COMM.Barrier()
    report = mpistage.stage(src, str(area / "only{node}" / "x.bin"), comm=COMM,
                            ranks_as_nodes=True, skip_bad_nodes=True, chunk_size=CHUNK)
    assert_all(not report.ok and report.exit_code == 1)
    assert_all([(n.index, n.status) for n in report.failed] == [(1, "skipped")])
    assert_all("does not exist" in (report.failed[0].error or ""))
    assert_all(COMM.rank == 1 or (area / f"only{COMM.rank}" / "x.bin").exists())


def test_remove_first_replaces_an_outdated_copy(area, make_file, assert_all):
    src = source_file(area, make_file, 70_000)
    old = area / f"n{COMM.rank}" / "src.bin"
    old.write_bytes(b"old content")
    COMM.Barrier()
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            remove_first=True, chunk_size=CHUNK)
    assert_all(report.ok and old.read_bytes() == src.read_bytes())
    assert_all({n.status for n in report.nodes} == {"copied"})


def test_corruption_in_memory_fails_that_node_only(area, make_file, assert_all, monkeypatch):
    src = source_file(area, make_file, 300_000)
    monkeypatch.setenv("MPISTAGE_TEST_FAULTS", "corrupt-chunk@1")
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK)
    assert_all([n.index for n in report.failed] == [1])
    assert_all((report.failed[0].error or "").startswith("digest mismatch"))
    copy = area / f"n{COMM.rank}" / "src.bin"
    assert_all(not copy.exists() if COMM.rank == 1 else copy.read_bytes() == src.read_bytes(),
               "downstream nodes got the uncorrupted bytes")


@pytest.mark.parametrize("change", ["rewrite in place", "append", "replace"])
def test_a_source_changed_while_it_is_read_is_never_staged(area, make_file, assert_all, change):
    """The root's progress callback changes the source after the first chunk has left
    (the reader is then at most ``depth`` chunks ahead, far from the end): every node
    fails with the reason, no copy is renamed into place, no temp file is left."""
    size = 64 * CHUNK
    src = source_file(area, make_file, size)
    changed = []

    def meddle(done: int, total: int) -> None:
        if changed:
            return
        changed.append(done)
        if change == "rewrite in place":
            with open(src, "r+b") as f:
                f.seek(size - 10)
                f.write(b"new bytes!")
        elif change == "append":
            with open(src, "ab") as f:
                f.write(b"more")
        else:
            os.replace(source_file_copy, src)

    source_file_copy = area / "replacement.bin"
    if COMM.rank == 0:
        shutil.copyfile(src, source_file_copy)
    COMM.Barrier()
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK, depth=2, progress=meddle)
    expected = {"rewrite in place": "was modified while it was read",
                "append": f"changed size ({size} to {size + 4} bytes) while it was read",
                "replace": "was replaced by another file while it was read"}[change]
    assert_all(not report.ok and report.exit_code == 1)
    assert_all(expected in (report.source_error or ""), str(report.source_error))
    assert_all(len(report.failed) == COMM.size)
    assert_all(os.listdir(area / f"n{COMM.rank}") == [], "no copy, no temp file")


def test_a_slow_node_is_waited_for_while_it_makes_progress(area, make_file, assert_all,
                                                          monkeypatch):
    """slow-commit: the last node's commit takes 5 s more (a long --verify or --fsync),
    far beyond 2 x --timeout; it shows progress, so it is waited for, not declared dead."""
    src = source_file(area, make_file, 300_000)
    last = COMM.size - 1
    monkeypatch.setenv("MPISTAGE_TEST_FAULTS", f"slow-commit@{last}")
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK, timeout=1)
    assert_all(report.ok and report.exit_code == 0, report.summary())
    assert_all(report.elapsed >= 5)
    assert_all((area / f"n{COMM.rank}" / "src.bin").read_bytes() == src.read_bytes())


@pytest.mark.parametrize("where", ["root", "middle", "last"])
def test_a_hung_write_costs_that_node_its_copy_only(area, make_file, assert_all, monkeypatch,
                                                    where):
    """hang-write: that node's next write never returns (a dead disk, a hung NFS).  The
    node gives up its copy, goes on forwarding, and the run ends within --timeout + 15 s
    with exit 1 naming it; every other node holds its copy; no temp file anywhere."""
    src = source_file(area, make_file, 40 * CHUNK)
    victim = {"root": 0, "middle": COMM.size // 2, "last": COMM.size - 1}[where]
    monkeypatch.setenv("MPISTAGE_TEST_FAULTS", f"hang-write@{victim}")
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK, timeout=2)
    assert_all(report.exit_code == 1 and not report.stalled, report.summary())
    assert_all(report.elapsed < 2 + 15, f"took {report.elapsed:.1f} s")
    assert_all([n.index for n in report.failed] == [victim], report.summary())
    assert_all("made no progress" in (report.failed[0].error or ""), str(report.failed[0].error))
    mine = area / f"n{COMM.rank}"
    if COMM.rank == victim:
        assert_all(os.listdir(mine) == [], "the hung node's temp file is removed")
    else:
        assert_all(os.listdir(mine) == ["src.bin"] and
                   (mine / "src.bin").read_bytes() == src.read_bytes())


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(size=st.integers(0, 3 * CHUNK + 5), chunk=st.integers(1, 2 * CHUNK),
       algorithm=st.sampled_from(mpistage.ALGORITHMS), depth=st.integers(2, 6),
       root=st.integers(0, 3), existing=st.sampled_from(["none", "same", "other", "link"]))
def test_randomised_transfers_are_byte_identical(area, make_file, assert_all, size, chunk,
                                                 algorithm, depth, root, existing):
    """Drawn alike on every rank (derandomized): sizes, chunks, algorithms, depths, roots
    and what already stands at DEST; every node ends with the source's bytes, nothing else."""
    root %= COMM.size
    src = area / "src.bin"
    mine = area / f"n{COMM.rank}"
    if COMM.rank == 0:
        make_file(src, size, seed=size ^ chunk)
    COMM.Barrier()
    for name in os.listdir(mine):
        os.unlink(mine / name)
    if existing == "same":
        shutil.copyfile(src, mine / "src.bin")
    elif existing == "other":
        (mine / "src.bin").write_bytes(b"old" * 100)
    elif existing == "link":
        (mine / "src.bin").symlink_to(src)
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            algorithm=algorithm, chunk_size=chunk, depth=depth, root=root)
    assert_all(report.ok, report.summary())
    assert_all(os.listdir(mine) == ["src.bin"] and not (mine / "src.bin").is_symlink())
    assert_all((mine / "src.bin").read_bytes() == src.read_bytes())


def test_bad_timeout_is_a_usage_error(area, make_file):
    src = source_file(area, make_file, 10)
    with pytest.raises(UsageError, match="invalid timeout"):
        mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True, timeout=0)


def test_auto_choice_stages_correctly_and_reports_its_prediction(area, make_file, assert_all):
    size = (2 << 20) + 5
    src = source_file(area, make_file, size)
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True)
    assert_all(report.ok and report.algorithm in mpistage.ALGORITHMS)
    assert_all((area / f"n{COMM.rank}" / "src.bin").read_bytes() == src.read_bytes())
    prediction = report.prediction or {}
    # Larger than the probe's message: measured, so that the run tests the model's
    # prediction, even where (two nodes) the choice would be the same on any link.
    assert_all(prediction.get("auto") is True
               and prediction.get("source") == "quick measurement")
    assert_all(report.chunk_size <= DEFAULT_MEMORY // 4, "auto stays within the memory budget")
    # One file: auto weighs the algorithms that survive a lost node (not MPI's bcast);
    # the source is not on a shared file system: the root reads it (not the ring).
    assert_all(set(prediction["predictions"]) == set(mpistage.ALGORITHMS) - {"bcast", "ring"})
    assert_all(prediction["algorithm"] == report.algorithm
               and prediction["chunk_size"] == report.chunk_size)
    assert_all(prediction["parameters"]["latency"] > 0 and prediction["parameters"]["bandwidth"] > 0)


def test_a_small_file_is_staged_without_measuring_the_link(area, make_file, assert_all,
                                                            monkeypatch):
    src = source_file(area, make_file, 1000)
    probes: list[int] = []
    measure = decide_module.quick_parameters

    def counted(*args):  # type: ignore[no-untyped-def]
        probes.append(1)
        return measure(*args)

    monkeypatch.setattr(decide_module, "quick_parameters", counted)
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True)
    assert_all(report.ok and not probes and report.prediction["source"] == "assumed")
    # The fewest hops wins for one chunk: from 4 nodes on, a tree, not the chain.
    assert_all(report.chunk_size == 1000 and (COMM.size <= 3 or report.algorithm != "chain"))
    # Past the probe's 1 MiB the link is measured, even when it could not change the
    # choice (a forced algorithm's largest chunk), so that the run tests the prediction.
    big = source_file(area, make_file, (1 << 20) + 1)
    report = mpistage.stage(big, str(area / "m{node}"), comm=COMM, ranks_as_nodes=True,
                            algorithm="binomial", mkdir=True)
    measured = COMM.allreduce(len(probes))
    assert_all(report.ok and report.prediction["source"] == "quick measurement" and measured > 0)


def test_memory_budget_bounds_the_buffers_and_refuses_a_chunk_that_cannot_fit(
        area, make_file, assert_all):
    src = source_file(area, make_file, 5 << 20)
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=1 << 20, depth=8, memory=3 << 20)
    assert_all(report.ok and report.depth == 3, "8 buffers of 1 MiB do not fit 3 MiB: 3 do")
    with pytest.raises(UsageError, match="memory budget"):
        mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                       chunk_size=2 << 20, memory=3 << 20)


def test_calibrate_then_explain_without_moving_data(area, make_file, assert_all):
    src = source_file(area, make_file, 3 << 20)
    result = mpistage.calibrate(COMM, source=str(src), dest=str(area / "n{node}"),
                                sample=1 << 20, sizes=(1, 4096, 65536), repeats=2,
                                round_trips=50, ranks_as_nodes=True)
    p = result.parameters
    assert_all(result == COMM.bcast(result, root=0), "the same calibration on every rank")
    assert_all(len(result.links) == COMM.size - 1 and len(result.writes) == COMM.size)
    assert_all(p.latency > 0 and 0 < p.bandwidth < math.inf and p.read_bandwidth < math.inf
               and p.write_bandwidth < math.inf and p.startup > 0)
    assert_all(len(result.rtt) == 50 and sum(c for _, _, c in result.to_dict()["rtt"]["histogram"]) == 50)
    runs = result.engine["runs"]
    assert_all(sorted({r["chunks"] for r in runs}) == [1, 16] and len(runs) == 2 * COMM.size
               and all(r["cpu"] > 0 for r in runs),
               "the engine ran at 64 KiB and 1 MiB chunks, and its CPU was measured")
    assert_all(p.overhead >= 0 and p.cpu_rate > 0)
    assert_all(all(os.listdir(area / f"n{i}") == [] for i in range(COMM.size)), "no samples left")
    path = area / "cal.json"
    if COMM.rank == 0:
        result.save(path)
    COMM.Barrier()
    assert_all(mpistage.Parameters.load(path) == p)
    before = sorted(str(x) for x in area.rglob("*"))
    auto = mpistage.explain(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            calibration=path)
    assert_all(auto is not None and auto.source == "calibration" and auto.nodes == COMM.size)
    fastest = min(t for _, t in auto.choice.predictions.values())
    assert_all(fastest <= auto.choice.predicted <= fastest * (1 + TIE), "a tie goes to the first")
    fixed = mpistage.explain(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                             calibration=path, algorithm="flat", chunk_size=1 << 20)
    assert_all(fixed.choice.algorithm == "flat" and fixed.choice.chunk_size == 1 << 20)
    assert_all(sorted(str(x) for x in area.rglob("*")) == before, "--explain moves no data")


def test_no_clobber_refuses_a_different_file_and_keeps_an_identical_one(area, make_file,
                                                                        assert_all):
    """sbcast's rule (``mpistage-sbcast`` without --force): only node 1 holds a different
    file; the run stops before any byte moves and names it, and nothing changes."""
    src = source_file(area, make_file, 70_000)
    dest = str(area / "n{node}")
    assert_all(mpistage.stage(src, dest, comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK).ok)
    again = mpistage.stage(src, dest, comm=COMM, ranks_as_nodes=True, no_clobber=True)
    assert_all(again.ok and {n.status for n in again.nodes} == {"up-to-date"})
    if COMM.rank == 0:
        (area / "n1" / "src.bin").write_bytes(b"someone else's file")
    COMM.Barrier()
    with pytest.raises(UsageError, match=r"node 1 .*exists and differs from the source "
                       r"\(--force replaces it\)"):
        mpistage.stage(src, dest, comm=COMM, ranks_as_nodes=True, no_clobber=True)
    assert_all((area / "n1" / "src.bin").read_bytes() == b"someone else's file")
    assert_all(leftovers(area / f"n{COMM.rank}") == [])


def test_read_by_all_refuses_a_source_another_node_sees_otherwise(area, make_file, assert_all,
                                                                 monkeypatch):
    """Every node reads a share only of the file the root reads: a node that sees other
    bytes at the path (a node-local copy of an older version) refuses the run on every
    rank, in one line naming it, before anything is written."""
    from mpistage.staging import shared_source

    src = source_file(area, make_file, 300_000)
    if COMM.rank == 1:
        seen = shared_source.seen_as(str(src), 300_000)
        assert not isinstance(seen, str)
        monkeypatch.setattr(shared_source, "seen_as",
                            lambda path, size: (seen[0], seen[1], "another"))
    with pytest.raises(UsageError, match="needs the same source on every node: node 1 "
                       ".* sees other bytes at"):
        mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                       read_by="all")
    assert_all(os.listdir(area / f"n{COMM.rank}") == [], "nothing written")


def test_read_by_all_stages_and_says_how_it_verified(area, make_file, assert_all,
                                                    monkeypatch):
    """Each node reads a share; a chunk damaged in one node's memory fails that node
    only (it differs from its reader's digest); --verify re-reads the others' copies as
    hash lists."""
    src = source_file(area, make_file, 1_000_003)
    monkeypatch.setenv("MPISTAGE_TEST_FAULTS", "corrupt-chunk@1")
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            read_by="all", chunk_size=CHUNK, verify=True)
    assert_all(report.algorithm == "ring" and report.read_by == "all")
    assert_all([n.index for n in report.failed] == [1], str(report.failed))
    assert_all("differs from what its reader read" in (report.failed[0].error or ""))
    copy = area / f"n{COMM.rank}" / "src.bin"
    assert_all(not copy.exists() if COMM.rank == 1 else copy.read_bytes() == src.read_bytes())
    assert_all(all("read" in r.phases for r in report.ranks), "every node read")
    assert_all(report.source_digest == file_chunk_digest(src, CHUNK))


@pytest.mark.parametrize("change", ["append", "replace"])
def test_a_shared_source_changed_while_it_is_read_is_never_staged(area, make_file,
                                                                  assert_all, change):
    """As with one reader: every reader checks the file it reads, none keeps a copy."""
    size = 64 * CHUNK
    src = source_file(area, make_file, size)
    replacement = area / "replacement.bin"
    if COMM.rank == 0:
        shutil.copyfile(src, replacement)
    COMM.Barrier()
    changed: list[int] = []

    def meddle(done: int, total: int) -> None:
        if not changed:
            changed.append(done)
            if change == "append":
                with open(src, "ab") as f:
                    f.write(b"more")
            else:
                os.replace(replacement, src)

    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            read_by="all", chunk_size=CHUNK, depth=2, progress=meddle)
    assert_all(not report.ok and len(report.failed) == COMM.size)
    expected = "changed size" if change == "append" else "was replaced by another file"
    assert_all(expected in (report.source_error or ""), str(report.source_error))
    assert_all(os.listdir(area / f"n{COMM.rank}") == [], "no copy, no temp file")
