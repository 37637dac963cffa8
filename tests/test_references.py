"""The whole-file references beside the schedules: MPICH's scatter-allgather played on the
simulated links, and the circulant broadcast's closed form."""

import pytest

from mpistage.model import Parameters
from mpistage.model import references as ref
from mpistage.model.simulate import simulate

NET = Parameters(latency=20e-6, bandwidth=1.25e9)  # network-bound: R = W = ∞


def test_the_references_are_their_closed_forms() -> None:
    size, nodes = 1 << 30, 64
    # MPICH's scatter + ring allgather, played on the links, is its closed form
    assert ref.scatter_allgather_seconds(size, nodes, NET) == pytest.approx(
        ref.reference_closed_form("mpich-scatter-allgather", size, nodes, NET), rel=0.01)
    # the circulant broadcast: n − 1 + ⌈log2 N⌉ rounds of α + S/(n·B), n the best count
    blocks = ref.circulant_blocks(size, nodes, NET)
    assert simulate("circulant", size, nodes, 1, NET) == pytest.approx(
        (blocks - 1 + 6) * (NET.latency + size / blocks / NET.bandwidth))
    assert all(ref.circulant_seconds(size, nodes, NET) <= ref.circulant_seconds(size, nodes, NET, n)
               for n in (blocks // 2, blocks * 2, 1))
    assert simulate("circulant", size, 1, 1, NET) == 0.0
