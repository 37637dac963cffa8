"""The pieces a re-formed run is made of (mpistage.engine.recovery), without a cluster: a reader
that resumes, a copy read back, a writer that goes on, edges that carry only what the
child lacks, and one send in flight per child.  Whole runs with a node killed or cut
off are in tests/test_faults.py and tests/test_random_kills.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from mpistage.digest import file_digest
from mpistage.engine.buffers import BufferPool, PhaseClock
from mpistage.engine.frames import framing_for
from mpistage.engine.reader import ChunkSource
from mpistage.engine.reformed import Reformed
from mpistage.engine.schedules import (DATA_TAG, BinomialSchedule, ChainSchedule, FlatSchedule,
                                       KaryTreeSchedule)
from mpistage.engine.writer import ChunkWriter
from mpistage.plan import Plan, describe_source
from mpistage.sinks.file import Sink
from mpistage.sources.held import HeldChunks
from mpistage.sources.source import FileSource

CHUNK = 4096


def a_plan(tmp_path: Path, size: int) -> Plan:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(size))
    return Plan.of(describe_source(src, str(tmp_path / "out")), chunk_size=CHUNK,
                   algorithm="chain")


def take(source: ChunkSource, pool: BufferPool, plan: Plan, count: int) -> list[bytes]:
    """The next ``count`` chunks the reader hands over, in order."""
    chunks = []
    for _ in range(count):
        k, index = source.next_chunk(10, excused=lambda: False)
        chunks.append(bytes(pool.buffers[index][: plan.chunk_length(k)]))
        pool.release(index)
    return chunks


@settings(max_examples=30, deadline=None)
@given(chunks=st.integers(1, 9), taken=st.integers(0, 9), back=st.integers(0, 9),
       tail=st.integers(0, CHUNK - 1))
def test_a_resumed_reader_digests_every_byte_once(tmp_path_factory: pytest.TempPathFactory,
                                                  chunks: int, taken: int, back: int,
                                                  tail: int) -> None:
    """A reader stopped after some chunks (the transfer stalled) and one resumed from an
    earlier chunk (what the re-formed run's children lack) give the digest of the whole
    file, and the chunks read again are the file's."""
    tmp_path = tmp_path_factory.mktemp("resume")
    plan = a_plan(tmp_path, max(1, (chunks - 1) * CHUNK + tail))
    taken = min(taken, plan.nchunks)
    pool = BufferPool(2, CHUNK)
    first = FileSource(plan, pool, PhaseClock())
    first.start()
    take(first, pool, plan, taken)
    pool.close()  # the engine gave up: the reader stops where it is
    first.join(10)
    start = max(0, min(first.chunks_read, taken) - back)
    pool = BufferPool(2, CHUNK)
    second = FileSource.resumed(first, start, pool, PhaseClock())
    second.start()
    again = take(second, pool, plan, plan.nchunks - start)
    second.join(10)
    data = Path(plan.source).read_bytes()
    assert b"".join(again) == data[start * CHUNK:]
    assert second.error is None and second.digest == file_digest(plan.source)


def test_held_chunks_reads_back_what_the_copy_holds(tmp_path: Path) -> None:
    plan = a_plan(tmp_path, 6 * CHUNK)
    copy = tmp_path / "partial"
    data = Path(plan.source).read_bytes()
    copy.write_bytes(data[: 4 * CHUNK])  # four chunks written before the stall
    pool = BufferPool(2, CHUNK)
    held = HeldChunks(plan, pool, PhaseClock(), str(copy))
    held.first, held.until = 1, 4
    held.start()
    assert take(held, pool, plan, 3) == [data[k * CHUNK:(k + 1) * CHUNK] for k in (1, 2, 3)]
    held.join(10)
    assert held.error is None


def test_a_resumed_writer_goes_on_with_the_same_copy_and_digest(tmp_path: Path) -> None:
    plan = a_plan(tmp_path, 6 * CHUNK - 7)
    data = Path(plan.source).read_bytes()
    sink = Sink(tmp_path / "copy.bin")
    pool = BufferPool(2, CHUNK)
    writer = ChunkWriter(plan, sink, pool, PhaseClock(), framing_for(plan), digests=True)

    def write(chunks: range) -> None:
        for k in chunks:
            index = pool.take()
            assert index is not None
            pool.buffers[index][: plan.chunk_length(k)] = data[k * CHUNK:(k + 1) * CHUNK]
            pool.hold(index, 1)
            writer.put(k, index)

    writer.start()
    write(range(0, 2))
    writer.finish(10, lambda progress: None)
    assert writer.held == 2 and writer.error is None
    pool = BufferPool(3, CHUNK)  # the re-formed run's buffers
    writer.resume(pool)
    writer.start()
    write(range(2, plan.nchunks))
    writer.finish(10, lambda progress: None)
    assert writer.held == plan.nchunks and writer.digest == file_digest(plan.source)
    sink.commit(mode=0o644, mtime_ns=plan.mtime_ns)
    assert (tmp_path / "copy.bin").read_bytes() == data


@pytest.mark.parametrize("shape", [ChainSchedule, BinomialSchedule, KaryTreeSchedule,
                                   FlatSchedule])
def test_a_re_formed_run_lays_the_shape_over_the_survivors(shape: type) -> None:
    """Survivors 0, 3, 5 and 6 of a broken run (rank 0 the root): the algorithm's shape
    over them, in their order, on a tag of the round's own."""
    members = [0, 3, 5, 6]
    schedule = Reformed(shape, MPI.COMM_SELF, members, {m: 0 for m in members}, 2, 1)
    assert schedule.is_root and schedule.parent is None and schedule.tag != DATA_TAG
    assert schedule.children == [members[c] for c in shape.children_of(0, 4, 2)]


def test_an_edge_of_a_re_formed_run_carries_only_what_the_child_lacks() -> None:
    schedule = Reformed(ChainSchedule, MPI.COMM_SELF, [0, 7], {0: 9, 7: 5}, 2, 1)
    buf = np.zeros(8, np.uint8)
    assert schedule.children == [7]
    assert schedule.post_forward(buf, 4).done, "the child holds chunks 0-4"
    assert not schedule.post_forward(buf, 5).done, "chunk 5 it lacks"
