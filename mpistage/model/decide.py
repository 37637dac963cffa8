"""Which algorithm and chunk size, and what the model predicts for them.

Every run carries a prediction next to its measurement.  The parameters come from a
calibration file (``mpistage calibrate``) when one is given, else from a quick
measurement on the link from the root to its first neighbour: three 1-byte ping-pongs for
the latency and one message of up to 1 MiB for the bandwidth (a few milliseconds on a
fast network, ~0.1 s at 100 Mbit/s): the receiver times the second of two messages sent
back to back (half of up to 1 MiB after up to 1 MiB), polling every 20 µs.  A single
message timed by the sender read a 1 Gbit/s link ~30 % slow (TCP's slow start on a
fresh connection, and the wake-up after the last byte), and one sent after an untimed
warm-up ~30 % fast (the emulated link's token bucket, refilled meanwhile, let its first
half through at once); a file no larger than that message, for which no
link could change the choice, is not worth it, and its prediction assumes a typical link.
Every rank also times its per-byte CPU on 4 MiB, all at once, and the root takes the
median (:mod:`.cpu_rate`, ~25 ms on 4 ranks of 2 cores).  Disk speeds
are only known from a calibration; without one the model assumes the network is the
bottleneck.
"""

from __future__ import annotations

import math
import time
from array import array
from dataclasses import dataclass, replace
from typing import Any

from mpi4py import MPI

from ..engine.algorithms import SCHEDULES
from ..engine.codec import CodecCost
from ..engine.pipeline import DEFAULT_DEPTH
from ..errors import Stalled
from ..model import (ASSUMED_CPU_RATE, ASSUMED_FILE_COST, ASSUMED_LOCAL_RATE, ENGINE_OVERHEAD,
                     MODELLED, ROOT_READ, Parameters)
from ..plan import Plan, SourceInfo
from ..sources.streams import ASSUMED_STREAM_SIZE
from .choice import ASSUMED, Choice, choice_is_settled, choose
from .cores import placement
from .cpu_rate import ranks_per_end_rate

AUTO = "auto"
_PROBE_TAG = 7201
_PROBE_MIN, _PROBE_MAX = 64 << 10, 1 << 20
_PROBE_PAUSE = 20e-6
#: Messages in the probe's burst (1 byte each, sent back to back): MPI's CPU per
#: message, LogGP's ``o``, a millisecond or less on any link.
_BURST = 32


@dataclass(frozen=True)
class Prediction:
    """What the model expects of this run, and from what."""

    source: str  # "calibration", "quick measurement" or "assumed"
    parameters: Parameters
    nodes: int
    choice: Choice
    auto: bool
    #: The largest chunk ``auto`` considered for the last-level cache's sake
    #: (:meth:`~mpistage.model.cores.Placement.cache_chunk`; ``None``: no such limit).
    cache_chunk: int | None = None

    @property
    def seconds(self) -> float:
        """Predicted transfer time of the chosen algorithm (start-up excluded)."""
        return self.choice.predicted

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "parameters": self.parameters.to_dict(),
                "nodes": self.nodes, "auto": self.auto, "cache_chunk": self.cache_chunk,
                **self.choice.to_dict()}


def _exchange(requests: list[MPI.Request], timeout: float) -> None:
    """Wait for ``requests``, polling every 20 µs (the probe is short, and a late
    wake-up would count as transfer time)."""
    deadline = time.monotonic() + timeout
    while not MPI.Request.Testall(requests):
        if time.monotonic() > deadline:
            raise Stalled(f"the link probe made no progress for {timeout:g} s")
        time.sleep(_PROBE_PAUSE)


