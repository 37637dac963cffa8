"""What a careful user trips over, under mpiexec -n 2 and -n 4 (every rank its own node):
one path written by many nodes, and arguments that differ from rank to rank.

Every assertion is collective, so a failure on any rank fails on rank 0 too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mpi4py import MPI

import mpistage
from mpistage import UsageError

COMM = MPI.COMM_WORLD
pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def source(mpi_tmp_path: Path) -> Path:
    path = mpi_tmp_path / "in.dat"
    if COMM.rank == 0:
        path.write_bytes(os.urandom(100_000))
        (mpi_tmp_path / "out").mkdir()
    COMM.Barrier()
    return path


def raised(call) -> str:  # type: ignore[no-untyped-def]
    try:
        call()
    except UsageError as exc:
        return str(exc)
    return ""


def test_nodes_that_would_write_one_file_are_refused_before_anything_moves(
        source, mpi_tmp_path, assert_all):  # type: ignore[no-untyped-def]
    out = mpi_tmp_path / "out"
    message = raised(lambda: mpistage.stage(source, f"{out}/", comm=COMM, ranks_as_nodes=True))
    messages = COMM.allgather(message)
    assert_all(len(set(messages)) == 1, f"not the same error everywhere: {messages}")
    nodes = " and ".join(f"{n} ({MPI.Get_processor_name()})" for n in range(COMM.size))
    assert_all(message.startswith("nodes ") and f"would all write {out}/in.dat" in message,
               message)
    assert_all("{node}" in message and (COMM.size > 4 or nodes.split(" and ")[-1] in message),
               message)
    COMM.Barrier()
    assert_all(os.listdir(out) == [], f"left behind: {os.listdir(out)}")  # no marker, no copy


def test_a_dest_with_node_gives_every_node_its_own_copy(source, mpi_tmp_path, assert_all):  # type: ignore[no-untyped-def]
    out = mpi_tmp_path / "out"
    report = mpistage.stage(source, f"{out}/{{node}}/", comm=COMM, ranks_as_nodes=True,
                            mkdir=True)
    assert_all(report.ok and len(report.nodes) == COMM.size, str(report.nodes))
    assert_all(sorted(os.listdir(out)) == sorted(str(n) for n in range(COMM.size)))
    assert_all(os.listdir(out / str(COMM.rank)) == ["in.dat"])


def test_a_dest_that_differs_between_ranks_is_refused_on_every_rank(
        source, mpi_tmp_path, assert_all):  # type: ignore[no-untyped-def]
    out = mpi_tmp_path / "out"
    mine = out / f"n{COMM.rank}"
    mine.mkdir()
    message = raised(lambda: mpistage.stage(source, f"{mine}/", comm=COMM,
                                            ranks_as_nodes=True))
    assert_all(len(set(COMM.allgather(message))) == 1, message)
    assert_all(f"dest='{out}/n1/' on rank 1 but dest='{out}/n0/' on rank 0" in message, message)
    assert_all("{rank}" in message, message)
    COMM.Barrier()
    assert_all(os.listdir(mine) == [], "nothing staged anywhere")


def test_the_first_argument_that_differs_is_named_lowest_rank_first(
        source, mpi_tmp_path, assert_all):  # type: ignore[no-untyped-def]
    out = mpi_tmp_path / "out"
    # chunk_size differs on every rank but 0, and timeout on the last: the earlier
    # argument (chunk_size) on the lowest rank (1) is the one named
    chunk = "64K" if COMM.rank == 0 else f"{64 << COMM.rank}K"
    timeout = 30.0 if COMM.rank < COMM.size - 1 else 31.0
    message = raised(lambda: mpistage.stage(source, f"{out}/{{rank}}", comm=COMM,
                                            ranks_as_nodes=True, chunk_size=chunk,
                                            timeout=timeout))
    assert_all(len(set(COMM.allgather(message))) == 1, message)
    assert_all("chunk_size='128K' on rank 1 but chunk_size='64K' on rank 0" in message, message)


def test_a_streams_source_is_the_roots_alone(mpi_tmp_path, assert_all):  # type: ignore[no-untyped-def]
    import io

    out = mpi_tmp_path / "out"
    if COMM.rank == 0:
        out.mkdir()
    COMM.Barrier()
    data = COMM.bcast(os.urandom(50_000) if COMM.rank == 0 else None)
    source = io.BytesIO(data) if COMM.rank == 0 else None
    report = mpistage.stage(source, f"{out}/{{rank}}.bin", comm=COMM, ranks_as_nodes=True,
                            expect_size=len(data))
    assert_all(report.ok, str(report.nodes))
    assert_all((out / f"{COMM.rank}.bin").read_bytes() == data)


def test_shared_dest_writes_the_file_once_and_every_other_node_checks_it(
        source, mpi_tmp_path, assert_all):  # type: ignore[no-untyped-def]
    out = mpi_tmp_path / "out"
    for run in ("new", "again"):
        report = mpistage.stage(source, f"{out}/", comm=COMM, ranks_as_nodes=True,
                                shared_dest=True)
        statuses = [n.status for n in report.nodes]
        first = "copied" if run == "new" else "up-to-date"
        assert_all(report.ok and statuses == [first] + ["shared"] * (COMM.size - 1),
                   f"{run}: {statuses}")
        assert_all("share another node's file" in report.summary())
        assert_all(os.listdir(out) == ["in.dat"], str(os.listdir(out)))
        assert_all((out / "in.dat").read_bytes() == source.read_bytes())
        COMM.Barrier()


def test_a_tree_is_refused_a_shared_dest_even_on_purpose(mpi_tmp_path, assert_all):  # type: ignore[no-untyped-def]
    tree, out = mpi_tmp_path / "tree", mpi_tmp_path / "out"
    if COMM.rank == 0:
        (tree / "sub").mkdir(parents=True)
        (tree / "sub" / "f").write_bytes(b"x")
        out.mkdir()
    COMM.Barrier()
    plain = raised(lambda: mpistage.stage(tree, f"{out}/", comm=COMM, ranks_as_nodes=True))
    assert_all(f"would all write {out}/tree" in plain, plain)
    meant = raised(lambda: mpistage.stage(tree, f"{out}/", comm=COMM, ranks_as_nodes=True,
                                          shared_dest=True))
    assert_all(meant.startswith("--shared-dest writes one file"), meant)
    COMM.Barrier()
    assert_all(os.listdir(out) == [], str(os.listdir(out)))
    # the tree there already (a run before): the directory itself is where all meet
    if COMM.rank == 0:
        (out / "tree").mkdir()
    COMM.Barrier()
    again = raised(lambda: mpistage.stage(tree, f"{out}/", comm=COMM, ranks_as_nodes=True))
    assert_all(f"would all write {out}/tree" in again, again)
    assert_all(os.listdir(out / "tree") == [], str(os.listdir(out / "tree")))
