"""The two-tree schedule's shape: two spanning trees, no node interior in both, a fill
that grows with log N; and the engine's per-child order when children differ by chunk."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpi4py import MPI

from mpistage.engine.forward import Forward
from mpistage.engine.twotree import (TREES, TwoTreeSchedule, tree_of, twotree_children,
                                     twotree_fill, twotree_parent)
from mpistage.model import Parameters, predict, shape
from mpistage.model.choice import choose


def _reached(size: int, tree: int) -> list[int]:
    """Every relative rank reached from the root by following ``tree``'s children."""
    seen, todo = [], [0]
    while todo:
        vrank = todo.pop()
        seen.append(vrank)
        todo += twotree_children(vrank, size, tree)
    return sorted(seen)


@given(st.integers(1, 300))
def test_each_tree_spans_every_node_once(size: int) -> None:
    for tree in TREES:
        assert _reached(size, tree) == list(range(size))
        for vrank in range(size):
            for child in twotree_children(vrank, size, tree):
                assert twotree_parent(child, size, tree) == vrank
        assert twotree_parent(0, size, tree) is None


@pytest.mark.parametrize("size", [*range(1, 65), 100, 1000, 1023, 1024, 1025, 4096, 4097])
def test_no_node_sends_more_than_it_receives(size: int) -> None:
    """The property the bandwidth rests on: no node is interior in both trees, so it sends
    at most two chunks for every two it receives (the root: one per chunk)."""
    for vrank in range(1, size):
        sends_per_two_chunks = sum(len(twotree_children(vrank, size, t)) for t in TREES)
        assert sends_per_two_chunks <= 2, (size, vrank)
        assert all(twotree_parent(vrank, size, t) is not None for t in TREES)
    # two parents, never the same one (else one parent's two trees could reorder chunks)
    for vrank in range(1, size):
        parents = {twotree_parent(vrank, size, t) for t in TREES}
        assert len(parents) == 2 or size == 2 or parents == {0}


@pytest.mark.parametrize("size", [2, 3, 5, 16, 17, 1000, 4096])
def test_fill_is_twice_the_depth_plus_the_root_hop(size: int) -> None:
    depth = math.floor(math.log2(size - 1))
    assert max(twotree_fill(size)) <= 2 * depth + 1
    assert shape("twotree", size) == (1, max(twotree_fill(size)))
    assert tree_of(0) == 0 and tree_of(1) == 1 and tree_of(10) == 0


def test_model_puts_twotree_near_the_bound_at_scale() -> None:
    """1024 nodes, 10 GiB, 10 Gbit/s, 5 µs: within 2 % of S/B at its best chunk, where
    a chain pays its N-hop fill (3 % more) and a binary tree twice the bytes.  ``auto``
    takes it where it wins by more than its margin (its two flows per downlink, which
    the model does not charge): 1 GiB to 1024 nodes, 4096 nodes; not 3 %."""
    link = Parameters(latency=5e-6, bandwidth=10e9 / 8)
    size, nodes = 10 << 30, 1024
    bound = size / link.bandwidth
    best = choose(size, nodes, link, algorithms=("chain", "tree", "twotree"))
    twotree, chain = best.predictions["twotree"][1], best.predictions["chain"][1]
    assert twotree / bound <= 1.02 and 1.0 < chain / twotree < 1 + TwoTreeSchedule.auto_margin
    assert best.algorithm == "chain", "a win within the margin is not taken"
    assert predict("tree", size, nodes, 1 << 20, link) / bound > 1.9
    for size, nodes in ((1 << 30, 1024), (10 << 30, 4096)):
        assert choose(size, nodes, link, algorithms=("chain", "tree", "twotree")).algorithm \
            == "twotree"


def test_a_later_chunk_waits_for_its_own_child_only() -> None:
    """Children that differ from chunk to chunk (the root's: tree 0's top, then tree 1's)
    do not wait on each other; a child owed an earlier chunk does.  The sends are
    synchronous sends to this process itself, complete once the test receives them."""
    log: list[tuple[int, int]] = []
    data = bytearray(8)

    def post(chunk: int, peer: int) -> MPI.Request:
        log.append((chunk, peer))
        return MPI.COMM_SELF.Issend(data, dest=0, tag=chunk)

    chunk0 = Forward([lambda: post(0, 5)], peers=[5])
    chunk1 = Forward([lambda: post(1, 9)], peers=[9])
    chunk2 = Forward([lambda: post(2, 5)], peers=[5])
    blocked: set[int | None] = set()
    for forward in (chunk0, chunk1, chunk2):
        forward.advance(blocked)
        blocked |= forward.unposted | set(forward.in_flight)
    assert log == [(0, 5), (1, 9)]  # chunk 2 to node 5 waits for chunk 0's send
    MPI.COMM_SELF.Recv(bytearray(8), source=0, tag=0)
    blocked = set()
    for forward in (chunk0, chunk1, chunk2):
        forward.advance(blocked)
        blocked |= forward.unposted | set(forward.in_flight)
    assert log == [(0, 5), (1, 9), (2, 5)] and chunk0.done and not chunk1.done
    for tag in (1, 2):
        MPI.COMM_SELF.Recv(bytearray(8), source=0, tag=tag)
    assert chunk1.advance() and chunk2.advance()


def test_the_memory_budget_holds_the_buffers_twotree_needs() -> None:
    """Twotree keeps up to its fill of chunks waiting per node (buffers_needed, more at
    more nodes): auto's chunk shrinks to fit --memory, a fixed chunk that cannot is
    left out of auto's choice (and refused when asked for: tests/test_cli.py)."""
    from mpistage.model.choice import fits

    need = TwoTreeSchedule.buffers_needed(1024)
    assert need == 22 and TwoTreeSchedule.buffers_needed(2) == 4
    assert [TwoTreeSchedule.buffers_needed(n) for n in (8, 64, 4096)] == [8, 14, 26]
    link = Parameters(latency=5e-6, bandwidth=1.25e9)
    free = choose(10 << 30, 1024, link, algorithms=("twotree",))
    tight = choose(10 << 30, 1024, link, algorithms=("twotree",), memory=need << 20)
    assert free.chunk_size > 1 << 20 >= tight.chunk_size
    assert not fits("twotree", 1024, 16 << 20, 64 << 20) and fits("chain", 1024, 16 << 20, 64 << 20)
    fixed = choose(10 << 30, 1024, link, chunk_size=16 << 20, memory=64 << 20)
    assert "twotree" not in fixed.predictions and fixed.algorithm != "twotree"
