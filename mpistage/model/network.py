"""The simulator's network: full-duplex links per node, a chunk's sends grouped into
waves, each wave played out with numpy over its nodes (:class:`Network`), and MPICH's
allgather rounds.  What it models and what it leaves out is told in
:mod:`mpistage.model.simulate`, which plays whole transfers on it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cache

import numpy as np

from ..engine.algorithms import SCHEDULES
from . import Parameters

#: Waves at most this wide are played out with Python scalars (numpy's per-call cost
#: dominates a chain's one-send waves).
_SCALAR_WAVE = 4


@dataclass(frozen=True)
class Wave:
    """Sends that may happen at once: ``parents[i]`` sends to ``children[i]``
    ``share[i]`` of the chunk (``None``: all of it)."""

    parents: np.ndarray
    children: np.ndarray
    share: np.ndarray | None = None


def _children_function(algorithm: str, nodes: int, arity: int, tree: int):  # type: ignore[no-untyped-def]
    schedule = SCHEDULES[algorithm]
    return lambda v: schedule.children_in(v, nodes, arity, tree)


def _subtree_sizes(children, nodes: int) -> list[int]:  # type: ignore[no-untyped-def]
    order, stack = [], [0]
    while stack:
        v = stack.pop()
        order.append(v)
        stack.extend(children(v))
    sizes = [1] * nodes
    for v in reversed(order):
        for c in children(v):
            sizes[v] += sizes[c]
    return sizes


@cache
def chunk_waves(algorithm: str, nodes: int, arity: int, tree: int = 0,
                scatter: bool = False) -> tuple[Wave, ...]:
    """The sends of one chunk grouped into waves.  A node's i-th child gets the chunk in
    wave ``w + i + 1``, ``w`` the node's own wave (as :func:`mpistage.engine.schedules.fill_hops`
    counts hops), so in every wave a node sends at most one message and receives at most
    one, and each send's predecessors are in earlier waves.  ``scatter``: the message
    to a child carries its subtree's share of the chunk (MPICH's binomial scatter)."""
    children = _children_function(algorithm, nodes, arity, tree)
    sizes = _subtree_sizes(children, nodes) if scatter else None
    wave_of = {0: 0}
    sends: list[tuple[int, int, int]] = []
    queue = deque([0])
    while queue:
        v = queue.popleft()
        for i, c in enumerate(children(v)):
            wave_of[c] = wave_of[v] + i + 1
            sends.append((wave_of[c], v, c))
            queue.append(c)
    if len(wave_of) != nodes:
        raise AssertionError(f"{algorithm} reaches {len(wave_of)} of {nodes} nodes")
    grouped: dict[int, list[tuple[int, int]]] = {}
    for w, p, c in sends:
        grouped.setdefault(w, []).append((p, c))
    waves = []
    for w in sorted(grouped):
        pairs = grouped[w]
        parents = np.array([p for p, _ in pairs], dtype=np.intp)
        kids = np.array([c for _, c in pairs], dtype=np.intp)
        share = None
        if sizes is not None:
            share = np.array([sizes[c] / nodes for c in kids])
        waves.append(Wave(parents, kids, share))
    return tuple(waves)


class Network:
    """The state that carries over from chunk to chunk, in one array so that a
    periodic state can be recognised and extrapolated in one step."""

    #: Arrays of the state, one value per node each (then ``depth`` rows of releases).
    FIELDS = ("have", "up", "edge0", "edge1", "start0", "end0", "start1", "end1",
              "older_start0", "older_end0", "older_start1", "older_end1", "written",
              "dispatched")

    def __init__(self, nodes: int, depth: int) -> None:
        self.nodes = nodes
        fields = len(self.FIELDS)
        self.state = np.zeros((fields + depth) * nodes)
        views = {name: self.state[i * nodes:(i + 1) * nodes] for i, name in enumerate(self.FIELDS)}
        #: when the latest chunk arrived (the root: was read)
        self.have = views["have"]
        #: uplink free: the end of its last serialisation
        self.up = views["up"]
        #: per tree, when the last send to this node completed (one in flight per child)
        self.edge = (views["edge0"], views["edge1"])
        #: per tree, the downlink's last two receptions from that tree's parent, [start,
        #: end) each: a message from one tree's parent must fit between the other's
        self.last = ((views["start0"], views["end0"]), (views["start1"], views["end1"]))
        self.older = ((views["older_start0"], views["older_end0"]),
                      (views["older_start1"], views["older_end1"]))
        #: when the latest write ended
        self.written = views["written"]
        #: when the latest chunk was dispatched (forwarded, handed to the writer): the
        #: engine takes chunks in order, so chunk k waits for chunk k − 1 to arrive
        self.dispatched = views["dispatched"]
        #: when the buffers of the last ``depth`` chunks came free (sent and written),
        #: newest first: chunk k may be received (read, on the root) into chunk
        #: k − depth's buffer once it is free
        self.released = self.state[fields * nodes:].reshape(depth, nodes)

    def play(self, waves: tuple[Wave, ...], tree: int, chunk: float, params: Parameters,
             gate: np.ndarray, in_order: bool = True) -> np.ndarray:
        """Play one chunk's waves down ``tree``; returns when each node is done sending
        it.  ``gate``: when each node has a free buffer to receive into.  The downlink takes one tree's messages in chunk order (the edge's one send
        in flight sees to that).  Against the other tree's, whose latest two receptions
        were placed already, a message serialises in the free time around them
        (preempted by them, as if their chunks had priority), so the downlink never
        idles while a message waits.  The sender is held back by none of it: its uplink
        is charged the message's ``c/B`` from its start, and its next send may start
        once that is done (``α`` later within a chunk), even when the receiver holds
        part of this one back.  The engine posts a chunk's sends to its children
        together, and TCP gives the uplink to the flow whose receiver takes it, so the
        uplink does the same work in the same time.  (Holding the sender until its
        preempted message ended idled its uplink: twotree simulated 1.06-1.5× the closed
        form at most N from 8 on, a cost of this model's one-message-at-a-time links
        that the engine's shared flows do not pay.)  Only the next send to the same
        child waits for this one to end (one send in flight per child)."""
        alpha, bandwidth = params.latency, params.bandwidth
        up, edge, have = self.up, self.edge[tree], self.have
        (s_new, e_new), (s_old, e_old) = self.last[1 - tree], self.older[1 - tree]
        (my_s, my_e), (my_s_old, my_e_old) = self.last[tree], self.older[tree]
        dispatched = self.dispatched
        # the root's chunk is in order already (its reads are); a node's next send of
        # this chunk may start (the data, dispatched in order; the previous child's send)
        dispatched[0] = max(dispatched[0], have[0])
        if not in_order:
            dispatched[1:] = 0.0  # each chunk goes on as soon as it is here
        ready = dispatched.copy()
        whole = chunk / bandwidth
        for wave in waves:
            parents, kids = wave.parents, wave.children
            if len(parents) <= _SCALAR_WAVE:
                for i in range(len(parents)):
                    p, q = int(parents[i]), int(kids[i])
                    serial = whole if wave.share is None else whole * float(wave.share[i])
                    start = max(ready[p], up[p], edge[q], gate[q])
                    at, left = start, serial
                    for busy_from, busy_to in ((s_old[q], e_old[q]), (s_new[q], e_new[q])):
                        if at < busy_to:
                            if at < busy_from and left <= busy_from - at:
                                break
                            left -= max(busy_from - at, 0.0)
                            at = busy_to
                    end = at + left
                    up[p] = start + serial  # see play's doc
                    my_s_old[q], my_e_old[q], my_s[q], my_e[q] = my_s[q], my_e[q], start, end
                    have[q] = edge[q] = end + alpha
                    ready[p] = start + serial + alpha
                    ready[q] = dispatched[q] = max(end + alpha, dispatched[q])
                continue
            serial = whole if wave.share is None else whole * wave.share
            start = np.maximum(np.maximum(ready[parents], up[parents]),
                               np.maximum(edge[kids], gate[kids]))
            at, left = start, np.broadcast_to(serial, start.shape)
            for busy_from, busy_to in ((s_old[kids], e_old[kids]), (s_new[kids], e_new[kids])):
                # serialise in the free time before the busy interval, the rest after it
                free = np.maximum(busy_from - at, 0.0)
                blocked = (at < busy_to) & (left > free)
                left = np.where(blocked, left - free, left)
                at = np.where(blocked, busy_to, at)
            end = at + left
            up[parents] = start + serial
            my_s_old[kids], my_e_old[kids] = my_s[kids], my_e[kids]
            my_s[kids], my_e[kids] = start, end
            done = end + alpha
            ready[parents] = start + serial + alpha
            have[kids] = done
            edge[kids] = done
            in_order = np.maximum(done, dispatched[kids])
            ready[kids] = in_order
            dispatched[kids] = in_order
        return ready


def allgather(net: Network, started: np.ndarray, piece: float, params: Parameters,
               rounds: int) -> float:
    """MPICH's allgather of ``N`` pieces in ``rounds`` rounds, ``N − 1`` pieces reaching
    every node: the ring's ``N − 1`` rounds (each node sends its successor the piece it
    got in the round before, a blocking ``Sendrecv``, so round r ends at node i at
    ``max(end_i(r−1), end_{i−1}(r−1)) + α + piece/B``), or recursive doubling's
    ``log2 N`` (round r exchanges ``2^r`` pieces with the node ``2^r`` away).  Every
    node's end is ``max(started) + rounds·α + (N − 1)·piece/B``."""
    end = (float(started.max()) + rounds * params.latency
           + (net.nodes - 1) * piece / params.bandwidth)
    net.up[:] = end
    net.edge[0][:] = end  # the next chunk's scatter reaches a node after this allgather
    net.have[1:] = end
    net.dispatched[:] = end
    return end
