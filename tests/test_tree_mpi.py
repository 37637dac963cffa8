"""Trees through stage() under mpiexec -n 2 and -n 4, every rank its own node.

Every assertion is collective, so a failure on any rank fails on rank 0 too.
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

import pytest
from mpi4py import MPI
from treelisting import listing, rsync_differences

import mpistage
from mpistage import UsageError
from mpistage.engine.algorithms import SCHEDULES
from mpistage.sinks.file import TEMP_SUFFIX

COMM = MPI.COMM_WORLD
CHUNK = 16 << 10
MTIME = 1_600_000_000_123_456_789

# The rsync check skips where rsync is missing; on one rank only, inside a collective
# check, that would hang the others: so every rank skips the module alike (CI has rsync).
pytestmark = [pytest.mark.mpi(min_size=2),
              pytest.mark.skipif(shutil.which("rsync") is None,
                                 reason="rsync is not installed (the outside check of staged "
                                 "trees)")]


@pytest.fixture
def area(mpi_tmp_path: Path) -> Path:
    """A shared temp dir with ``src/data`` (a nested tree) and ``n0``, ``n1`` … per node."""
    if COMM.rank == 0:
        for node in range(COMM.size):
            (mpi_tmp_path / f"n{node}").mkdir()
        data = mpi_tmp_path / "src" / "data"
        (data / "sub" / "deeper").mkdir(parents=True)
        (data / "empty-dir").mkdir()
        for number in range(40):  # small files sharing chunks
            (data / "sub" / f"small{number:02d}").write_bytes(os.urandom(number * 37))
        (data / "big.bin").write_bytes(os.urandom(300_000))  # spans many chunks
        (data / "sub" / "deeper" / "x").write_bytes(b"x")
        (data / "link").symlink_to("sub/deeper/x")
        for path in sorted(data.rglob("*"), reverse=True):
            os.utime(path, ns=(0, MTIME), follow_symlinks=False)
    COMM.Barrier()
    return mpi_tmp_path


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(TEMP_SUFFIX)]


def stage_tree(area: Path, **options) -> mpistage.StageReport:  # type: ignore[no-untyped-def]
    options.setdefault("chunk_size", CHUNK)
    return mpistage.stage(area / "src" / "data", str(area / "n{node}"), comm=COMM,
                          ranks_as_nodes=True, **options)


@pytest.mark.parametrize("algorithm", [a for a in mpistage.ALGORITHMS
                                       if not SCHEDULES[a].every_node_reads])
def test_every_node_gets_the_whole_tree(area, assert_all, algorithm):
    report = stage_tree(area, algorithm=algorithm)
    mine = area / f"n{COMM.rank}"
    assert_all(report.ok, str([n.error for n in report.failed]))
    assert_all(listing(mine / "data") == listing(area / "src" / "data")
               and rsync_differences(area / "src" / "data", mine / "data") == [], "trees differ")
    assert_all(leftovers(mine) == [], "temp entries left behind")
    assert_all(report.tree is not None and report.tree["files"] == 42
               and report.tree["files_sent"] == 42 and report.tree["symlinks"] == 1)
    assert_all(all(n.files_copied == 42 and n.status == "copied" for n in report.nodes))
    assert_all(report == COMM.bcast(report, root=0), "every rank returns the same report")


def test_a_rerun_sends_only_what_some_node_lacks(area, assert_all):
    stage_tree(area)
    again = stage_tree(area)
    assert_all(again.ok and again.tree["files_sent"] == 0 and again.transfer_seconds == 0)
    assert_all(all(n.status == "up-to-date" and n.files_up_to_date == 42 for n in again.nodes))
    assert_all("up to date already; nothing was sent" in again.summary())
    victim = COMM.size - 1
    if COMM.rank == victim:  # one node's copy of one file goes bad
        (area / f"n{victim}" / "data" / "sub" / "small05").write_bytes(b"garbage")
    COMM.Barrier()
    third = stage_tree(area)
    assert_all(third.ok and third.tree["files_sent"] == 1, str(third.tree))
    statuses = {n.index: (n.status, n.files_copied, n.files_up_to_date) for n in third.nodes}
    assert_all(statuses[victim] == ("copied", 1, 41), str(statuses))
    assert_all(all(statuses[i][0] == "up-to-date" for i in statuses if i != victim))
    mine = area / f"n{COMM.rank}"
    assert_all(listing(mine / "data") == listing(area / "src" / "data")
               and rsync_differences(area / "src" / "data", mine / "data") == [])


def test_several_sources_and_a_file_list(area, assert_all):
    data = area / "src" / "data"
    report = mpistage.stage([data / "big.bin", data / "sub"], str(area / "n{node}"), comm=COMM,
                            ranks_as_nodes=True, chunk_size=CHUNK)
    mine = area / f"n{COMM.rank}"
    assert_all(report.ok and sorted(os.listdir(mine)) == ["big.bin", "sub"])
    assert_all((mine / "big.bin").read_bytes() == (data / "big.bin").read_bytes())
    assert_all(listing(mine / "sub") == listing(data / "sub")
               and rsync_differences(data / "sub", mine / "sub") == [])
    if COMM.rank == 0:
        (area / "list").write_text("sub/deeper/x\nbig.bin\n")
    COMM.Barrier()
    listed = mpistage.stage(None, str(area / "n{node}" / "listed/"), comm=COMM, mkdir=True,
                            files_from=area / "list", base=data, ranks_as_nodes=True)
    assert_all(listed.ok, str([n.error for n in listed.failed]))
    assert_all(sorted(p.relative_to(mine / "listed").as_posix()
                      for p in (mine / "listed").rglob("*"))
               == ["big.bin", "sub", "sub/deeper", "sub/deeper/x"])


def test_a_node_whose_disk_fills_mid_tree_keeps_nothing_of_it(area, assert_all):
    """RLIMIT_FSIZE refuses writes past 64 KiB on one rank, mid-way through big.bin."""
    victim = 1 if COMM.size == 2 else COMM.size // 2
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    if COMM.rank == victim:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, limits[1]))
    try:
        report = stage_tree(area)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert_all(not report.ok and [n.index for n in report.failed] == [victim])
    assert_all("File too large" in (report.failed[0].error or ""), str(report.failed))
    assert_all(report.failed[0].files_failed == 42)
    mine = area / f"n{COMM.rank}"
    if COMM.rank == victim:
        assert_all(os.listdir(mine) == [], "nothing of the tree, no temp entry")
    else:
        assert_all(listing(mine / "data") == listing(area / "src" / "data")
                   and rsync_differences(area / "src" / "data", mine / "data") == [])


def test_a_bad_node_is_left_out_or_stops_the_run(area, assert_all):
    target = str(area / "n{node}" / "deep" / "x")  # missing parent everywhere but node 0
    if COMM.rank == 0:
        (area / "n0" / "deep").mkdir()
    COMM.Barrier()
    with pytest.raises(UsageError, match="does not exist"):
        stage_tree_to(area, target)
    report = stage_tree_to(area, target, skip_bad_nodes=True)
    assert_all(not report.ok and [n.index for n in report.nodes if n.ok] == [0])
    assert_all(listing(area / "n0" / "deep" / "x") == listing(area / "src" / "data")
               and rsync_differences(area / "src" / "data", area / "n0" / "deep" / "x") == [])


def stage_tree_to(area: Path, target: str,
                  **options) -> mpistage.StageReport:  # type: ignore[no-untyped-def]
    return mpistage.stage(area / "src" / "data", target, comm=COMM, ranks_as_nodes=True,
                          chunk_size=CHUNK, **options)


def test_root_other_than_rank_zero_and_explain(area, assert_all):
    root = COMM.size - 1
    prediction = mpistage.explain(area / "src" / "data", str(area / "n{node}"), comm=COMM,
                                  root=root, ranks_as_nodes=True)
    assert_all(prediction is not None and prediction.nodes == COMM.size)
    report = mpistage.stage(area / "src" / "data", str(area / "n{node}"), comm=COMM,
                            root=root, ranks_as_nodes=True, chunk_size=CHUNK)
    assert_all(report.ok)
    assert_all(listing(area / f"n{COMM.rank}" / "data") == listing(area / "src" / "data")
               and rsync_differences(area / "src" / "data", area / f"n{COMM.rank}" / "data") == [])


class Recorder:
    """A progress callback that also counts files, as the CLI's progress line does."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        self._files = (0, 0)

    def files(self, done: int, total: int) -> None:
        self._files = (done, total)

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total, *self._files))


