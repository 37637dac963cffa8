"""Streams, --pipe and --compress through stage() under mpiexec -n 2 and -n 4, every rank
its own node.  Every assertion is collective, so a failure on any rank fails on rank 0 too.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from mpi4py import MPI

import mpistage
from mpistage import UsageError
from mpistage.sinks.file import TEMP_SUFFIX
from mpistage.sources.streams import FromCommand

COMM = MPI.COMM_WORLD
CHUNK = 16 << 10

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def area(mpi_tmp_path: Path) -> Path:
    if COMM.rank == 0:
        for node in range(COMM.size):
            (mpi_tmp_path / f"n{node}").mkdir()
    COMM.Barrier()
    return mpi_tmp_path


def text(size: int, seed: int = 1) -> bytes:
    """Compressible bytes: CSV-like lines (zstd: ~3x)."""
    import random

    rng = random.Random(seed)
    words = [f"w{rng.randrange(10_000)}" for _ in range(500)]
    out = io.StringIO()
    line = 0
    while out.tell() < size:
        out.write(f"{line},{rng.choice(words)},{rng.randrange(100_000)}\n")
        line += 1
    return out.getvalue().encode()[:size]


def shared(data: bytes | None) -> bytes:
    """The root's bytes, known on every rank (for checking)."""
    return COMM.bcast(data, root=0)


def leftovers(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(TEMP_SUFFIX)]


def mine(area: Path, name: str) -> Path:
    return area / f"n{COMM.rank}" / name


# -- standard input (a binary file object stands in for it: same code after open) -------

@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK, 5 * CHUNK + 123])
def test_a_stream_of_any_length_reaches_every_node(area, assert_all, size):
    data = shared(os.urandom(size) if COMM.rank == 0 else None)
    source = io.BytesIO(data) if COMM.rank == 0 else None  # only the root's counts
    report = mpistage.stage(source, str(area / "n{node}" / "copy"), comm=COMM,
                            ranks_as_nodes=True, chunk_size=CHUNK, algorithm="chain")
    assert_all(report.ok, str(report.failed))
    assert_all(report.size == size, f"the report says {report.size}")
    assert_all(mine(area, "copy").read_bytes() == data)
    assert_all(not leftovers(area / f"n{COMM.rank}"))


@pytest.mark.parametrize("algorithm", ["binomial", "tree", "flat"])
def test_a_stream_through_every_point_to_point_schedule(area, assert_all, algorithm):
    data = shared(os.urandom(7 * CHUNK + 5) if COMM.rank == 0 else None)
    report = mpistage.stage(io.BytesIO(data), str(area / "n{node}" / "copy"), comm=COMM,
                            ranks_as_nodes=True, chunk_size=CHUNK, algorithm=algorithm)
    assert_all(report.ok and mine(area, "copy").read_bytes() == data)


def test_a_stream_is_refused_with_mpis_broadcast_and_into_a_directory(area, assert_all):
    with pytest.raises(UsageError, match="point-to-point"):
        mpistage.stage(io.BytesIO(b"x"), str(area / "n{node}" / "c"), comm=COMM,
                       ranks_as_nodes=True, algorithm="bcast")
    with pytest.raises(UsageError, match="standard input has no name"):
        mpistage.stage(io.BytesIO(b"x"), str(area / "n{node}"), comm=COMM, ranks_as_nodes=True)
    assert_all(True)


def test_expect_size_checks_the_space(area, assert_all):
    with pytest.raises(UsageError, match="not enough space"):
        mpistage.stage(io.BytesIO(b"x"), str(area / "n{node}" / "c"), comm=COMM,
                       ranks_as_nodes=True, expect_size=1 << 60)
    assert_all(not mine(area, "c").exists())


