"""Hold a sweep's measurements against the cost model: fit, errors, choices, plots.

    python bench/report.py --results bench/results/sweep-cpu.h5 --plots bench/results/sweep-cpu
    python bench/report.py --results a.h5 --merge b.h5 c.h5     # merge sweeps first
    python bench/report.py --check    # exit 1 if the results miss the goals below

Per link rate it fits the model's latency and bandwidth to the mpistage runs by least
squares (relative errors), prints the model's error per algorithm (with the fitted
parameters, and with each run's own quick measurement), how often ``--algorithm auto``
picked the algorithm that measured fastest, mpistage next to MPI's broadcasts and the
point-to-point bound, and draws measured against predicted time versus file size (one
panel per node count, as in the Ka paper's figures) and versus node count.  Repeats of a
configuration count as one point, their median.

The goals (``--check``, :mod:`model_check`: the model with its CPU terms, fitted to one
repeat and judged on the others, every point counted but those too short to time): per
algorithm and link rate, the median relative error at most 5 % and the largest at most
15 %; ``auto`` within 5 % of the fastest measured algorithm (or less than 10 ms behind)
in at least 95 % of the points; runs of ``bench/sweep.py --zstd`` judged on their own
predictions, and compression ≥ 2.5× faster.  The report's tables below are the earlier,
descriptive view (link-only fit, CPU-bound points shown apart).

The model is of links; on this machine 16 ranks share 2 cores, and a run whose ranks
kept the cores busy waited for a core, not for a link.  Runs record each rank's CPU
seconds over the transfer (phase ``cpu``): a configuration whose ranks used at least
:data:`CPU_BOUND` of the machine's cores (median over repeats) is *CPU-bound*.  And the
emulated links are token buckets: after a pause each lets a bucket through at full
speed (500 KB at 1 Gbit/s, 4 ms of the link's time), so a file that takes the link less
than :data:`SHORT_BUCKETS` buckets' time is *too short* to time the link by.  Both kinds
are left out of the descriptive fit (the check counts the CPU-bound ones), and their
figures are listed.  Every
point outside :data:`MAX_GOAL` is listed with its evidence: its CPU load, the spread
of its repeats, and a cause measured apart where one is known (:func:`known_cause`).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from mpistage.cluster.rates import bucket_bytes, parse_rate
from mpistage.engine.bcast_model import algorithm as mpich_bcast_algorithm
from mpistage.model import MODELLED, Parameters, predict
from mpistage.model.choice import ASSUMED
from mpistage.model.fit import Sample, fit
from mpistage.staging.results import ResultStore
from mpistage.units import format_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_check  # noqa: E402  (bench/model_check.py: the check, out of sample)

Run = dict

MAX_GOAL = model_check.MAX_GOAL
AUTO_SLACK = model_check.AUTO_SLACK
#: Share of the machine's cores a run's ranks used during the transfer from which it
#: counts as bound by this machine's CPU rather than by its links (see the module's doc).
CPU_BOUND = 0.5
#: A file the link carries in fewer token buckets' time than this is too short to time.
SHORT_BUCKETS = 10


def load(path: str, merge: list[str], cores: int = os.cpu_count() or 1) -> list[Run]:
    """The runs that succeeded, each with ``cpu_load``: its ranks' CPU seconds over the
    transfer per second of it and core of the machine (``None`` where not recorded)."""
    with ResultStore(path, "a" if merge else "r") as store:
        for other in merge:
            print(f"merged {store.merge(other)} runs from {other}")
        runs = [r for r in store.runs() if r.get("ok")]
        for run in runs:
            table = store.phases(run["key"])
            cpu = (float(np.nansum(table["cpu"])) if "cpu" in (table.dtype.names or ())
                   and len(table) and not np.isnan(table["cpu"]).all() else None)
            run["cpu_load"] = (cpu / (run["seconds"] * run.get("cores", cores))
                               if cpu is not None and run["seconds"] > 0 else None)
        return runs


def median_of_repeats(runs: list[Run]) -> list[Run]:
    """One run per configuration (everything but its repeat number and results): the
    first, with the median of the repeats' seconds and CPU loads, and ``spread``, the
    repeats' range relative to that median."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        key = (run.get("rate"), run.get("method"), run.get("algorithm"), run.get("nodes"),
               run.get("size"), run.get("chunk"), run.get("arity"))
        groups[key].append(run)
    merged = []
    for group in groups.values():
        seconds = [r["seconds"] for r in group]
        loads = [r["cpu_load"] for r in group if r.get("cpu_load") is not None]
        median = statistics.median(seconds)
        merged.append({**group[0], "seconds": median, "repeats": len(group),
                       "spread": (max(seconds) - min(seconds)) / median if median else 0.0,
                       "cpu_load": statistics.median(loads) if loads else None})
    return merged


