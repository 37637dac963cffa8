"""The source: a file read chunk by chunk, and what happens when it changes meanwhile."""

from __future__ import annotations

import os
from pathlib import Path

from mpistage.digest import file_digest
from mpistage.engine.buffers import BufferPool, PhaseClock
from mpistage.plan import Plan, describe_source
from mpistage.sources.source import FileSource


def read_all(plan: Plan) -> tuple[FileSource, list[bytes]]:
    pool = BufferPool(2, plan.chunk_size)
    source = FileSource(plan, pool, PhaseClock())
    source.start()
    chunks = []
    for expected in range(plan.nchunks):
        k, index = source.next_chunk(10, excused=lambda: False)
        assert k == expected
        chunks.append(bytes(pool.buffers[index][: plan.chunk_length(k)]))
        pool.release(index)
    source.join(10)
    return source, chunks


def test_a_file_is_read_whole_and_digested(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom((3 << 20) + 17))
    plan = Plan.of(describe_source(src, str(tmp_path / "out")), chunk_size=1 << 21,
                   algorithm="chain")
    source, chunks = read_all(plan)
    assert source.error is None and b"".join(chunks) == src.read_bytes()
    assert source.digest == file_digest(src)


def test_a_file_that_shrank_is_an_error_and_the_rest_is_zeros(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    plan = Plan.of(describe_source(src, str(tmp_path / "out")), chunk_size=1 << 20,
                   algorithm="chain")
    os.truncate(src, (1 << 20) + 5)
    source, chunks = read_all(plan)
    assert source.error is not None and "changed size" in source.error
    assert source.digest is None
    assert len(chunks) == 3 and chunks[1] == bytes(1 << 20) and chunks[2] == bytes(1 << 20)
