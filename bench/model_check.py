"""The sweep's check, out of sample and with every point: ``python bench/report.py --check``.

The model is judged on runs it was not fitted to.  Per link rate:

* the link's α is the median of the runs' own small-message probes, and B is fitted (a
  robust, least-absolute-relative-error search) to the medians of **repeat 0** only;
* the CPU's terms are not fitted at all: ``o`` and the per-byte rate are those the runs'
  own models used (their probe's burst plus the engine's calibrated overhead, recorded
  by ``bench/sweep.py``), and the ranks per core are the run's nodes over the machine's
  cores (every emulated host shares this machine's);
* the errors are those of the medians of the **other repeats**, every point counted
  (CPU-bound ones included), except points shorter than :data:`~report.SHORT_BUCKETS`
  token buckets, which no link model can time and which are listed with their errors.

``auto`` counts every point: within :data:`~report.AUTO_SLACK` of the fastest measured
algorithm, a loss under :data:`AUTO_LOSS` counting as a win.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from mpistage.cluster.rates import parse_rate
from mpistage.model import (ASSUMED_CPU_RATE, ASSUMED_LOCAL_RATE, ENGINE_OVERHEAD, MODELLED,
                            Parameters, predict)

Run = dict

#: The sweep's rate name for runs on this machine alone (``bench/sweep.py --one-host``).
ONE_HOST = "shm"
#: Methods of ``bench/sweep.py --zstd``: judged by their own runs' predictions.
OWN_PREDICTION = ("mpistage-text", "mpistage-zstd")

MEDIAN_GOAL = 0.05
MAX_GOAL = 0.15
AUTO_SLACK = 0.05
AUTO_GOAL = 0.95
#: A loss of auto's smaller than this counts as a win (the issue's rule: noise at that
#: scale is the launch's, not the choice's).
AUTO_LOSS = 0.010
#: Compressed text against the same text uncompressed, whole run (issue 28).
ZSTD_GOAL = 2.5


def halves(runs: list[Run]) -> tuple[list[Run], list[Run], bool]:
    """``(fit, judge, out_of_sample)``: per configuration, repeat 0 to fit, the median of
    the other repeats to judge; where a configuration ran once, it serves both (and
    ``out_of_sample`` is False)."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        key = (run.get("rate"), run.get("method"), run.get("algorithm"), run.get("nodes"),
               run.get("size"), run.get("chunk"), run.get("arity"))
        groups[key].append(run)
    fit, judge, separate = [], [], True
    for group in groups.values():
        first = [r for r in group if r.get("repeat", 0) == 0] or group[:1]
        others = [r for r in group if r not in first]
        if not others:
            others, separate = first, False
        fit.append(first[0])
        judge.append({**others[0], "seconds": statistics.median(r["seconds"] for r in others),
                      "repeats": len(others)})
    return fit, judge, separate


def cpu_terms(runs: list[Run]) -> tuple[float, float]:
    """``(overhead, cpu_rate)`` the runs' own models used (medians), else the defaults
    a run without a calibration uses."""
    def recorded(name: str) -> list[float]:
        return [r[name] for r in runs if isinstance(r.get(name), float)
                and math.isfinite(r[name]) and r[name] > 0]

    overheads, rates = recorded("model_overhead"), recorded("model_cpu_rate")
    return (statistics.median(overheads) if overheads else ENGINE_OVERHEAD,
            statistics.median(rates) if rates else ASSUMED_CPU_RATE)


def for_run(params: Parameters, run: Run, cores: int) -> Parameters:
    """``params`` with the run's ranks per core: all its hosts share this machine."""
    return replace(params, share=run["nodes"] / run.get("cores", cores))


def predicted(run: Run, params: Parameters, cores: int) -> float:
    return predict(run["algorithm"], run["size"], run["nodes"], run["chunk"],
                   for_run(params, run, cores), run.get("arity", 2))


