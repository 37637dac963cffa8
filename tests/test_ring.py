"""The ring where every node reads a share (mpistage.engine.ring), its signed chunks and
hash-list digests, the out-of-order writer, and the checks before a shared read: pure
logic, no MPI collective."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from mpistage.digest import ChunkDigests, chunk_digest, file_chunk_digest, file_digest
from mpistage.engine.buffers import BufferPool, PhaseClock
from mpistage.engine.codec import IDENTITY
from mpistage.engine.frames import SIGNATURE, Signed, framing_for
from mpistage.engine.ring import RingSchedule, reader_of, ring_order
from mpistage.engine.writer import ChunkWriter
from mpistage.errors import UsageError
from mpistage.model import ROOT_READ, Parameters, bound, predict
from mpistage.model.choice import choose
from mpistage.plan import Plan
from mpistage.sinks.file import Sink
from mpistage.staging.options import StageOptions
from mpistage.staging.shared_source import _difference, file_system_type, seen_as


def _sends(vrank: int, nodes: int, count: int) -> list[int]:
    """The chunks ``vrank`` passes to the next node, in its order."""
    return [k for k in ring_order(vrank, nodes, 0, count)
            if reader_of(k, nodes) != (vrank + 1) % nodes]


def _receives(vrank: int, nodes: int, count: int) -> list[int]:
    return [k for k in ring_order(vrank, nodes, 0, count) if reader_of(k, nodes) != vrank]


@given(nodes=st.integers(1, 12), count=st.integers(0, 60), first=st.integers(0, 60))
def test_every_node_handles_every_chunk_once(nodes: int, count: int, first: int) -> None:
    for vrank in range(nodes):
        order = list(ring_order(vrank, nodes, min(first, count), count))
        assert sorted(order) == list(range(min(first, count), count))


@given(nodes=st.integers(2, 12), count=st.integers(0, 60))
def test_a_node_receives_exactly_what_the_one_before_sends_in_that_order(nodes: int,
                                                                         count: int) -> None:
    """MPI matches messages between two ranks in order: the sequences must agree."""
    for vrank in range(nodes):
        assert _receives(vrank, nodes, count) == _sends((vrank - 1) % nodes, nodes, count)


@given(nodes=st.integers(2, 12), count=st.integers(1, 60))
def test_the_ring_never_waits_on_itself(nodes: int, count: int) -> None:
    """Play the ring: a node takes its chunks in its order, a received one once the node
    before has handled it.  Every round of play moves some node on (no deadlock), and
    in a steady ring a chunk moves one node per step: at most N - 1 + rounds steps."""
    orders = [list(ring_order(v, nodes, 0, count)) for v in range(nodes)]
    done: list[set[int]] = [set() for _ in range(nodes)]
    position = [0] * nodes
    steps = 0
    while any(p < count for p in position):
        moved = False
        handled = [set(d) for d in done]  # a chunk handled this step moves on next step
        for v in range(nodes):
            if position[v] == count:
                continue
            k = orders[v][position[v]]
            if reader_of(k, nodes) == v or k in handled[(v - 1) % nodes]:
                done[v].add(k)
                position[v] += 1
                moved = True
        assert moved, "the ring deadlocked"
        steps += 1
    rounds = -(-count // nodes)
    assert steps <= rounds * nodes + nodes - 1


def test_a_nodes_own_chunk_comes_first_in_each_round() -> None:
    assert list(ring_order(2, 4, 0, 8)) == [2, 1, 0, 3, 6, 5, 4, 7]
    assert list(ring_order(0, 4, 0, 6)) == [0, 3, 2, 1, 4, 5]  # the short last round
    assert list(ring_order(1, 3, 4, 7)) == [4, 5, 6]  # 3 is before first


def test_the_ring_as_the_model_sees_it() -> None:
    assert RingSchedule.shape(8) == (1, 7)
    assert RingSchedule.readers(8) == 8
    assert RingSchedule.every_node_reads and not RingSchedule.in_file_order
    assert RingSchedule.buffers_needed(1000) == RingSchedule.buffers_needed(2)


def test_the_model_reads_a_share_on_every_node() -> None:
    """One client reads 25 Mbit/s, all 8 together 400: the root-read chain is bound by
    its read, the ring by the link; with a source as fast as the links the chain wins
    (the tie goes to the one listed first), and auto's default candidates leave the
    ring out."""
    slow = Parameters(latency=50e-6, bandwidth=12.5e6, read_bandwidth=3.1e6,
                      shared_read_bandwidth=50e6)
    size, chunk = 64 << 20, 1 << 20
    assert bound("chain", size, 8, chunk, slow) == "read"
    assert bound("ring", size, 8, chunk, slow) == "link"
    assert predict("chain", size, 8, chunk, slow) > 3 * predict("ring", size, 8, chunk, slow)
    fill = 7 * chunk / 12.5e6  # the first chunk's way round, then the file through a link
    assert predict("ring", size, 8, chunk, slow) == pytest.approx(size / 12.5e6 + fill,
                                                                  rel=0.05)
    fast = Parameters(latency=50e-6, bandwidth=12.5e6, read_bandwidth=100e6)
    assert choose(size, 8, fast, algorithms=("chain", "ring")).algorithm == "chain"
    assert "ring" not in ROOT_READ
    assert choose(size, 8, slow).algorithm != "ring"
    assert choose(size, 8, slow, algorithms=("chain", "ring")).algorithm == "ring"


def _plan(size: int, chunk: int) -> Plan:
    return Plan(source="/x/src", size=size, mode=0o644, mtime_ns=0, chunk_size=chunk,
                algorithm="ring", dest="/d", read_by="all")


def test_a_signed_chunk_carries_its_readers_digest() -> None:
    plan = _plan(10, 4)
    framing = framing_for(plan)
    assert isinstance(framing, Signed) and framing.capacity == 4 + SIGNATURE
    buffer = memoryview(bytearray(framing.capacity))
    buffer[:2] = b"ab"
    framing.seal(buffer, 2, 2, True, IDENTITY)
    assert framing.signature(buffer, 2) == chunk_digest(b"ab")
    assert len(framing.message(buffer, 2)) == 2 + SIGNATURE
    assert framing.whole(buffer, 2, 2 + SIGNATURE) and not framing.whole(buffer, 2, 2)
    framing.seal(buffer, 2, 2, True, IDENTITY, unread=True)
    assert framing.signature(buffer, 2) == bytes(SIGNATURE)


def test_a_hash_list_is_the_same_however_the_chunks_were_read(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    digests = ChunkDigests(3)
    for k in (2, 0, 1):
        digests.put(k, chunk_digest(data[k * 4096:(k + 1) * 4096]))
    expected = xxhash.xxh3_128(b"".join(chunk_digest(data[k * 4096:(k + 1) * 4096])
                                        for k in range(3))).hexdigest()
    assert digests.hexdigest() == expected == file_chunk_digest(path, 4096)
    assert expected != file_digest(path) != file_chunk_digest(path, 8192)


def _writer(tmp_path: Path, data: bytes, chunk: int) -> tuple[ChunkWriter, Sink, BufferPool,
                                                              Signed]:
    plan = _plan(len(data), chunk)
    framing = framing_for(plan)
    assert isinstance(framing, Signed)
    pool = BufferPool(plan.nchunks, framing.capacity)
    sink = Sink(tmp_path / "copy")
    writer = ChunkWriter(plan, sink, pool, PhaseClock(), framing, digests=True, in_order=False)
    return writer, sink, pool, framing


def _put(writer: ChunkWriter, pool: BufferPool, framing: Signed, data: bytes, chunk: int,
         order: list[int], damage: int | None = None) -> None:
    for k in order:
        index = pool.take()
        assert index is not None
        piece = data[k * chunk:(k + 1) * chunk]
        buffer = pool.buffers[index]
        buffer[:len(piece)] = piece
        framing.seal(buffer, k, len(piece), False, IDENTITY)
        if k == damage:
            buffer[0] ^= 1
        pool.hold(index, 1)
        writer.put(k, index)


def test_chunks_out_of_order_are_written_at_their_offsets(tmp_path: Path) -> None:
    data, chunk = os.urandom(10_000), 4096
    writer, sink, pool, framing = _writer(tmp_path, data, chunk)
    writer.start()
    _put(writer, pool, framing, data, chunk, [1, 0, 2])
    writer.finish(5.0, lambda progress: None)
    assert writer.error is None and writer.digest == writer.signed_digest
    assert writer.digest == file_chunk_digest(sink.temp_path, chunk)
    assert sink.temp_path is not None and sink.temp_path.read_bytes() == data
    sink.discard()


def test_a_chunk_damaged_on_the_way_fails_the_copy_not_the_sources_digest(tmp_path: Path
                                                                          ) -> None:
    data, chunk = os.urandom(10_000), 4096
    writer, sink, pool, framing = _writer(tmp_path, data, chunk)
    writer.start()
    _put(writer, pool, framing, data, chunk, [2, 1, 0], damage=1)
    writer.finish(5.0, lambda progress: None)
    assert writer.error == "chunk 1 arrived damaged: it differs from what its reader read"
    assert writer.digest is None and sink.temp_path is None, "nothing of the copy stays"
    assert writer.signed_digest == file_chunk_digest_of(data, chunk)


def file_chunk_digest_of(data: bytes, chunk: int) -> str:
    return xxhash.xxh3_128(b"".join(chunk_digest(data[i:i + chunk])
                                    for i in range(0, len(data), chunk))).hexdigest()


def test_another_nodes_view_of_the_source_is_told_apart() -> None:
    mine = (100, 5, "abc")
    assert _difference(mine, (100, 5, "abc")) is None
    assert _difference(mine, "No such file or directory") == (
        "cannot read it (No such file or directory)")
    assert _difference(mine, (99, 5, "abc")) == "sees 99 bytes, not 100"
    assert _difference(mine, (100, 6, "abc")) == "sees another modification time"
    assert _difference(mine, (100, 5, "abd")) == "sees other bytes"


def test_what_a_node_sees_of_the_source(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 200_000)
    size, mtime, sample = seen_as(str(path), 200_000)  # type: ignore[misc]
    assert size == 200_000 and mtime == path.stat().st_mtime_ns
    with open(path, "r+b") as f:  # a byte in the middle: not in the sample
        f.seek(100_000)
        f.write(b"y")
    os.utime(path, ns=(0, mtime))
    assert seen_as(str(path), 200_000)[2] == sample
    with open(path, "r+b") as f:  # the last byte: in it
        f.seek(199_999)
        f.write(b"y")
    assert seen_as(str(path), 200_000)[2] != sample
    assert seen_as(str(tmp_path / "nope"), 1) == "No such file or directory"
    assert file_system_type("/proc/self") == "proc"


@pytest.mark.parametrize(("options", "message"), [
    ({"read_by": "some"}, "invalid --read-by 'some'"),
    ({"read_by": "all", "algorithm": "chain"}, "which the ring schedule sends: not chain"),
    ({"read_by": "root", "algorithm": "ring"}, "not with --read-by root"),
    ({"read_by": "all", "compress": "zstd"}, "does not go with --compress"),
    ({"algorithm": "ring", "pipe": "cat"}, "does not go with --pipe"),
    ({"read_by": "all", "stream": True}, "does not go with standard input"),
])
def test_what_every_node_reading_cannot_go_with(options: dict[str, object],
                                                message: str) -> None:
    with pytest.raises(UsageError, match=message):
        StageOptions(**options).check(4)  # type: ignore[arg-type]
    StageOptions(read_by="all").check(4)
    StageOptions(algorithm="ring", read_by="auto").check(4)