def cpu_bound(run: Run) -> bool:
    """Whether the run's ranks kept at least :data:`CPU_BOUND` of the cores busy."""
    return run.get("cpu_load") is not None and run["cpu_load"] >= CPU_BOUND


def too_short(run: Run) -> bool:
    """Whether the link carries the run's file in less than :data:`SHORT_BUCKETS` times
    its token bucket (see the module's doc); runs on one host (``shm``) have no bucket."""
    if run["rate"] == model_check.ONE_HOST:
        return False
    return run["size"] < SHORT_BUCKETS * bucket_bytes(parse_rate(run["rate"]))


def link_bound(runs: list[Run]) -> list[Run]:
    """The runs the link model is for: neither CPU-bound nor too short."""
    return [r for r in runs if not cpu_bound(r) and not too_short(r)]


def left_out(runs: list[Run]) -> list[Run]:
    """The runs :func:`link_bound` leaves out."""
    return [r for r in runs if cpu_bound(r) or too_short(r)]


def by_rate(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run["rate"]].append(run)
    return dict(groups)


def staged(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r["method"] == "mpistage" and r["algorithm"] in MODELLED]


def samples(runs: list[Run]) -> list[Sample]:
    return [Sample(r["algorithm"], r["size"], r["nodes"], r["chunk"], r["seconds"], r["arity"])
            for r in staged(runs)]


def probed_latency(runs: list[Run]) -> float | None:
    """Median of the one-way small-message latencies the runs measured themselves."""
    values = [r["quick_latency"] for r in runs
              if isinstance(r.get("quick_latency"), float) and not math.isnan(r["quick_latency"])]
    return statistics.median(values) if values else None


def fitted(runs: list[Run]) -> tuple[Parameters, Parameters]:
    """(α from the runs' own probes with B fitted; α and B both fitted)."""
    joint = fit(samples(runs))
    alpha = probed_latency(runs)
    return (fit(samples(runs), latency=alpha) if alpha is not None else joint), joint


def relative_errors(runs: list[Run], params: Parameters) -> dict[str, list[float]]:
    errors: dict[str, list[float]] = defaultdict(list)
    for r in staged(runs):
        predicted = predict(r["algorithm"], r["size"], r["nodes"], r["chunk"], params, r["arity"])
        errors[r["algorithm"]].append(abs(predicted - r["seconds"]) / r["seconds"])
    return errors


def probed(run: Run) -> bool:
    """Whether the run measured its link (a small file whose choice is settled is not
    measured: its prediction is for :data:`~mpistage.model.choice.ASSUMED` links)."""
    return not (run.get("quick_bandwidth") == ASSUMED.bandwidth
                and run.get("quick_latency") == ASSUMED.latency)


def own_prediction_errors(runs: list[Run]) -> dict[str, list[float]]:
    """Errors of the predictions the runs made themselves, from their own link probe."""
    errors: dict[str, list[float]] = defaultdict(list)
    for r in staged(runs):
        if not probed(r):
            continue
        if isinstance(r.get("predicted"), float) and not math.isnan(r["predicted"]):
            errors[r["algorithm"]].append(abs(r["predicted"] - r["seconds"]) / r["seconds"])
    return errors


def auto_accuracy(runs: list[Run]) -> tuple[int, int, list[str]]:
    """(auto picked the measured-fastest algorithm, cases, lines)."""
    best: dict[tuple, tuple[float, str]] = {}
    autos: dict[tuple, Run] = {}
    for r in runs:
        if r["method"] != "mpistage" or r["nodes"] < 2:
            continue
        key = (r["nodes"], r["size"])
        if r["algorithm"] == "auto":
            autos[key] = r
        elif r["seconds"] < best.get(key, (math.inf, ""))[0]:
            best[key] = (r["seconds"], r["algorithm"])
    hits, lines = 0, []
    for key in sorted(autos):
        if key not in best:
            continue
        auto, (seconds, fastest) = autos[key], best[key]
        hit = auto["chosen_algorithm"] == fastest
        hits += hit
        lines.append(f"| {key[0]} | {format_bytes(key[1])} | {auto['chosen_algorithm']} "
                     f"({format_bytes(auto['chosen_chunk'])}) | {fastest} | "
                     f"{auto['seconds']:.2f} s | {seconds:.2f} s | {'yes' if hit else 'no'} | "
                     f"{auto['seconds'] / seconds:.2f}× |")
    return hits, len(lines), lines