def test_progress_counts_files_and_bytes(area, assert_all):
    recorder = Recorder()
    report = stage_tree(area, progress=recorder)
    assert_all(report.ok)
    if COMM.rank == 0:  # the root alone reports progress
        good = (recorder.calls[-1] == (report.size, report.size, 42, 42)
                and all(a[2] <= b[2] for a, b in zip(recorder.calls, recorder.calls[1:])))
    else:
        good = recorder.calls == []
    assert_all(good, str(recorder.calls[-3:]))


def test_a_symlink_planted_inside_dest_is_replaced_not_followed(area, assert_all):
    stage_tree(area)
    outside = area / f"outside{COMM.rank}"
    outside.mkdir()
    (outside / "small05").write_text("not yours")
    mine = area / f"n{COMM.rank}" / "data"
    if COMM.rank == COMM.size - 1:  # a user of the last node swaps a directory for a link
        shutil.rmtree(mine / "sub")
        (mine / "sub").symlink_to(outside)
    COMM.Barrier()
    report = stage_tree(area)
    assert_all(report.ok and report.tree["files_sent"] == 41, str(report.tree))
    differences = rsync_differences(area / "src" / "data", mine)
    assert_all(listing(mine) == listing(area / "src" / "data") and differences == [],
               str(differences))
    assert_all(os.listdir(outside) == ["small05"] and
               (outside / "small05").read_text() == "not yours", "written through a link")


