"""The schedules' shapes: every node is reached exactly once, from the root."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpistage.schedules import (
    SCHEDULES,
    binomial_children,
    binomial_parent,
    chain_children,
    chain_parent,
)

SHAPES = {"chain": (chain_parent, chain_children), "binomial": (binomial_parent, binomial_children)}


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


def test_chain_is_a_line() -> None:
    assert [chain_children(v, 4) for v in range(4)] == [[1], [2], [3], []]
    assert [chain_parent(v, 4) for v in range(4)] == [None, 0, 1, 2]


def test_relative_rank_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        chain_parent(5, 4)


def test_registry_names_every_algorithm() -> None:
    assert set(SCHEDULES) == {"chain", "binomial", "bcast"}