def fit_bandwidth(runs: list[Run], base: Parameters, nominal: float, cores: int) -> float:
    """The B (bytes/s) that minimises the summed relative error over ``runs`` (a robust
    fit: a few runs far off pull it little), searched from half to 1.2× ``nominal``."""
    candidates = np.geomspace(nominal * 0.5, nominal * 1.2, 300)

    def loss(bandwidth: float) -> float:
        params = replace(base, bandwidth=float(bandwidth))
        return sum(abs(predicted(r, params, cores) - r["seconds"]) / r["seconds"] for r in runs)

    return float(min(candidates, key=loss))


def probed(runs: list[Run], name: str) -> list[float]:
    """The runs' own probe's ``name`` (``quick_latency``, ``quick_bandwidth``)."""
    return [r[name] for r in runs if isinstance(r.get(name), float) and math.isfinite(r[name])]


def nominal_bandwidth(runs: list[Run], rate: str) -> float:
    """Bytes/s of the link as set (``100mbit``), or, on one host (``shm``, no link to
    set), as the runs' own probes measured MPI's shared memory."""
    if rate == ONE_HOST:
        return statistics.median(probed(runs, "quick_bandwidth") or [1e9])
    return parse_rate(rate) / 8


def model_for(fit_runs: list[Run], rate: str, cores: int) -> Parameters:
    """The model for one rate: α probed, B fitted to ``fit_runs``, CPU as recorded."""
    latencies = probed(fit_runs, "quick_latency")
    overhead, cpu_rate = cpu_terms(fit_runs)
    nominal = nominal_bandwidth(fit_runs, rate)
    base = Parameters(latency=statistics.median(latencies) if latencies else 1e-4,
                      bandwidth=nominal, read_bandwidth=ASSUMED_LOCAL_RATE,
                      write_bandwidth=ASSUMED_LOCAL_RATE, overhead=overhead, cpu_rate=cpu_rate)
    return replace(base, bandwidth=fit_bandwidth(fit_runs, base, nominal, cores))


def auto_within(runs: list[Run], slack: float = AUTO_SLACK, loss: float = AUTO_LOSS,
                keep: Callable[[Run], bool] = lambda run: True) -> tuple[int, int]:
    """(points where auto was within ``slack`` of the fastest measured algorithm or lost
    less than ``loss`` seconds, points), over the auto runs that ``keep`` accepts."""
    fastest: dict[tuple, float] = {}
    autos: dict[tuple, float] = {}
    for r in runs:
        if r["method"] != "mpistage" or r["nodes"] < 2:
            continue
        key = (r["nodes"], r["size"])
        if r["algorithm"] == "auto":
            if keep(r):
                autos[key] = r["seconds"]
        else:
            fastest[key] = min(r["seconds"], fastest.get(key, math.inf))
    keys = [k for k in autos if k in fastest]
    return (sum(autos[k] <= fastest[k] * (1 + slack) or autos[k] - fastest[k] < loss
                for k in keys), len(keys))


