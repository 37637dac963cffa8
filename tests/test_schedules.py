"""The schedules' shapes: every node is reached exactly once, from the root."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpistage.engine.algorithms import SCHEDULES
from mpistage.engine.schedules import (binomial_children, binomial_parent, chain_children,
                                       chain_parent, flat_children, flat_parent, kary_children,
                                       kary_height, kary_parent)

SHAPES = {
    "chain": (chain_parent, chain_children),
    "binomial": (binomial_parent, binomial_children),
    "flat": (flat_parent, flat_children),
    "tree2": (kary_parent, kary_children),
    "tree3": (lambda v, n: kary_parent(v, n, 3), lambda v, n: kary_children(v, n, 3)),
}


def depth_of(parent, vrank: int, size: int) -> int:  # type: ignore[no-untyped-def]
    depth = 0
    while (vrank := parent(vrank, size)) is not None:
        depth += 1
    return depth


@pytest.mark.parametrize("shape", SHAPES)
@given(size=st.integers(min_value=1, max_value=300))
def test_shape_is_a_spanning_tree_rooted_at_zero(shape: str, size: int) -> None:
    parent, children = SHAPES[shape]
    assert parent(0, size) is None
    seen = []
    for v in range(size):
        for c in children(v, size):
            assert parent(c, size) == v, f"{c} lists {v} as parent inconsistently"
            seen.append(c)
    assert sorted(seen) == list(range(1, size)), "every non-root node has exactly one parent"


@given(size=st.integers(min_value=1, max_value=300))
def test_binomial_depth_is_logarithmic(size: int) -> None:
    depths = [depth_of(binomial_parent, v, size) for v in range(size)]
    assert depths == [bin(v).count("1") for v in range(size)], "one hop per set bit"
    assert max(depths) <= math.ceil(math.log2(size))


def test_binomial_children_largest_subtree_first() -> None:
    assert binomial_children(0, 8) == [4, 2, 1]
    assert binomial_children(4, 8) == [6, 5]
    assert binomial_children(0, 5) == [4, 2, 1]
    assert binomial_children(4, 5) == []
    assert binomial_parent(6, 8) == 4


def test_mpi_broadcast_moves_a_chunk_in_pieces_from_8_ranks() -> None:
    """What a wait must wake for (waits.longest_pause): MPICH's Ibcast is a binomial
    tree of whole chunks below 8 ranks, scatter + allgather of chunk/N pieces from 8."""
    from types import SimpleNamespace

    from mpistage.engine.schedules import BcastSchedule, ChainSchedule

    def on(size: int, kind: type) -> object:
        return kind(SimpleNamespace(rank=0, size=size), 0)

    assert on(4, BcastSchedule).message_bytes(1 << 20) == 1 << 20
    assert on(8, BcastSchedule).message_bytes(1 << 20) == 128 << 10
    assert on(16, BcastSchedule).message_bytes((1 << 20) + 1) == (64 << 10) + 1
    assert on(16, ChainSchedule).message_bytes(1 << 20) == 1 << 20


def test_chain_is_a_line() -> None:
    assert [chain_children(v, 4) for v in range(4)] == [[1], [2], [3], []]
    assert [chain_parent(v, 4) for v in range(4)] == [None, 0, 1, 2]


def test_relative_rank_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        chain_parent(5, 4)


def test_kary_tree_layout_and_height() -> None:
    assert [kary_children(v, 8) for v in range(4)] == [[1, 2], [3, 4], [5, 6], [7]]
    assert kary_children(0, 8, 3) == [1, 2, 3] and kary_parent(7, 8, 3) == 2
    assert [kary_height(n) for n in (1, 2, 3, 4, 7, 8, 15, 16)] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert kary_height(13, 3) == 2 and kary_height(14, 3) == 3


@pytest.mark.parametrize("arity", [2, 3, 4])
@given(size=st.integers(min_value=1, max_value=300))
def test_kary_height_is_the_deepest_node(arity: int, size: int) -> None:
    parent = lambda v, n: kary_parent(v, n, arity)  # noqa: E731
    assert max(depth_of(parent, v, size) for v in range(size)) == kary_height(size, arity)


def test_registry_names_every_algorithm() -> None:
    assert set(SCHEDULES) == {"chain", "binomial", "tree", "twotree", "flat", "bcast", "ring"}
