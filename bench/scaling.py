"""Predicted staging time from 64 to 4096 nodes: every algorithm at its best chunk, and
MPI's whole-file broadcasts for reference.  No MPI: the closed form
(:mod:`mpistage.model`) and the simulator (:mod:`mpistage.model.simulate`).

    python bench/scaling.py --out bench/results

writes ``scaling-10gbit.png`` and ``scaling-100gbit.png`` (panels per file size, time
and time / (S/B) against N, a line per algorithm, α as the line style) and
``scaling.md`` (the closed form and the simulator side by side at N = 64 … 4096).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mpistage.engine.algorithms import SCHEDULES
from mpistage.model import Parameters, predict
from mpistage.model.choice import optimal_chunk
from mpistage.model.references import REFERENCES, reference_closed_form
from mpistage.model.simulate import simulate
from mpistage.units import format_bytes

NODES = tuple(1 << p for p in range(6, 13))  # 64 … 4096
SIZES = (1 << 30, 10 << 30, 100 << 30)
RATES = {"10gbit": 10e9 / 8, "100gbit": 100e9 / 8}
LATENCIES = (2e-6, 20e-6)
TABLE_CASES = ((10 << 30, "10gbit", 5e-6), (100 << 30, "100gbit", 2e-6))
TABLE_NODES = (64, 256, 1024, 4096)


def closed(algorithm: str, size: int, nodes: int, params: Parameters) -> tuple[int, float]:
    """(chunk, closed-form seconds): ours at the model's best chunk, or a reference."""
    if algorithm in REFERENCES:
        return 0, reference_closed_form(algorithm, size, nodes, params)
    chunk = optimal_chunk(algorithm, size, nodes, params)
    return chunk, predict(algorithm, size, nodes, chunk, params)


def plot(rate: str, directory: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*SCHEDULES, *REFERENCES]
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(2, len(SIZES), figsize=(5 * len(SIZES), 8.5), sharex=True)
    for column, size in enumerate(SIZES):
        time_ax, ratio_ax = axes[0][column], axes[1][column]
        for latency, style in zip(LATENCIES, ("-", "--")):
            params = Parameters(latency=latency, bandwidth=RATES[rate])
            bound = size / params.bandwidth
            for name in names:
                seconds = [closed(name, size, n, params)[1] for n in NODES]
                label = f"{name}, α = {latency * 1e6:g} µs"
                time_ax.plot(NODES, seconds, style, color=colours[name], label=label)
                ratio_ax.plot(NODES, [s / bound for s in seconds], style, color=colours[name])
        time_ax.set_title(f"{format_bytes(size)} at {rate}")
        time_ax.set_ylabel("predicted time (s)")
        ratio_ax.set_ylabel("time / (S/B)  (flat is off the scale: N − 1)")
        ratio_ax.set_ylim(0.9, 30)
        ratio_ax.set_xlabel("nodes")
        for ax in (time_ax, ratio_ax):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    fig.suptitle(f"Staging at {rate} per link: closed form at each algorithm's best chunk "
                 "(solid α = 2 µs, dashed α = 20 µs)")
    fig.tight_layout(rect=(0, 0.1, 1, 0.97))
    path = directory / f"scaling-{rate}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def table() -> list[str]:
    lines = []
    for size, rate, latency in TABLE_CASES:
        params = Parameters(latency=latency, bandwidth=RATES[rate])
        bound = size / params.bandwidth
        lines += ["", f"### {format_bytes(size)} at {rate}, α = {latency * 1e6:g} µs "
                  f"(S/B = {bound:.2f} s)", "",
                  "Time / (S/B), closed form | simulated; chunk = the model's best.", "",
                  "| algorithm | " + " | ".join(f"N = {n}" for n in TABLE_NODES) + " |",
                  "|---|" + "---|" * len(TABLE_NODES)]
        for name in (*SCHEDULES, *REFERENCES):
            cells = []
            for nodes in TABLE_NODES:
                chunk, seconds = closed(name, size, nodes, params)
                simulated = simulate(name, size, nodes, chunk or 1, params)
                unit = f" ({format_bytes(chunk)})" if chunk else ""
                cells.append(f"{seconds / bound:.4f} \\| {simulated / bound:.4f}{unit}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results", help="directory for the plots and scaling.md")
    args = parser.parse_args(argv)
    directory = Path(args.out)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plots = [plot(rate, directory) for rate in RATES]
    rows = table()
    elapsed = time.perf_counter() - started
    text = "\n".join([
        "# Scaling to 4096 nodes (model and simulator)", "",
        "Generated by `python bench/scaling.py --out bench/results` "
        f"({elapsed:.0f} s on this machine).  No MPI runs: the closed form "
        "(`mpistage.model.predict`) at each algorithm's best chunk "
        "(`optimal_chunk`, 64 KiB … 64 MiB), and the link-level simulator "
        "(`mpistage.model.simulate`, its module doc says what it models).  R = W = ∞ "
        "(network only).", "",
        "The plots draw the closed form (it takes microseconds per point) for every "
        "algorithm; the tables hold the simulator beside it.  The references are whole-file MPI broadcasts, memory to memory: "
        "MPICH's scatter + ring allgather, and Träff's circulant broadcast (its round "
        "count with per-round α + S/(n·B), n the best block count; the closed form and "
        "the simulation coincide on these links).", "",
        "twotree is simulated as the engine runs it: each chunk forwarded as soon as it "
        "arrived (with unbounded buffers; forwarded in chunk order, the two trees wait "
        "on each other and the pipeline steps at 2·log2 N − 2 hops per chunk, 18× the "
        "bound at 1024 nodes, which the simulator found before the engine was changed). "
        "Where a node's two parents send at once, the later message serialises around "
        "the earlier one on its downlink while the sender goes on with its next send "
        "(the engine posts a chunk's sends together and TCP shares the uplink); the "
        "simulation is then within 1.5 % of the closed form at every N (it charges an "
        "interior node α once per two sends, the closed form once per send).  On the "
        "emulated cluster at 100 Mbit/s twotree measured 10-17 % over both at 4-16 hosts "
        "(the two flows into each node's downlink queue there; README, 'Validating the "
        "model'); at 1 Gbit/s within 5 %.  The simulated twotree at 4096 "
        "nodes takes ~7 s (its root runs ahead of the trees with unbounded buffers, so "
        "the periodic skip never applies); everything else simulates in well under 0.1 s.",
        *rows, "",
        *[f"![{p.stem}]({p.name})" for p in plots], ""])
    (directory / "scaling.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