def auto_within(runs: list[Run], slack: float = AUTO_SLACK,
                cpu_bound_too: bool = False) -> tuple[int, int]:
    """(points where auto's time was within ``slack`` of the fastest measured
    algorithm's, points with both), over the points where auto's run is neither
    CPU-bound (unless ``cpu_bound_too``) nor too short (:func:`link_bound`)."""
    return model_check.auto_within(
        runs, slack, loss=0.0,
        keep=lambda r: not too_short(r) and (cpu_bound_too or not cpu_bound(r)))


Fit = tuple[Parameters, Parameters]


def fits_by_rate(runs: list[Run]) -> dict[str, tuple[list[Run], Fit | None]]:
    """Per link rate, its runs and the model fitted to their link-bound ones
    (:func:`fitted`; ``None`` with fewer than two mpistage runs to fit), once for the
    goals, the outlier table and the report."""
    rates: dict[str, tuple[list[Run], Fit | None]] = {}
    for rate, group in sorted(by_rate(runs).items()):
        link = link_bound(group)
        rates[rate] = (group, fitted(link) if len(staged(link)) >= 2 else None)
    return rates


def known_cause(run: Run) -> str | None:
    """What makes the model miss ``run``, where a measurement apart found it (README,
    "Validating the model: the sweep", has the figures); the goals still count the miss.

    * twotree (from 3 nodes): every node has two parents, and MPI's TCP transport sends
      as soon as a send is posted (the receiver cannot pace its parents), so each
      downlink is fed by two senders at once: it queues (``bench/link_queues.py``,
      100 Mbit/s: up to 250-500 kB, 20-40 ms; a chain's stay empty), which stretches
      every round trip across it (MPI's send completions seen up to 43-200 ms after the
      child had the data, 5.7-13 ms in a chain), and the flows that end last (at 4
      hosts, the two between the interior nodes: 40-45 Mbit/s where they need 47) are
      held back by their round trips more than by their links.  The model and the
      simulator let every link carry one message at a time, with no queues.
    * ``bcast`` of one chunk below 8 nodes: MPICH's binomial ``Ibcast`` posts the root's
      sends at once, and the transport does not share the root's link evenly between
      them (``bench/ibcast_shares.py``: 4 hosts, 1 MiB, the last rank done after
      2.5-2.9 c/B where an even share takes 3).
    """
    if run["algorithm"] == "twotree" and run["nodes"] > 2:
        return "two senders per downlink: queues"
    if (run["algorithm"] == "bcast" and run["size"] <= run["chunk"]
            and mpich_bcast_algorithm(run["chunk"], run["nodes"]) == "binomial"):
        return "uneven share of the root's link"
    return None


def outliers(runs: list[Run], params: Parameters) -> list[str]:
    """A table row for every point the fitted model misses by more than
    :data:`MAX_GOAL`, with its evidence: CPU load, spread of the repeats, a known cause."""
    rows = []
    for r in staged(runs):
        predicted = predict(r["algorithm"], r["size"], r["nodes"], r["chunk"], params, r["arity"])
        error = (predicted - r["seconds"]) / r["seconds"]
        if abs(error) <= MAX_GOAL:
            continue
        load = r.get("cpu_load")
        why = ("CPU-bound" if cpu_bound(r) else "too short" if too_short(r)
               else "noisy" if r.get("spread", 0) > abs(error)
               else known_cause(r) or "not explained")
        rows.append((abs(error), f"| {r['nodes']} | {format_bytes(r['size'])} | {r['algorithm']} "
                     f"| {format_bytes(r['chunk'])} | {r['seconds']:.3f} s | {predicted:.3f} s "
                     f"| {100 * error:+.0f} % | {'-' if load is None else f'{100 * load:.0f} %'} "
                     f"| {100 * r.get('spread', 0):.0f} % | {why} |"))
    return [row for _, row in sorted(rows, reverse=True)]


OUTLIER_HEADER = ["| nodes | size | algorithm | chunk | measured (median) | model | error "
                  "| CPU load | spread of repeats | why |", "|---" * 10 + "|"]


