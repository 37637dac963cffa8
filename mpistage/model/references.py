"""Two references that broadcast the *whole* file as one MPI broadcast, memory to memory
(no reading or writing; not per-chunk mpistage schedules), for ``python -m mpistage.model``
and ``bench/scaling.py`` to set beside the schedules: MPICH's long-message ``MPI_Bcast``
(:func:`scatter_allgather_seconds`, played out on :mod:`mpistage.model.simulate`'s links)
and Träff's circulant-graph broadcast (:func:`circulant_seconds`).
"""

from __future__ import annotations

import math

import numpy as np

from ..engine.schedules import BcastSchedule
from . import Parameters
from .network import Network, allgather, chunk_waves

#: The references: MPI broadcasts of the whole file, for comparison only.
REFERENCES: tuple[str, ...] = ("mpich-scatter-allgather", "circulant")


def scatter_allgather_seconds(size: int, nodes: int, params: Parameters) -> float:
    """MPICH's long-message ``MPI_Bcast`` of the whole file, memory to memory, played out
    on the simulated links: a binomial scatter of ``N`` pieces and a ring allgather;
    about ``2·(N−1)/N·S/B + (⌈log2 N⌉ + N − 1)·α``."""
    if size == 0 or nodes <= 1:
        return params.startup
    net = Network(nodes, 1)
    scatter = chunk_waves(BcastSchedule.name, nodes, 2, 0, True)
    ready = net.play(scatter, 0, size, params, np.zeros(nodes))
    allgather(net, ready, math.ceil(size / nodes), params, nodes - 1)
    return params.startup + float(net.have.max())


def circulant_blocks(size: int, nodes: int, params: Parameters) -> int:
    """The block count ``n`` minimising :func:`circulant_seconds`: near
    ``sqrt((⌈log2 N⌉ − 1)·S / (α·B))``."""
    rounds = math.ceil(math.log2(nodes)) if nodes > 1 else 0
    if size == 0 or rounds <= 1 or params.latency <= 0:
        return 1 if params.latency > 0 or rounds <= 1 else max(1, size)
    best = math.sqrt((rounds - 1) * size / (params.latency * params.bandwidth))
    candidates = {max(1, min(size, n)) for n in (math.floor(best), math.ceil(best))}
    return min(candidates, key=lambda n: _circulant(size, nodes, n, params))


def _circulant(size: int, nodes: int, blocks: int, params: Parameters) -> float:
    rounds = blocks - 1 + math.ceil(math.log2(nodes))
    return rounds * (params.latency + size / blocks / params.bandwidth)


def circulant_seconds(size: int, nodes: int, params: Parameters, blocks: int | None = None) -> float:
    """Träff's circulant-graph broadcast of the whole file, memory to memory
    ("(Simple, Optimal) Broadcast with circulant graphs", 2022–2023; MPICH's
    ``bcast_intra_circ_vring`` implements it): ``n`` blocks in ``n − 1 + ⌈log2 N⌉``
    rounds over a circulant graph with skips 1, 2, 4, …, every process sending and
    receiving one block per round.  On these links every round costs
    ``α + S/(n·B)`` (each link carries one block per round), so the simulation is the
    closed form ``(n − 1 + ⌈log2 N⌉)·(α + S/(n·B))``, with ``n`` from
    :func:`circulant_blocks`; the exact per-round send and receive schedules are not
    played out (they change which block travels, not when)."""
    if size == 0 or nodes <= 1:
        return params.startup
    blocks = blocks or circulant_blocks(size, nodes, params)
    return params.startup + _circulant(size, nodes, blocks, params)


def reference_seconds(algorithm: str, size: int, nodes: int, params: Parameters) -> float:
    """Seconds of the reference ``algorithm`` (:data:`REFERENCES`)."""
    if algorithm == "mpich-scatter-allgather":
        return scatter_allgather_seconds(size, nodes, params)
    if algorithm == "circulant":
        return circulant_seconds(size, nodes, params)
    raise ValueError(f"unknown reference {algorithm!r}: expected one of {', '.join(REFERENCES)}")


def reference_closed_form(algorithm: str, size: int, nodes: int, params: Parameters) -> float:
    """The references' closed forms (the scatter-allgather's is what
    :func:`mpistage.model.predict` charges a ``bcast`` chunk, for one chunk of ``S``)."""
    if size == 0 or nodes <= 1:
        return params.startup
    if algorithm == "mpich-scatter-allgather":
        return params.startup + (2 * (nodes - 1) / nodes * size / params.bandwidth
                                 + (math.ceil(math.log2(nodes)) + nodes - 1) * params.latency)
    return reference_seconds(algorithm, size, nodes, params)


def reference_chunk(algorithm: str, size: int, nodes: int, params: Parameters) -> int:
    """The message unit of a reference: its piece (``S/N``) or block (``S/n``)."""
    if algorithm == "mpich-scatter-allgather":
        return math.ceil(size / max(nodes, 1))
    return math.ceil(size / circulant_blocks(size, nodes, params))