def quick_parameters(comm: MPI.Comm, root: int, size: int, timeout: float) -> Parameters | None:
    """Latency and bandwidth from the root to its next rank (collective over ``comm``;
    the result on the root only, ``None`` elsewhere or with a single rank)."""
    if comm.size < 2:
        return Parameters(latency=0.0, bandwidth=float("inf")) if comm.rank == root else None
    peer = (root + 1) % comm.size
    if comm.rank not in (root, peer):
        return None
    tiny = bytearray(1)
    lead = bytearray(min(max(size, _PROBE_MIN), _PROBE_MAX))
    timed = bytearray(len(lead) // 2)  # not a view of ``lead``: receives may not overlap
    if comm.rank == peer:
        for _ in range(4):
            _exchange([comm.Irecv(tiny, source=root, tag=_PROBE_TAG)], timeout)
            _exchange([comm.Isend(tiny, dest=root, tag=_PROBE_TAG)], timeout)
        interval = _arrivals(comm.Irecv(lead, source=root, tag=_PROBE_TAG),
                             comm.Irecv(timed, source=root, tag=_PROBE_TAG), timeout)
        received = _burst(comm, root, False, timeout)
        _exchange([comm.Isend(array("d", [interval, received]), dest=root, tag=_PROBE_TAG)],
                  timeout)
        return None
    trips = []
    for _ in range(4):  # the first round trip may set up the connection: not counted
        started = time.perf_counter()
        _exchange([comm.Isend(tiny, dest=peer, tag=_PROBE_TAG)], timeout)
        _exchange([comm.Irecv(tiny, source=peer, tag=_PROBE_TAG)], timeout)
        trips.append(time.perf_counter() - started)
    latency = min(trips[1:]) / 2
    measured = array("d", [0.0, 0.0])
    started = time.perf_counter()
    _exchange([comm.Isend(lead, dest=peer, tag=_PROBE_TAG),
               comm.Isend(timed, dest=peer, tag=_PROBE_TAG)], timeout)
    elapsed = time.perf_counter() - started - 2 * latency
    sent = _burst(comm, peer, True, timeout)
    _exchange([comm.Irecv(measured, source=peer, tag=_PROBE_TAG)], timeout)
    interval, received = measured
    overhead = max(sent, received)
    if interval < _PROBE_PAUSE * 10:
        # the receiver was not scheduled while the second message arrived (more ranks
        # than cores): its interval says nothing; the whole exchange, timed here, does
        return Parameters(latency=latency, overhead=overhead,
                          bandwidth=(len(lead) + len(timed)) / max(elapsed, 1e-9))
    return Parameters(latency=latency, bandwidth=len(timed) / interval, overhead=overhead)


def _burst(comm: MPI.Comm, peer: int, sending: bool, timeout: float) -> float:
    """CPU seconds per message of :data:`_BURST` 1-byte messages sent back to back
    (``sending``) or received from ``peer``, posted and tested as the engine does: MPI's
    own ``o``.  Thread CPU, not wall time: a rank that shares its core with others is
    charged for that by the model's ``share``, not here."""
    buffers = [bytearray(1) for _ in range(_BURST)]
    started = time.thread_time()
    if sending:
        requests = [comm.Isend(b, dest=peer, tag=_PROBE_TAG) for b in buffers]
    else:
        requests = [comm.Irecv(b, source=peer, tag=_PROBE_TAG) for b in buffers]
    _exchange(requests, timeout)
    return (time.thread_time() - started) / _BURST


def _arrivals(lead: MPI.Request, timed: MPI.Request, timeout: float) -> float:
    """Seconds between the two receives' completions, polled every 20 µs: the second
    message's time on the link, once the first drained what a fresh connection or a
    shaper's bucket lets through faster than the link's rate."""
    _exchange([lead], timeout)
    first = time.perf_counter()
    _exchange([timed], timeout)
    return time.perf_counter() - first


def with_cpu(params: Parameters, share: float, measured: bool) -> Parameters:
    """``params`` with the CPU's terms: ``share`` (found at run time, as placement
    decides it), and where no calibration gave them, the per-message ``overhead`` (MPI's,
    as the probe ``measured`` it, plus :data:`~mpistage.model.ENGINE_OVERHEAD`) and,
    where neither a calibration nor the probe (:mod:`~mpistage.model.cpu_rate`) gave
    the per-byte rate, :data:`~mpistage.model.ASSUMED_CPU_RATE`."""
    overhead, cpu_rate = params.overhead, params.cpu_rate
    if measured or not overhead:
        overhead = ENGINE_OVERHEAD + (params.overhead if measured else 0.0)
    if math.isinf(cpu_rate):
        cpu_rate = ASSUMED_CPU_RATE
    return replace(params, overhead=overhead, cpu_rate=cpu_rate, share=share)


def decide(
    comm: MPI.Comm, root: int, info: SourceInfo, *, calibration: Parameters | None,
    algorithm: str, chunk_size: int | str, arity: int, timeout: float,
    max_chunk: int | None = None, files: int = 0,
    codecs: tuple[CodecCost | None, ...] = (None,), memory: int | None = None,
    recoverable: bool = False, depth: int = DEFAULT_DEPTH, shared_source: bool = False,
    read_rates: tuple[float, float] | None = None,
) -> tuple[Plan, Prediction] | None:
    """The plan, with ``auto`` resolved by the model (an ``auto`` chunk at most
    ``max_chunk``, the memory budget's limit, and an algorithm's buffers within ``memory``:
    :func:`~mpistage.model.choice.choose`), and the model's prediction; on the root
    of ``comm`` (the transfer's participants), ``None`` on its other ranks.

    Collective over ``comm``: without a calibration the root measures its first link,
    unless the file is no larger than the probe's message and the model's choice is the
    same whatever the link (every rank knows that without talking, from the size and the
    options): then measuring would cost as much as sending, and change nothing.  A
    larger file is always measured, so that its run tests the model's prediction.
    ``files``: the files of a tree's stream (each costs φ, the calibration's
    ``file_cost``, else :data:`~mpistage.model.ASSUMED_FILE_COST`).  ``codecs``: the
    codecs to weigh, measured on a sample of the source (``None``: as is).  A stream's
    size is unknown: the model plans it for ``--expect-size``, else for
    :data:`~mpistage.sources.streams.ASSUMED_STREAM_SIZE`, and never with MPI's broadcast
    (every rank would have to know how many chunks come).  ``recoverable``: the run
    could survive a lost node (:func:`mpistage.engine.recovery.can_recover`: one file of known
    size): ``auto`` then never picks MPI's own broadcast, which cannot leave a member out.
    An ``auto`` chunk is also at most what lets ``depth`` buffers of every rank on the
    most crowded machine stay in its last-level cache
    (:meth:`~mpistage.model.cores.Placement.cache_chunk`).  ``shared_source``: every
    node sees the source as the root does, so ``auto`` may have every node read a share
    (:mod:`mpistage.engine.ring`); ``read_rates``: the source's bytes/s, read by the root
    alone and by every node at once (the root's, measured: the model's ``R`` and ``A``).
    """
    auto_algorithm, auto_chunk = algorithm == AUTO, chunk_size == AUTO
    algorithms = ((MODELLED if shared_source else ROOT_READ) if auto_algorithm
                  else (algorithm,))
    if info.stream or (auto_algorithm and recoverable):
        algorithms = tuple(a for a in algorithms if SCHEDULES[a].point_to_point)
    candidates = dict(algorithms=algorithms,
                      chunk_size=None if auto_chunk else int(chunk_size), arity=arity,
                      max_chunk=max_chunk, files=files, codecs=codecs, memory=memory)
    size = info.size or ASSUMED_STREAM_SIZE if info.stream else info.size
    params, source = calibration, "calibration"
    if (params is None and size <= _PROBE_MAX
            and choice_is_settled(size, comm.size, **candidates)):
        params, source = ASSUMED, "assumed"
    # Before the probe, while every rank is here: during it the root and its partner
    # are busy, and another rank's first message to the root could be refused until
    # MPICH's bounded retries ran out (EAGAIN from the gather: seen with --explain on 8
    # emulated hosts, whose connections are not opened early as a staging's are).
    place = placement(comm, root) if source != "assumed" else None
    if params is None:
        params = quick_parameters(comm, root, size, timeout)
        source = "quick measurement"
        # with others, the per-byte CPU too (a single rank sends nothing)
        cpu_rate = ranks_per_end_rate(comm, root) if comm.size > 1 else None
        if params is not None:  # the root
            params = replace(params, read_bandwidth=ASSUMED_LOCAL_RATE,
                             write_bandwidth=ASSUMED_LOCAL_RATE,
                             cpu_rate=cpu_rate or params.cpu_rate)
    if comm.rank != root:
        return None
    assert params is not None
    if files and not params.file_cost:
        params = replace(params, file_cost=ASSUMED_FILE_COST)
    if read_rates is not None:  # the run's own, unless a calibration measured them
        alone, together = read_rates
        if source == "calibration" and math.isfinite(params.read_bandwidth):
            alone = params.read_bandwidth
        if source == "calibration" and math.isfinite(params.shared_read_bandwidth):
            together = params.shared_read_bandwidth
        params = replace(params, read_bandwidth=alone, shared_read_bandwidth=together)
    params = with_cpu(params, place.share if place else 0.0,
                      measured=source == "quick measurement")
    cache_chunk = place.cache_chunk(depth) if place is not None and auto_chunk else None
    if cache_chunk is not None:
        candidates["max_chunk"] = min(max_chunk or cache_chunk, cache_chunk)
    choice = choose(size, comm.size, replace(params, startup=0.0), **candidates)
    prediction = Prediction(source=source, parameters=params, nodes=comm.size, choice=choice,
                            auto=auto_algorithm or auto_chunk, cache_chunk=cache_chunk)
    plan = Plan.of(info, chunk_size=choice.chunk_size, algorithm=choice.algorithm,
                   codec=choice.codec,
                   read_by="all" if SCHEDULES[choice.algorithm].every_node_reads else "root",
                   link_rate=0.0 if source == "assumed" or not math.isfinite(params.bandwidth)
                   else params.bandwidth)
    return plan, prediction