def baseline_lines(runs: list[Run]) -> list[str]:
    p2p = {r["size"]: r["seconds"] for r in runs if r["method"] == "p2p"}
    table: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in runs:
        key = (r["nodes"], r["size"])
        if r["method"] == "mpi_bcast":
            table[key][f"MPI_Bcast {r['algorithm']}"] = r["seconds"]
        elif r["method"] == "mpistage" and r["algorithm"] in MODELLED:
            name = f"mpistage {r['algorithm']}"
            table[key][name] = min(r["seconds"], table[key].get(name, math.inf))
    columns = ["mpistage chain", "mpistage binomial", "mpistage bcast", "MPI_Bcast auto",
               "MPI_Bcast scatter_ring_allgather", "MPI_Bcast pipelined_tree"]
    lines = ["| nodes | size | p2p | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for key in sorted(table):
        bound = p2p.get(key[1])
        cells = []
        for column in columns:
            value = table[key].get(column)
            if value is None:
                cells.append("-")
            else:
                ratio = f" ({value / bound:.2f}×)" if bound else ""
                cells.append(f"{value:.2f} s{ratio}")
        lines.append(f"| {key[0]} | {format_bytes(key[1])} | "
                     f"{f'{bound:.2f} s' if bound else '-'} | " + " | ".join(cells) + " |")
    return lines


def plots(rate: str, runs: list[Run], params: Parameters, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {algorithm: f"C{i}" for i, algorithm in enumerate(MODELLED)}
    ours = staged(runs)
    node_counts = sorted({r["nodes"] for r in ours})
    sizes = sorted({r["size"] for r in ours})
    saved = []

    fig, axes = plt.subplots(1, len(node_counts), figsize=(4.2 * len(node_counts), 4.6),
                             squeeze=False, sharey=True)
    for ax, nodes in zip(axes[0], node_counts):
        for algorithm in MODELLED:
            chunk = 1 << 20
            points = [(r["size"], r["seconds"]) for r in ours if r["nodes"] == nodes
                      and r["algorithm"] == algorithm and r["chunk"] == chunk]
            if not points:
                continue
            xs = sorted({s for s, _ in points})
            ax.plot([s / 2**20 for s, _ in points], [t for _, t in points], "o",
                    color=colours[algorithm], label=f"{algorithm} measured")
            ax.plot([s / 2**20 for s in xs],
                    [predict(algorithm, s, nodes, chunk, params) for s in xs], "-",
                    color=colours[algorithm], alpha=0.6, label=f"{algorithm} model")
        p2p = sorted((r["size"], r["seconds"]) for r in runs if r["method"] == "p2p")
        if p2p:
            ax.plot([s / 2**20 for s, _ in p2p], [t for _, t in p2p], "k--", label="p2p bound")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{nodes} nodes")
        ax.set_xlabel("file size (MiB)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("transfer time (s)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=6)
    fig.suptitle(f"mpistage at {rate}, 1 MiB chunks: measured (points) and model (lines)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = directory / f"model-{rate}-size.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    saved.append(path)

    largest = max(sizes)
    fig, ax = plt.subplots(figsize=(6, 4))
    for algorithm in MODELLED:
        points = sorted((r["nodes"], r["seconds"]) for r in ours if r["size"] == largest
                        and r["algorithm"] == algorithm and r["chunk"] == 1 << 20)
        if not points:
            continue
        ax.plot([n for n, _ in points], [t for _, t in points], "o", color=colours[algorithm],
                label=f"{algorithm} measured")
        xs = sorted({r["nodes"] for r in ours})
        ax.plot(xs, [predict(algorithm, largest, n, 1 << 20, params) for n in xs], "-",
                color=colours[algorithm], alpha=0.6, label=f"{algorithm} model")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nodes")
    ax.set_ylabel("transfer time (s)")
    ax.set_title(f"{format_bytes(largest)} at {rate}, 1 MiB chunks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = directory / f"model-{rate}-nodes.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    saved.append(path)
    return saved


def percent(values: list[float], how) -> str:  # type: ignore[no-untyped-def]
    return f"{100 * how(values):.0f} %" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="bench/results/sweep-cpu.h5")
    parser.add_argument("--merge", nargs="*", default=[], help="merge these files in first")
    parser.add_argument("--plots", help="directory for the PNG plots")
    parser.add_argument("--check", action="store_true",
                        help="only check the goals; exit 1 if one is missed")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="cores of the machine that ran the sweep, where a run does not "
                        "say (default: this machine's, %(default)s)")
    args = parser.parse_args()
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
    every_run = load(args.results, args.merge, args.cores)
    if not every_run:
        print("no runs", file=sys.stderr)
        return 1
    if args.check:
        lines, rows = model_check.check(every_run, args.cores, too_short)
        with ResultStore(args.results, "r") as store:
            failed = [r for r in store.runs() if not r.get("ok")]
        lines.append(f"{'MISSED' if failed else 'ok'}: {len(failed)} runs failed" + "".join(
            f"\n    {r['key']}: {str(r.get('error', ''))[-200:]}" for r in failed[:5]))
        print("\n".join(lines))
        if rows:
            print("\npoints outside the goal, and those left out as too short:",
                  *model_check.ROW_HEADER, *rows, sep="\n")
        goals = [line for line in lines if not line.startswith("--")]
        missed = sum(line.startswith("MISSED") for line in goals)
        print(f"\n{missed} of {len(goals)} goals missed" if missed
              else f"\nall {len(goals)} goals met")
        return 1 if missed else 0
    runs = median_of_repeats(every_run)
    rates = fits_by_rate(runs)
    out: list[str] = [f"# Sweep report ({len(runs)} runs from {args.results})", ""]
    for rate, (group, model) in rates.items():
        link = link_bound(group)
        if model is None:
            out += [f"## {rate}", "", "Too few runs to fit the model.", ""]
            continue
        params, joint = model
        out += [f"## {rate}", "",
                f"Model parameters: α = {params.latency * 1e6:.0f} us per message (median of "
                f"the runs' own small-message probes), B = {params.bandwidth * 8 / 1e6:.1f} "
                f"Mbit/s per link and direction (robust least squares over "
                f"{len(staged(link))} mpistage runs; {len(staged(left_out(group)))} left out: "
                f"CPU-bound ones, whose ranks used ≥ {100 * CPU_BOUND:.0f} % of the machine's "
                f"cores, and those too short, whose file the link carries in less than "
                f"{SHORT_BUCKETS} token buckets' time). Fitting both by least squares gives "
                f"α = {joint.latency * 1e6:.0f} us, B = {joint.bandwidth * 8 / 1e6:.1f} Mbit/s: "
                "with chunks of 256 KiB and more, c/B dwarfs α and the runs barely tell the "
                "two apart.", "",
                "| algorithm | runs | median error (fitted) | max error (fitted) "
                "| left out | their max error | median error (run's own probe) | max |",
                "|---|---|---|---|---|---|---|---|"]
        fitted_errors = relative_errors(link, params)
        bound = relative_errors(left_out(group), params)
        own = own_prediction_errors(link)
        for algorithm in MODELLED:
            e, o, b = (fitted_errors.get(algorithm, []), own.get(algorithm, []),
                       bound.get(algorithm, []))
            out.append(f"| {algorithm} | {len(e)} | {percent(e, statistics.median)} | "
                       f"{percent(e, max)} | {len(b)} | {percent(b, max)} | "
                       f"{percent(o, statistics.median)} | {percent(o, max)} |")
        hits, cases, lines = auto_accuracy(group)
        out += ["", f"`--algorithm auto --chunk-size auto` picked the algorithm that measured "
                f"fastest in {hits} of {cases} cases:", "",
                "| nodes | size | auto chose | fastest measured | auto's time | fastest time "
                "| same | auto / fastest |", "|---|---|---|---|---|---|---|---|", *lines]
        within, points = auto_within(group)
        every, of = auto_within(group, cpu_bound_too=True)
        out += ["", f"`auto` within {100 * AUTO_SLACK:.0f} % of the fastest measured: "
                f"{within} of {points} points where its run was neither CPU-bound nor too "
                f"short ({every} of {of} with the CPU-bound ones)."]
        rows = outliers(group, params)
        out += ["", f"Points the model misses by more than {100 * MAX_GOAL:.0f} % (CPU load: "
                "the ranks' CPU seconds over the transfer per second and core; spread: the "
                "repeats' range over their median):", "", *OUTLIER_HEADER, *rows] if rows else []
        chain8 = [r for r in staged(group) if r["algorithm"] == "chain" and r["nodes"] == 8
                  and r["size"] == 64 << 20]
        p2p64 = [r for r in group if r["method"] == "p2p" and r["size"] == 64 << 20]
        if chain8 and p2p64:
            best = min(chain8, key=lambda r: r["seconds"])
            out += ["", f"Chain to 8 hosts, 64 MiB: {best['seconds']:.2f} s (chunk "
                    f"{format_bytes(best['chunk'])}) against one point-to-point transfer "
                    f"{p2p64[0]['seconds']:.2f} s: **{best['seconds'] / p2p64[0]['seconds']:.2f}×** "
                    "(the Ka paper saw 1.10–1.25)."]
        out += ["", "Best time per method (× the point-to-point bound):", "",
                *baseline_lines(group), ""]
        if args.plots:
            for path in plots(rate, group, params, Path(args.plots)):
                out.append(f"![{path.stem}]({path.name})")
            out.append("")
    text = "\n".join(out)
    print(text)
    if args.plots:
        (Path(args.plots) / "report.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
