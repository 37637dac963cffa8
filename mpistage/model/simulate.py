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

The send discipline is the engine's (:class:`mpistage.engine.forward.Forward`,
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

import numpy as np

from ..engine import bcast_model
from ..engine.algorithms import SCHEDULES
from ..engine.pipeline import DEFAULT_DEPTH
from . import Parameters
from .network import Network, Wave, allgather, chunk_waves
from .references import REFERENCES, reference_seconds


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
    net = Network(nodes, depth)

    schedule = SCHEDULES[algorithm]

    def waves_for(k: int, nbytes: int) -> tuple[tuple[Wave, ...], int]:
        if nodes == 1:
            return (), 0
        if not schedule.point_to_point:  # MPI's own: scattered where MPICH would
            return chunk_waves(algorithm, nodes, arity, 0, _scatters(nbytes, nodes)), 0
        tree = k % schedule.trees
        return chunk_waves(algorithm, nodes, arity, tree), tree

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
        if not schedule.point_to_point and _scatters(nbytes, nodes) and nodes > 1:
            rounds = bcast_model.allgather_rounds(nbytes, nodes)
            ready = np.full(nodes, allgather(net, ready, math.ceil(nbytes / nodes), params,
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
