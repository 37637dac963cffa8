"""A discrete-event simulator of the schedules: the closed-form model's check, link by link.

:func:`mpistage.model.predict` adds up hops; this module plays the schedule out on a
network of full-duplex links, so what the closed form assumes (every step paced by the
busiest sender, the fill a sum of fan-outs) becomes something to compare, not to trust.

The network.  Every node has one **uplink** and one **downlink**, each carrying one
message at a time at ``B`` bytes/s, independently of each other (full duplex).  A
message of ``c`` bytes from p to q starts when the data is at p, p's uplink and q's
downlink are free and the schedule lets it (below); it holds both links for the
serialisation ``c/B`` and arrives ``α`` later.  So α is paid *after* serialisation (the
wire's and MPI's latency as the message's tail end travels and is matched), and a lone
message costs ``α + c/B``, the closed form's hop; the links are free again after
``c/B``, so another message may serialise while the first one's α elapses.

The send discipline is the engine's (:class:`mpistage.engine.schedules.Forward`,
:class:`mpistage.engine.pipeline.Engine`):

* a node forwards chunk k only once it has received it, and, like the engine (which
  waits for its oldest posted receive), only after every chunk before it, except in
  the schedules the engine forwards as received (twotree; ``in_order=False``: each
  chunk goes on as soon as it is here; forwarded in order, the two trees wait on each
  other, ``tests/test_simulate.py`` shows the cycle);
* it sends chunk k to its children in ``children_of``'s order, each send starting after
  the previous child's send of chunk k *completed* (the message arrived);
* chunk k+1's send to a child starts only after chunk k's send to that child completed
  (one send in flight per child), so a chain steps at ``α + c/B`` per chunk, as the
  closed form says; a node with several children may, however, serialise chunk k+1 to
  its first child while chunk k's send to its last is in flight, so its step is
  ``α + f·c/B`` rather than the closed form's ``f·(α + c/B)``;
* an uplink serves its messages in chunk order; a downlink takes one tree's messages
  in chunk order, and with twotree a message from the other parent serialises in the
  free time around those already placed (preempted by them), so a downlink never idles
  while a message waits; the sender's uplink is charged ``c/B`` from the message's start
  even when the receiver holds part of it back (TCP would share the uplink with the
  next send, to another child, meanwhile; on the emulated cluster at 100 Mbit/s it
  does not quite: the downlinks fed by two parents queue, the round trips across them
  stretch, and twotree measures 10-17 % over, docs/model.md, "Validating the model").

Local I/O and memory: the root reads chunk k at ``R`` (sequentially) and every node,
the root included, writes it at ``W`` once dispatched (sequentially, behind the
network); a node is done when its last write ends.  Each node has ``depth`` chunk
buffers: chunk k is received (on the root: read) into chunk k − depth's buffer once
that chunk was written and sent to every child (the engine's pool, taken in chunk order,
which it nearly is when dispatch is in order).  Not modelled: CPU cost per message (a
16-rank run on 2 cores is CPU-bound, see ``tests/test_simulate.py``), a per-run cost of
the first messages (connection set-up), TCP's slow start, fair sharing of a link
between messages (one waits, or is preempted), a switch's limits (full bisection).

``bcast`` (MPI's own broadcast of each chunk, as MPICH runs it,
:mod:`mpistage.engine.bcast_model`): from 8 nodes and 12 KiB a chunk is a binomial scatter of
``N`` pieces (largest subtree first, each message its subtree's pieces) and an
allgather: recursive doubling, ``log2 N`` rounds, on a power-of-two N below 512 KiB,
else a ring of ``N − 1`` rounds (a node's round starts when it and its ring predecessor
finished the previous one); either ends ``rounds·α + (N − 1)·c/(N·B)`` after the last
node finished the scatter.  Otherwise a chunk goes down a binomial tree.  The
collectives of consecutive chunks are independent requests, so the root may start chunk
k+1 while chunk k is in flight, but the allgather keeps every link busy, so they barely
overlap (the simulation has chunk k+1 wait for chunk k's allgather).

Two references run the *whole* file as one MPI broadcast (memory to memory: no reading
or writing; not per-chunk mpistage schedules): :func:`scatter_allgather_seconds` (MPICH's
long-message ``MPI_Bcast``) and :func:`circulant_seconds` (Träff's circulant-graph
broadcast).

Speed: a chunk is played out wave by wave, a *wave* being the sends that can happen
together (each node sends at most one and receives at most one message in it), with
numpy over the nodes of a wave.  Once the pipeline is periodic (every time in the state
advances by the same amount over two chunks), the full chunks that remain are skipped by
extrapolation, which is exact for this max-plus system; the last chunks are played out.
4096 nodes and thousands of chunks take under 0.1 s for every schedule; twotree with
``in_order=False`` (unbounded buffers: its root runs ahead, the state never becomes
periodic) plays every chunk, about 1.5 ms per chunk at 4096 nodes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import cache

import numpy as np

from ..engine.algorithms import SCHEDULES
from ..engine import bcast_model
from ..model import Parameters
from ..engine.pipeline import DEFAULT_DEPTH
from ..engine.twotree import TREES, twotree_children

#: The references: MPI broadcasts of the whole file, for comparison only.
REFERENCES: tuple[str, ...] = ("mpich-scatter-allgather", "circulant")

#: Waves at most this wide are played out with Python scalars (numpy's per-call cost
#: dominates a chain's one-send waves).
_SCALAR_WAVE = 4


@dataclass(frozen=True)
class _Wave:
    """Sends that may happen at once: ``parents[i]`` sends to ``children[i]``
    ``share[i]`` of the chunk (``None``: all of it)."""

    parents: np.ndarray
    children: np.ndarray
    share: np.ndarray | None = None


def _children_function(algorithm: str, nodes: int, arity: int, tree: int):  # type: ignore[no-untyped-def]
    if algorithm == "twotree":
        return lambda v: twotree_children(v, nodes, tree)
    if algorithm == "bcast":
        algorithm = "binomial"
    schedule = SCHEDULES[algorithm]
    return lambda v: schedule.children_of(v, nodes, arity)  # type: ignore[attr-defined]


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
def _waves(algorithm: str, nodes: int, arity: int, tree: int = 0,
           scatter: bool = False) -> tuple[_Wave, ...]:
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
        waves.append(_Wave(parents, kids, share))
    return tuple(waves)


class _Network:
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

    def play(self, waves: tuple[_Wave, ...], tree: int, chunk: float, params: Parameters,
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


def _allgather(net: _Network, started: np.ndarray, piece: float, params: Parameters,
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


def _chunk_sizes(size: int, chunk: int) -> tuple[int, int, int]:
    """(chunks, full chunks, size of the last)."""
    chunks = math.ceil(size / chunk)
    last = size - (chunks - 1) * chunk
    return chunks, chunks if last == chunk else chunks - 1, last


def _scatters(nbytes: int, nodes: int) -> bool:
    """Whether MPICH broadcasts a chunk by a scatter and an allgather
    (:mod:`mpistage.engine.bcast_model`), not a binomial tree."""
    return bcast_model.algorithm(nbytes, nodes) != "binomial"



def simulate(algorithm: str, size: int, nodes: int, chunk: int, params: Parameters,
             arity: int = 2, depth: int = DEFAULT_DEPTH, in_order: bool | None = None) -> float:
    """Simulated seconds to stage ``size`` bytes to ``nodes`` nodes in chunks of
    ``chunk`` (start-up ``params.startup`` included, as :func:`mpistage.model.predict`
    does); ``algorithm``: a schedule of :data:`mpistage.engine.algorithms.SCHEDULES` or one of
    :data:`REFERENCES` (whole-file broadcasts; ``chunk`` is then ignored); ``depth``:
    chunk buffers per node (the engine's default); ``in_order``: a node forwards
    chunks in order (``False``: each as soon as it arrived; buffers are then
    unbounded, and ``depth`` ignored, since a pool shared by two trees' skewed streams
    is not modelled); ``None``: as the engine does, which is in order except for the
    schedules that forward as received (``forwards_as_received``: twotree).

    Raises:
        ValueError: an unknown algorithm, or a chunk, node count or depth below one.
    """
    if algorithm in REFERENCES:
        return reference_seconds(algorithm, size, nodes, params)
    if algorithm not in SCHEDULES:
        raise ValueError(f"unknown algorithm {algorithm!r}: expected one of "
                         f"{', '.join((*SCHEDULES, *REFERENCES))}")
    if chunk < 1 or nodes < 1 or depth < 1:
        raise ValueError(f"need a chunk, a node count and a depth of at least 1, "
                         f"got {chunk}, {nodes} and {depth}")
    if size == 0:
        return params.startup
    chunk = min(chunk, size)
    if in_order is None:
        in_order = not SCHEDULES[algorithm].forwards_as_received
    return params.startup + _transfer(algorithm, size, nodes, chunk, params, arity, depth,
                                      in_order)


def _transfer(algorithm: str, size: int, nodes: int, chunk: int, params: Parameters,
              arity: int, depth: int, in_order: bool) -> float:
    chunks, full, last = _chunk_sizes(size, chunk)
    net = _Network(nodes, depth)

    def waves_for(k: int, nbytes: int) -> tuple[tuple[_Wave, ...], int]:
        if nodes == 1:
            return (), 0
        if algorithm == "twotree":
            return _waves("twotree", nodes, arity, TREES[k % 2]), k % 2
        if algorithm == "bcast":
            return _waves("bcast", nodes, arity, 0, _scatters(nbytes, nodes)), 0
        return _waves(algorithm, nodes, arity), 0

    history: deque[np.ndarray] = deque(maxlen=5)  # the state after the latest chunks
    k = 0
    while k < chunks:
        nbytes = chunk if k < full else last
        waves, tree = waves_for(k, nbytes)
        # chunk k − depth's buffer (the engine takes chunks in order, so its buffers
        # come back nearly in order too)
        gate = net.released[-1].copy() if in_order else np.zeros(nodes)
        # the root reads chunk k after chunk k − 1, into a free buffer
        net.have[0] = max(net.have[0], gate[0]) + nbytes / params.read_bandwidth
        ready = net.play(waves, tree, nbytes, params, gate, in_order)
        if algorithm == "bcast" and _scatters(nbytes, nodes) and nodes > 1:
            rounds = bcast_model.allgather_rounds(nbytes, nodes)
            ready = np.full(nodes, _allgather(net, ready, math.ceil(nbytes / nodes), params,
                                              rounds))
        written = net.written
        np.maximum(written, net.dispatched, out=written)
        written += nbytes / params.write_bandwidth
        net.released[1:] = net.released[:-1].copy()
        net.released[0] = np.maximum(ready, written)
        history.append(net.state.copy())
        skip = _periodic_skip(history, k, full)
        if skip:
            net.state += (skip // 2) * (history[-1] - history[-3])
            history.clear()
            k += skip
        k += 1
    return float(net.written.max())


def _periodic_skip(history: deque[np.ndarray], k: int, full: int) -> int:
    """How many full chunks (an even number) may be skipped after chunk ``k``: all but
    the last two full ones, if over each of the last two pairs of chunks the state
    advanced by the same ``δ`` wherever it advanced at all; else 0.

    In that regime this max-plus system repeats itself shifted by δ every pair of
    chunks (twotree's period), so skipping is exact.  The bounded buffers make it
    reach the regime: without them a root could run ahead of the tree for ever."""
    remaining = full - 1 - k - 2
    if len(history) < 5 or remaining < 2:
        return 0
    newest, middle, oldest = history[-1], history[-3], history[-5]
    d1, d2 = newest - middle, middle - oldest
    delta = max(float(d1.max()), 0.0)
    tolerance = 1e-9 * delta + 1e-12 * float(np.abs(newest).max()) + 1e-15
    if float(np.abs(d1 - d2).max()) > tolerance:
        return 0
    moved = d1 > tolerance
    if moved.any() and float(np.abs(d1[moved] - delta).max()) > tolerance:
        return 0  # parts of the pipeline run at different paces: not periodic yet
    if (~moved).any() and float(np.abs(d1[~moved]).max()) > tolerance:
        return 0
    return remaining - remaining % 2


# -- references: the whole file as one MPI broadcast ---------------------------------------

def scatter_allgather_seconds(size: int, nodes: int, params: Parameters) -> float:
    """MPICH's long-message ``MPI_Bcast`` of the whole file, memory to memory, played out
    on the simulated links: a binomial scatter of ``N`` pieces and a ring allgather;
    about ``2·(N−1)/N·S/B + (⌈log2 N⌉ + N − 1)·α``."""
    if size == 0 or nodes <= 1:
        return params.startup
    net = _Network(nodes, 1)
    ready = net.play(_waves("bcast", nodes, 2, 0, True), 0, size, params, np.zeros(nodes))
    _allgather(net, ready, math.ceil(size / nodes), params, nodes - 1)
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