class DyingReader(io.RawIOBase):
    """A stream whose read fails after ``good`` bytes (a reader that breaks mid-stream)."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, view) -> int:  # type: ignore[no-untyped-def]
        if self.left <= 0:
            raise OSError(5, "Input/output error")
        count = min(len(view), self.left, 4096)
        view[:count] = b"a" * count
        self.left -= count
        return count


def test_a_stream_that_breaks_mid_way_is_kept_nowhere(area, assert_all):
    report = mpistage.stage(DyingReader(3 * CHUNK + 7) if COMM.rank == 0 else io.BytesIO(),
                            str(area / "n{node}" / "copy"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK, algorithm="chain")
    assert_all(not report.ok and "Input/output error" in (report.source_error or ""))
    assert_all(not mine(area, "copy").exists() and not leftovers(area / f"n{COMM.rank}"))


def test_a_producer_that_dies_mid_stream_fails_the_run(area, assert_all):
    """--from-cmd: the producer is killed after sending part of its output."""
    report = mpistage.stage(FromCommand("head -c 100000 /dev/zero; kill -9 $$"),
                            str(area / "n{node}" / "copy"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK)
    assert_all(not report.ok and "killed by SIGKILL" in (report.source_error or ""),
               str(report.source_error))
    assert_all(not mine(area, "copy").exists() and not leftovers(area / f"n{COMM.rank}"))


def test_a_producers_whole_output_is_staged(area, assert_all):
    report = mpistage.stage(FromCommand("head -c 200000 /dev/zero; printf end"),
                            str(area / "n{node}" / "copy"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK)
    assert_all(report.ok and mine(area, "copy").read_bytes() == bytes(200000) + b"end")


# -- --pipe -------------------------------------------------------------------------------

def source_file(area: Path, data: bytes) -> Path:
    path = area / "src.bin"
    if COMM.rank == 0:
        path.write_bytes(data)
    COMM.Barrier()
    return path


def test_pipe_feeds_every_nodes_command(area, assert_all):
    data = shared(os.urandom(5 * CHUNK + 3) if COMM.rank == 0 else None)
    src = source_file(area, data)
    report = mpistage.stage(src, None, comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK,
                            pipe=f"cat > {area}/n{{node}}/piped; echo 'node {{node}} done' >&2")
    assert_all(report.ok, str(report.failed))
    assert_all(mine(area, "piped").read_bytes() == data)
    assert_all(all(n.stderr == f"node {n.index} done" for n in report.nodes),
               "each command's stderr reaches the report")
    assert_all("done" in report.summary())


def test_a_failing_command_fails_its_node_with_status_and_stderr(area, assert_all):
    src = source_file(area, shared(os.urandom(3 * CHUNK) if COMM.rank == 0 else None))
    report = mpistage.stage(
        src, None, comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK,
        pipe="cat > /dev/null; if [ {node} = 1 ]; then echo 'no space' >&2; exit 3; fi")
    assert_all([n.index for n in report.failed] == [1])
    error = report.failed[0].error or ""
    assert_all("exited with status 3" in error and "no space" in error, error)


def test_a_command_that_exits_early_stalls_no_one(area, assert_all):
    data = shared(os.urandom(40 * CHUNK) if COMM.rank == 0 else None)
    src = source_file(area, data)
    report = mpistage.stage(
        src, None, comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK, algorithm="chain",
        timeout=20, pipe=f"if [ {{node}} = 1 ]; then head -c 10 > /dev/null; "
                         f"else cat > {area}/n{{node}}/piped; fi")
    assert_all([n.index for n in report.failed] == [1])
    assert_all("after taking" in (report.failed[0].error or ""), report.failed[0].error or "")
    if COMM.rank != 1:
        assert_all(mine(area, "piped").read_bytes() == data, "the others still get every byte")
    else:
        assert_all(True)


def test_a_command_that_blocks_is_given_up_and_the_others_complete(area, assert_all):
    data = shared(os.urandom(64 * CHUNK) if COMM.rank == 0 else None)
    src = source_file(area, data)
    report = mpistage.stage(
        src, None, comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK, algorithm="chain",
        timeout=4, pipe=f"if [ {{node}} = 1 ]; then sleep 60; "
                        f"else cat > {area}/n{{node}}/piped; fi")
    assert_all([n.index for n in report.failed] == [1])
    assert_all("does not read its input" in (report.failed[0].error or ""))
    if COMM.rank != 1:
        assert_all(mine(area, "piped").read_bytes() == data)
    else:
        assert_all(True)


def test_a_command_is_killed_before_its_input_ends_when_the_stream_is_bad(area, assert_all,
                                                                         monkeypatch):
    """A damaged chunk: the command never sees a clean end of its input."""
    src = source_file(area, shared(os.urandom(3 * CHUNK) if COMM.rank == 0 else None))
    monkeypatch.setenv("MPISTAGE_TEST_FAULTS", "corrupt-chunk@1")
    report = mpistage.stage(
        src, None, comm=COMM, ranks_as_nodes=True, chunk_size=CHUNK,
        pipe=f"cat > /dev/null && touch {area}/n{{node}}/saw-the-end")
    assert_all([n.index for n in report.failed] == [1])
    assert_all(mine(area, "saw-the-end").exists() == (COMM.rank != 1))


def test_pipe_refuses_what_means_nothing_for_it(area, assert_all):
    src = source_file(area, b"x")
    with pytest.raises(UsageError, match="--verify mean nothing with --pipe"):
        mpistage.stage(src, None, comm=COMM, pipe="cat", verify=True)
    with pytest.raises(UsageError, match="not a tree"):
        mpistage.stage([src, src], None, comm=COMM, pipe="cat")
    assert_all(True)


# -- --compress ---------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["zstd", "zstd:1", "lz4"])
@pytest.mark.parametrize("algorithm", ["chain", "binomial"])
def test_compressed_chunks_arrive_as_the_source(area, assert_all, codec, algorithm):
    data = shared(text(9 * CHUNK + 11) if COMM.rank == 0 else None)
    src = source_file(area, data)
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK, algorithm=algorithm, compress=codec)
    assert_all(report.ok and mine(area, "src.bin").read_bytes() == data, str(report.failed))
    assert_all(report.codec.startswith(codec.partition(":")[0]))
    assert_all(report.wire_bytes < 0.9 * len(data), f"{report.wire_bytes} on the wire")


def test_a_compressed_stream(area, assert_all):
    data = shared(text(6 * CHUNK) if COMM.rank == 0 else None)
    report = mpistage.stage(io.BytesIO(data), str(area / "n{node}" / "s"), comm=COMM,
                            ranks_as_nodes=True, chunk_size=CHUNK, compress="zstd")
    assert_all(report.ok and mine(area, "s").read_bytes() == data)


def test_auto_leaves_random_bytes_alone_and_compresses_text(area, assert_all):
    noise = source_file(area, shared(os.urandom(2 << 20) if COMM.rank == 0 else None))
    report = mpistage.stage(noise, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            compress="auto")
    assert_all(report.ok and report.codec == "none", report.codec)
    assert_all(set(report.prediction["codecs"]) >= {"none", "lz4", "zstd:3"})
    words = area / "words.csv"
    if COMM.rank == 0:
        words.write_bytes(text(4 << 20))
    COMM.Barrier()
    # A slow link (100 Mbit/s) is where compression pays.
    slow = mpistage.Parameters(latency=100e-6, bandwidth=12.5e6)
    report = mpistage.stage(words, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            compress="auto", calibration=slow)
    assert_all(report.ok and report.codec != "none", report.codec)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_a_corrupted_compressed_chunk_is_caught(area, assert_all, monkeypatch, codec):
    """Node 1 damages the encoded bytes of its first chunk before decoding them: LZ4
    decodes them to wrong bytes, which the digest catches; zstd may also refuse them."""
    data = shared(text(4 * CHUNK) if COMM.rank == 0 else None)
    src = source_file(area, data)
    monkeypatch.setenv("MPISTAGE_TEST_FAULTS", "corrupt-chunk@1")
    report = mpistage.stage(src, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK, compress=codec, algorithm="chain")
    assert_all([n.index for n in report.failed] == [1])
    error = report.failed[0].error or ""
    if codec == "lz4":
        assert_all(error.startswith("digest mismatch"), error)
    else:
        assert_all(error.startswith(("digest mismatch", "chunk 0 arrived damaged")), error)
    copy = mine(area, "src.bin")
    assert_all(not copy.exists() if COMM.rank == 1 else copy.read_bytes() == data,
               "the others got the intact encoded bytes")


def test_a_tree_travels_compressed(area, assert_all):
    top = area / "tree"
    if COMM.rank == 0:
        (top / "sub").mkdir(parents=True)
        for number in range(20):
            (top / "sub" / f"f{number}").write_bytes(text(number * 999, seed=number))
        (top / "big").write_bytes(text(7 * CHUNK))
    COMM.Barrier()
    report = mpistage.stage(top, str(area / "n{node}"), comm=COMM, ranks_as_nodes=True,
                            chunk_size=CHUNK, compress="lz4")
    assert_all(report.ok and report.codec == "lz4", str(report.failed))
    copy = area / f"n{COMM.rank}" / "tree"
    assert_all(all((copy / p.relative_to(top)).read_bytes() == p.read_bytes()
                   for p in top.rglob("*") if p.is_file()))
