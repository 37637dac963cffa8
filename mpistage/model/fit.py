"""Fitting the cost model's link parameters (α, B) to measured runs (``bench/report.py``,
``bench/ka.py``): where the network is the bottleneck the model is linear in α and 1/B,
so plain (robust) least squares finds them.  The CPU parameters are measured directly
(``mpistage calibrate``), not fitted here."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..engine import bcast_model
from ..engine.algorithms import SCHEDULES
from ..model import Parameters, shape


@dataclass(frozen=True)
class Sample:
    """One measured run: its configuration and its transfer time (start-up excluded)."""

    algorithm: str
    size: int
    nodes: int
    chunk: int
    seconds: float
    arity: int = 2


def network_terms(algorithm: str, size: int, nodes: int, chunk: int, arity: int = 2) -> tuple[float, float]:
    """``(a, b)`` with network-bound transfer time ``a·α + b/B`` (no start-up, R = W = ∞).

    The model is linear in α and 1/B wherever the network is the bottleneck, which lets
    :func:`fit` use plain linear least squares.
    """
    if size == 0 or nodes <= 1:
        return 0.0, 0.0
    chunk = min(chunk, size)
    chunks = math.ceil(size / chunk)
    if not SCHEDULES[algorithm].point_to_point:  # MPI's own broadcast, bandwidth-bound
        messages, first_bytes = bcast_model.first_chunk(chunk, nodes)
        return (messages + (chunks - 1) * bcast_model.step_messages(chunk, nodes),
                first_bytes + (chunks - 1) * bcast_model.step_bytes(chunk, nodes))
    fan_out, fill = shape(algorithm, nodes, arity)
    hops = (chunks - 1) * fan_out + fill
    return hops, hops * chunk


def fit(samples: list[Sample], base: Parameters | None = None, huber: float | None = 0.1,
        latency: float | None = None) -> Parameters:
    """Least-squares α and B from measured runs, minimising the *relative* error (a 1 s
    run counts as much as a 60 s one).  Other parameters come from ``base``.

    Runs the model describes badly (a CPU-bound run, an MPI broadcast whose internal
    algorithm differs from the modelled one) would drag the fit; with ``huber`` the fit
    is robust: iteratively reweighted least squares with Huber weights, so residuals
    beyond ``huber`` (10 %) count linearly, not quadratically.  ``huber=None`` gives the
    plain least-squares fit.

    When chunks are large, ``c/B`` dwarfs α and the two are nearly collinear; a
    ``latency`` measured directly (small-message ping-pongs) can then be given, and only
    B is fitted.

    Raises:
        ValueError: fewer than two usable samples, or they cannot separate α from B.
    """
    import numpy as np

    rows = [(network_terms(s.algorithm, s.size, s.nodes, s.chunk, s.arity), s.seconds)
            for s in samples if s.seconds > 0 and s.nodes > 1 and s.size > 0]
    if len(rows) < 2:
        raise ValueError(f"need at least two runs on two or more nodes to fit, got {len(rows)}")
    design = np.array([[a / t, b / t] for (a, b), t in rows])
    target = np.ones(len(rows))
    if latency is not None:  # move the known α·a/t to the right-hand side
        target = target - design[:, 0] * latency
        design = design[:, 1:]
    weights = np.ones(len(rows))
    for _ in range(50 if huber else 1):
        root = np.sqrt(weights)[:, None]
        solution, *_ = np.linalg.lstsq(design * root, target * root[:, 0], rcond=None)
        residuals = np.abs(design @ solution - target)
        updated = np.where(residuals <= (huber or np.inf), 1.0, (huber or 1.0) / np.maximum(residuals, 1e-12))
        if np.allclose(updated, weights):
            break
        weights = updated
    alpha, inverse_bandwidth = (latency, solution[0]) if latency is not None else solution
    if inverse_bandwidth <= 0:
        raise ValueError("the runs do not determine a positive bandwidth")
    base = base or Parameters(latency=0.0, bandwidth=math.inf)
    return replace(base, latency=max(float(alpha), 0.0),
                   bandwidth=1.0 / float(inverse_bandwidth))
