"""What MPI's own broadcast of a chunk costs, as MPICH 5.0.2 runs it (``bcast``).

``--algorithm bcast`` posts one ``MPI_Ibcast`` per chunk, up to ``depth`` of them in
flight.  Which algorithm MPICH runs is its tuning file's choice
(``maint/tuning/coll/mpir/generic.json``, compiled into the wheel; ch4 adds no choice of
its own for ``Ibcast``), by communicator size N and chunk bytes c, one rank per host:

* N < 8, or c < 12 KiB: a **binomial tree**, whose ``Ibcast`` form posts a node's sends to
  all its children at once (unlike the blocking one), so they share its link;
* N a power of two and c < 512 KiB: a binomial **scatter** of N pieces and a
  **recursive-doubling allgather**;
* otherwise: the scatter and a **ring allgather** (N − 1 steps).

Consecutive ``Ibcast``s run concurrently (each its own schedule and tag), so a stream of
chunks is paced by the busiest node's sends per chunk, each ``α`` plus its bytes, as a
point-to-point schedule's sends are (:func:`step_messages`, :func:`step_bytes`): the
root's m = ⌈log2 N⌉ copies in the tree; with a scatter and an allgather ``2(N − 1)/N · c``
in ``2m`` messages (recursive doubling) or ``m + N − 1`` (ring).  The first chunk takes its
whole latency (:func:`first_chunk`): hops of α and the bytes of the longest path, the
children of a node sharing its link.  A stream of m chunks takes about
``first + (m − 1) · step``.  Constants for the scatter variants' first chunk come from a
simulation of MPICH's schedules with fair sharing of each link (their scatter posts its
pieces at once, so they share the root's link): ``FIRST_RD``, ``FIRST_RING``.

With ``depth`` chunks in flight, a stream never steps faster than the first chunk's
latency over ``depth`` (:data:`IN_FLIGHT`, the engine's default depth).

Read from MPICH's 5.0.x sources (the selection in ``generic.json``, lines 640-689 for
``ibcast``, 2-97 for ``bcast``; ``ibcast_intra_sched_binomial.c``, lines 133-134: "This is
departure from MPIR_Bcast_intra_binomial. A true analog would put an MPIR_Sched_barrier
here after every send") and checked against the wheel's ``libmpi.so`` (the same JSON;
no ``circ_graph``: Träff's circulant-graph broadcast is on MPICH's main branch only).
"""

from __future__ import annotations

from functools import cache

#: Chunks in flight (:data:`mpistage.engine.pipeline.DEFAULT_DEPTH`; not imported: the model
#: must not load MPI).
IN_FLIGHT = 4

#: Below this (bytes), MPICH broadcasts by a binomial tree whatever N.
SHORT = 12 << 10
#: Below this, on a power-of-two N ≥ 8, by scatter and recursive doubling; from it on, ring.
MEDIUM = 512 << 10
#: The first chunk's bytes, in units of c/B, for scatter + recursive doubling (N = 8, 16)
#: and scatter + ring (N = 8 … 16); outside, 2(N − 1)/N plus the last value's excess.
FIRST_RD = {8: 3.0, 16: 3.5}
FIRST_RING = {8: 2.5, 9: 2.78, 10: 2.9, 11: 3.0, 12: 3.08, 13: 3.08, 14: 3.07, 15: 3.07,
              16: 3.06}


def algorithm(chunk: int, nodes: int) -> str:
    """``"binomial"``, ``"scatter_rd"`` or ``"scatter_ring"``: what MPICH runs."""
    if nodes < 8 or chunk < SHORT:
        return "binomial"
    if nodes & (nodes - 1) == 0 and chunk < MEDIUM:
        return "scatter_rd"
    return "scatter_ring"


@cache
def binomial_path(nodes: int) -> tuple[int, int]:
    """``(hops, shared)`` of the Ibcast binomial tree: the most hops to a node, and the
    largest sum along a path of the senders' children (their sends share a link)."""
    def children(rank: int) -> list[int]:
        low = rank & -rank if rank else 1 << nodes.bit_length()
        return [rank + (1 << b) for b in range(nodes.bit_length())
                if (1 << b) < low and rank + (1 << b) < nodes]

    def shared(rank: int) -> int:
        kids = children(rank)
        return len(kids) + max((shared(k) for k in kids), default=0)

    return max(bin(r).count("1") for r in range(nodes)), shared(0)


def _levels(nodes: int) -> int:
    return (nodes - 1).bit_length()


def allgather_rounds(chunk: int, nodes: int) -> int:
    """Rounds of the allgather after the scatter: recursive doubling's ⌈log2 N⌉, the
    ring's N − 1, none where a binomial tree broadcasts the chunk."""
    kind = algorithm(chunk, nodes)
    if kind == "binomial":
        return 0
    return _levels(nodes) if kind == "scatter_rd" else nodes - 1


def step_messages(chunk: int, nodes: int) -> int:
    """Messages the busiest node (the root) sends per chunk in a stream of them: its
    scatter's (or tree's) ⌈log2 N⌉, and one per round of the allgather."""
    if nodes <= 1:
        return 0
    return _levels(nodes) + allgather_rounds(chunk, nodes)


def step_bytes(chunk: int, nodes: int) -> float:
    """Bytes the busiest link carries per chunk in a stream of them."""
    if nodes <= 1:
        return 0.0
    if algorithm(chunk, nodes) == "binomial":
        return _levels(nodes) * chunk
    return 2 * (nodes - 1) / nodes * chunk


def first_chunk(chunk: int, nodes: int) -> tuple[int, float]:
    """``(messages, bytes)`` on the first chunk's longest path: its time is
    ``messages·α + bytes/B``."""
    if nodes <= 1:
        return 0, 0.0
    levels = _levels(nodes)
    kind = algorithm(chunk, nodes)
    if kind == "binomial":
        hops, shared = binomial_path(nodes)
        return hops, shared * chunk
    plain = 2 * (nodes - 1) / nodes
    if kind == "scatter_rd":
        return 2 * levels, FIRST_RD.get(nodes, plain + 1.3) * chunk
    return levels + nodes - 1, FIRST_RING.get(nodes, plain + 1.0) * chunk
