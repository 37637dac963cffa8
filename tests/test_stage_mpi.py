"""stage() under mpiexec -n 2 and -n 4, every rank its own node.

Run with ``mpiexec -n N python -m pytest --only-mpi``; every assertion is collective, so
a failure on any rank fails on rank 0 too.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from pathlib import Path

import pytest
from mpi4py import MPI

import mpistage
from mpistage import UsageError
from mpistage.digest import file_digest
from mpistage.sink import TEMP_SUFFIX

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
    assert_all(report.source_digest == file_digest(src))
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
    assert_all(all("read" not in r.phases for r in others), "only the root reads the source")


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
    "source is a directory": (lambda a: (a, a / "n{node}"), "is a directory"),
    "dest parent missing": (lambda a: (a / "src.bin", a / "missing" / "x"), "does not exist"),
    "dest parent missing on one node": (
        lambda a: (a / "src.bin", a / "n{node}" / "sub{node}" / "x"), "node 0 .*does not exist"),
    "bad placeholder": (lambda a: (a / "src.bin", a / "{nodes}"), "unknown placeholder"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=BAD_INPUTS.keys())
def test_bad_input_raises_on_every_rank_and_creates_nothing(area, make_file, assert_all, case):
    source_file(area, make_file, 1000)  # so that only the case's own fault is wrong
    if COMM.rank == 0:
        (area / "n1" / "sub1").mkdir()  # only node 1 has the subdirectory
    COMM.Barrier()
    paths, message = BAD_INPUTS[case]
    source, dest = paths(area)
    before = sorted(str(p) for p in area.rglob("*"))
    with pytest.raises(UsageError, match=message):
        mpistage.stage(source, str(dest), comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK)
    COMM.Barrier()
    assert_all(sorted(str(p) for p in area.rglob("*")) == before, "nothing created")


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": "ring"}, "expected one of chain, binomial, bcast"),
    ({"chunk_size": 0}, "invalid chunk size"),
    ({"root": 99}, "invalid root 99"),
    ({"depth": 1}, "invalid depth"),
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
                                chunk_size=64 << 20)
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