def test_a_file_unreadable_on_the_root_fails_every_node_and_leaves_nothing(
        area, assert_all, monkeypatch):
    from mpistage.sources import tree as treesource

    real = treesource.pread_full

    def failing(fd, view, offset):  # type: ignore[no-untyped-def]
        if os.readlink(f"/proc/self/fd/{fd}").endswith("big.bin"):
            raise OSError(5, "Input/output error")
        return real(fd, view, offset)

    monkeypatch.setattr(treesource, "pread_full", failing)  # acts on the root only
    report = stage_tree(area)
    assert_all(not report.ok and len(report.failed) == COMM.size)
    assert_all("big.bin failed: Input/output error" in (report.source_error or ""),
               str(report.source_error))
    assert_all(os.listdir(area / f"n{COMM.rank}") == [], "nothing of the tree anywhere")


def test_a_file_changed_after_the_walk_fails_the_run(area, assert_all, monkeypatch):
    from mpistage.sources.tree import TreeSource

    real = TreeSource._open_next

    grown = []

    def appending(self):  # type: ignore[no-untyped-def]
        if not grown:  # once, after the walk, before the root reads the first file
            with open(area / "src" / "data" / "sub" / "deeper" / "x", "ab") as tail:
                grown.append(tail.write(b"more"))
        real(self)

    monkeypatch.setattr(TreeSource, "_open_next", appending)  # the root's reader only
    report = stage_tree(area)
    assert_all(not report.ok and "x changed size (1 to 5 bytes)" in (report.source_error or ""),
               str(report.source_error))
    assert_all(os.listdir(area / f"n{COMM.rank}") == [])
