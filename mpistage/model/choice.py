"""The model's choice: the algorithm, chunk and codec predicted fastest
(:func:`choose`), and whether measuring the link could change it
(:func:`choice_is_settled`).  The predictions themselves are :mod:`mpistage.model`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..engine.algorithms import SCHEDULES
from ..engine.codec import CodecCost
from ..model import ROOT_READ, Parameters, bound, predict

#: Chunk sizes ``auto`` considers.
CHUNK_CHOICES = tuple(1 << p for p in range(16, 27))  # 64 KiB … 64 MiB
#: Where the link binds, chunks predicted this close to the fastest count as a tie, won
#: by the largest: near its optimum the predicted time is flat (8 hosts at 100 Mbit/s,
#: 64 MiB: 64 KiB to 256 KiB within 0.6 %), so the probe's noise moved the choice from
#: run to run, while each message costs every rank CPU that the time does not show (a
#: relaying rank woke ~3 times per chunk) and that a machine's other ranks and work need.
#: Where the CPU binds the prediction prices each message, and larger chunks than its
#: optimum measured slower (one host, 1 GiB: 4 MiB 0.85 s, 16 MiB 1.07 s).  Where the
#: source or the disk binds (their rates assumed, as in a run without a calibration)
#: the time is as flat: one host, 1 GiB, read-bound at the assumed 1.5 GB/s, took 1, 2
#: and 4 MiB in three runs without the tie.
CHUNK_TIE = 0.01


def optimal_chunk(
    algorithm: str, size: int, nodes: int, params: Parameters, arity: int = 2,
    choices: tuple[int, ...] = CHUNK_CHOICES, max_chunk: int | None = None, files: int = 0,
    codec: CodecCost | None = None,
) -> int:
    """The chunk size among ``choices`` (none above ``max_chunk``, the memory budget's
    limit; the smallest choice always stays) with the lowest predicted time; unless the
    CPU bounds it, the largest predicted within :data:`CHUNK_TIE` of that."""
    if max_chunk is not None:
        choices = tuple(c for c in choices if c <= max_chunk) or (min(choices),)
    candidates = sorted({min(c, max(size, 1)) for c in choices})
    times = [predict(algorithm, size, nodes, c, params, arity, files, codec)
             for c in candidates]
    fastest, best = min(zip(times, (-c for c in candidates)))
    if bound(algorithm, size, nodes, -best, params, arity, files, codec) == "CPU":
        return -best  # the model prices every message already
    return max(c for c, t in zip(candidates, times) if t <= fastest * (1 + CHUNK_TIE))


def chain_optimal_chunk(size: int, nodes: int, params: Parameters) -> float:
    """Closed form for the network-bound chain: ``sqrt(S·α·B / (N − 2))``."""
    if nodes <= 2:
        return float(size)
    return math.sqrt(size * params.latency * params.bandwidth / (nodes - 2))


@dataclass(frozen=True)
class Choice:
    """The model's pick and what it predicted for every candidate.

    Attributes:
        predictions: per algorithm, its best chunk and seconds (with the chosen codec).
        codec: the codec chosen (``"none"``: chunks travel as they are).
        codecs: per codec weighed, the best predicted seconds with it.
    """

    algorithm: str
    chunk_size: int
    predicted: float
    predictions: dict[str, tuple[int, float]]  # algorithm → (its best chunk, seconds)
    codec: str = "none"
    codecs: dict[str, float] | None = None
    bounds: dict[str, str] | None = None  # algorithm → what paces it (:func:`bound`)

    def to_dict(self) -> dict[str, object]:
        return {"algorithm": self.algorithm, "chunk_size": self.chunk_size,
                "predicted": self.predicted, "codec": self.codec,
                "codecs": self.codecs or {}, "bounds": self.bounds or {},
                "predictions": {a: {"chunk_size": c, "seconds": t}
                                for a, (c, t) in self.predictions.items()}}


#: Predictions this close count as a tie, won by the algorithm listed first (the chain
#: before the trees): the model is good to a few per cent, and where two schedules are
#: that close the simpler one measured faster here (two trees at 8-16 hosts: each node
#: takes two flows at once on its downlink, which the model does not charge).
TIE = 0.03


def largest_chunk(algorithm: str, nodes: int, memory: int | None) -> int | None:
    """The largest chunk of which ``memory`` holds the buffers ``algorithm`` needs at
    least to ``nodes`` nodes (``None``: no budget)."""
    return None if memory is None else memory // SCHEDULES[algorithm].buffers_needed(nodes)


def fits(algorithm: str, nodes: int, chunk: int, memory: int | None) -> bool:
    """Whether ``memory`` holds the chunk buffers ``algorithm`` needs at least."""
    largest = largest_chunk(algorithm, nodes, memory)
    return largest is None or chunk <= largest


def choose(
    size: int, nodes: int, params: Parameters, *, algorithms: tuple[str, ...] = ROOT_READ,
    chunk_size: int | None = None, arity: int = 2, max_chunk: int | None = None,
    files: int = 0, codecs: tuple[CodecCost | None, ...] = (None,), memory: int | None = None,
) -> Choice:
    """The algorithm and codec (and, unless ``chunk_size`` is given, chunk, at most
    ``max_chunk``, and at most what ``memory`` holds of the buffers the algorithm needs
    at least) predicted fastest; an algorithm whose buffers of ``chunk_size`` overflow
    ``memory`` is left out.  ``codecs``: the codecs to weigh, each with its cost on this
    source (``None``: sending as is), a later one chosen only where it is predicted
    faster than the earlier ones' pick by more than :data:`TIE`.  Encoded chunks need
    point-to-point schedules (their lengths differ; MPI's broadcast needs every rank's
    count)."""
    best: Choice | None = None
    weighed: dict[str, float] = {}
    for codec in codecs:
        usable = tuple(a for a in algorithms if (codec is None or SCHEDULES[a].point_to_point)
                       and fits(a, nodes, chunk_size or CHUNK_CHOICES[0], memory))
        predictions = {}
        for algorithm in usable:
            caps = [c for c in (max_chunk, largest_chunk(algorithm, nodes, memory))
                    if c is not None]
            cap = min(caps) if caps else None
            chunk = chunk_size or optimal_chunk(algorithm, size, nodes, params, arity,
                                                max_chunk=cap, files=files, codec=codec)
            predictions[algorithm] = (chunk, predict(algorithm, size, nodes, chunk, params,
                                                     arity, files, codec))
        if not predictions:
            continue
        # a schedule that gives something up must win by its margin (a ring: 15 %)
        weighed_time = {a: t * (1 + SCHEDULES[a].auto_margin)
                        for a, (_, t) in predictions.items()}
        fastest = min(weighed_time.values())
        pick = next(a for a in algorithms if a in predictions
                    and weighed_time[a] <= fastest * (1 + TIE))
        name = "none" if codec is None else codec.name
        weighed[name] = predictions[pick][1]
        # a codec must win by more than a tie: within the model's precision, the
        # bytes travel as they are (less CPU, and random bytes never pay for coding,
        # even where the tie above let plain chunks keep a slightly slower schedule)
        if best is None or predictions[pick][1] * (1 + TIE) < best.predicted:
            bounds = {a: bound(a, size, nodes, c, params, arity, files, codec)
                      for a, (c, _) in predictions.items()}
            best = Choice(pick, predictions[pick][0], predictions[pick][1], predictions, name,
                          bounds=bounds)
    if best is None:
        raise ValueError(f"no algorithm of {', '.join(algorithms)} can send encoded chunks")
    return replace(best, codecs=weighed)


#: Links as far apart as our users' (a 100 Mbit/s Ethernet, a fast fabric, and between):
#: a choice that is the same for all of them is one a measurement of the link cannot change.
BRACKET = (
    Parameters(latency=100e-6, bandwidth=12.5e6),
    Parameters(latency=20e-6, bandwidth=1.25e9),
    Parameters(latency=2e-6, bandwidth=25e9),
)
#: What a run assumes of the link when the choice is settled without measuring it.
ASSUMED = BRACKET[1]


def choice_is_settled(
    size: int, nodes: int, *, algorithms: tuple[str, ...] = ROOT_READ,
    chunk_size: int | None = None, arity: int = 2, max_chunk: int | None = None,
    files: int = 0, codecs: tuple[CodecCost | None, ...] = (None,), memory: int | None = None,
) -> bool:
    """Whether :func:`choose` picks the same algorithm and chunk whatever the link
    (over :data:`BRACKET`): then measuring the link first is time lost.  It is, e.g.,
    for a file that fits one chunk (the schedule with the fewest hops wins), and never
    for a large file, whose best chunk depends on latency × bandwidth."""
    picks = {(c.algorithm, c.chunk_size, c.codec) for c in (
        choose(size, nodes, params, algorithms=algorithms, chunk_size=chunk_size,
               arity=arity, max_chunk=max_chunk, files=files, codecs=codecs, memory=memory)
        for params in BRACKET)}
    return len(picks) == 1