def check(runs: list[Run], cores: int, too_short) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
    """Every goal and whether the runs meet it (lines starting ``ok`` or ``MISSED``), and
    the points outside :data:`MAX_GOAL` or left out as too short, as table rows."""
    lines, rows = [], []
    by_rate: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run["method"] not in OWN_PREDICTION:
            by_rate[run["rate"]].append(run)
    for rate, group in sorted(by_rate.items()):
        fit, judge, separate = halves(group)
        ours = [r for r in fit if r["method"] == "mpistage" and r["algorithm"] in MODELLED
                and not too_short(r)]
        if len(ours) < 2:
            lines.append(f"MISSED: {rate}: too few runs to fit the model")
            continue
        params = model_for(ours, rate, cores)
        how = "out of sample (fitted to repeat 0, judged on the others)" if separate else \
            "IN SAMPLE (one repeat only)"
        lines.append(f"-- {rate}: α {params.latency * 1e6:.0f} µs (probed), B "
                     f"{params.bandwidth * 8 / 1e6:.1f} Mbit/s (fitted), o "
                     f"{params.overhead * 1e6:.0f} µs, CPU {params.cpu_rate / 1e9:.2f} GB/s per "
                     f"message end (the runs' own), ranks per core = nodes / {cores}; {how}")
        errors: dict[str, list[float]] = defaultdict(list)
        for r in judge:
            if r["method"] != "mpistage" or r["algorithm"] not in MODELLED:
                continue
            model = predicted(r, params, cores)
            error = (model - r["seconds"]) / r["seconds"]
            if too_short(r):
                rows.append(_row(rate, r, model, error, "left out: too short"))
                continue
            errors[r["algorithm"]].append(abs(error))
            if abs(error) > MAX_GOAL:
                rows.append(_row(rate, r, model, error, "outside the goal"))
        for algorithm, values in sorted(errors.items()):
            for what, measure, goal in (("median", statistics.median, MEDIAN_GOAL),
                                        ("max", max, MAX_GOAL)):
                value = measure(values)
                lines.append(f"{'ok' if value <= goal else 'MISSED'}: {rate} {algorithm}: "
                             f"{what} error {100 * value:.0f} % (goal ≤ {100 * goal:.0f} %, "
                             f"{len(values)} points, every one counted)")
        within, points = auto_within(judge)
        share = within / points if points else 0.0
        lines.append(f"{'ok' if points and share >= AUTO_GOAL else 'MISSED'}: {rate} auto "
                     f"within {100 * AUTO_SLACK:.0f} % of the fastest (or < "
                     f"{AUTO_LOSS * 1e3:.0f} ms behind) in {within} of {points} points "
                     f"({100 * share:.0f} %, goal ≥ {100 * AUTO_GOAL:.0f} %, every point)")
    lines += own_prediction_lines([r for r in runs if r["method"] in OWN_PREDICTION])
    return lines, rows


def own_prediction_lines(runs: list[Run]) -> list[str]:
    """The ``--zstd`` runs, judged on the prediction each run made for itself (its probe,
    its sample's compression ratio and codec rates, nothing fitted to the sweep), and
    how much faster compression made the whole run."""
    lines: list[str] = []
    if not runs:
        return lines  # a sweep without --zstd
    for method in OWN_PREDICTION:
        errors = [abs(r["predicted"] - r["seconds"]) / r["seconds"] for r in runs
                  if r["method"] == method and math.isfinite(r.get("predicted", math.nan))]
        if not errors:
            lines.append(f"MISSED: {method}: no run with a prediction")
        for what, measure, goal in (("median", statistics.median, MEDIAN_GOAL),
                                    ("max", max, MAX_GOAL)):
            if errors:
                value = measure(errors)
                lines.append(f"{'ok' if value <= goal else 'MISSED'}: {method}: {what} error "
                             f"of the runs' own predictions {100 * value:.0f} % (goal ≤ "
                             f"{100 * goal:.0f} %, {len(errors)} runs)")
    elapsed = {m: statistics.median(r["elapsed"] for r in runs if r["method"] == m)
               for m in OWN_PREDICTION if any(r["method"] == m for r in runs)}
    if len(elapsed) < 2:
        lines.append("MISSED: --compress zstd: runs with and without it are both needed")
    else:
        speedup = elapsed["mpistage-text"] / elapsed["mpistage-zstd"]
        lines.append(f"{'ok' if speedup >= ZSTD_GOAL else 'MISSED'}: --compress zstd "
                     f"{speedup:.2f}× faster than without, whole run (goal ≥ {ZSTD_GOAL}×; "
                     f"{elapsed['mpistage-zstd']:.2f} s against {elapsed['mpistage-text']:.2f} s)")
    return lines


ROW_HEADER = ["| rate | nodes | size | algorithm | chunk | measured | model | error | |",
              "|---|---|---|---|---|---|---|---|---|"]


def _row(rate: str, r: Run, model: float, error: float, why: str) -> str:
    from mpistage.units import format_bytes

    return (f"| {rate} | {r['nodes']} | {format_bytes(r['size'])} | {r['algorithm']} | "
            f"{format_bytes(r['chunk'])} | {r['seconds']:.3f} s | {model:.3f} s | "
            f"{100 * error:+.0f} % | {why} |")
