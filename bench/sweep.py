"""Benchmark sweep on the emulated cluster: algorithms × sizes × node counts × chunks.

Every run (its configuration, its per-rank phase timings, the model's prediction) is
appended to an HDF5 file as soon as it finishes, so a sweep can be stopped and resumed
(runs already in the file are skipped) and sweeps from several machines merged
(``python bench/report.py --merge``).  Baselines run in the same sweep: one point-to-point
transfer of the same bytes (the bound), MPI's default ``MPI_Bcast``, and MPICH's own
large-message algorithms forced through ``MPIR_CVAR_BCAST_INTRA_ALGORITHM``.

Needs root (network namespaces).  Example (the committed results, three repeats of each
configuration; ``bench/results/sweep.h5`` is an earlier sweep with one):

    sudo .venv/bin/python bench/sweep.py --out bench/results/sweep-3x.h5 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mpistage.cluster import EmulatedCluster, parse_rate, teardown
from mpistage.cluster.runs import stage_with_report
from mpistage.model import Parameters, predict
from mpistage.results import ResultStore
from mpistage.samples import write_random_file
from mpistage.units import format_bytes, parse_size

#: MPICH's broadcast algorithms worth forcing for large messages (MPICH 5.0 names).
MPI_BCAST_ALGORITHMS = ("auto", "scatter_ring_allgather", "pipelined_tree")
#: mpistage runs per (nodes, size): the chain at three chunk sizes (the chunk-size
#: question), every other algorithm at 1 MiB, and the model's own choice.
DEFAULT_RUNS = "chain:256K,chain:1M,chain:4M,binomial:1M,tree:1M,twotree:1M,flat:1M,bcast:1M,auto:auto"


def sample_file(directory: Path, size: int) -> Path:
    path = directory / f"sample-{size}.bin"
    if not path.exists():
        write_random_file(path, size, seed=size)
    return path


def rough_seconds(algorithm: str, size: int, nodes: int, chunk: int, rate: int) -> float:
    """What a run should take, to leave out the ones over the time cap."""
    link = Parameters(latency=2e-4, bandwidth=0.9 * rate / 8, startup=1.5)
    return predict("chain" if algorithm == "auto" else algorithm, size, nodes, chunk, link)


def run_mpistage(cluster: EmulatedCluster, hosts: list[int], src: Path, algorithm: str,
                 chunk: str) -> dict:
    run, report = stage_with_report(
        cluster, src, ["--algorithm", algorithm, "--chunk-size", chunk, "--timeout", "120"],
        hosts=hosts, env={"MPIEXEC_TIMEOUT": "900"}, timeout=1200)
    for i in hosts:
        (cluster.scratch_dir(i) / src.name).unlink(missing_ok=True)
    if run.returncode != 0 or report is None:
        return {"ok": False, "error": (run.stderr or run.stdout).strip()[-500:]}
    return report


def run_mpi(cluster: EmulatedCluster, module: str, hosts: list[int], size: int,
            env: dict[str, str] | None = None) -> float | None:
    run = cluster.mpiexec([sys.executable, "-m", module, str(size)], hosts=hosts,
                          env={"MPIEXEC_TIMEOUT": "900", **(env or {})},
                          capture_output=True, text=True, timeout=1200)
    if run.returncode != 0:
        print(f"  {module} failed: {run.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return float(run.stdout.split()[-1])


def sweep(args: argparse.Namespace) -> None:
    runs = [tuple(item.split(":")) for item in args.runs.split(",")]
    deadline = time.monotonic() + args.budget_minutes * 60
    work = Path(tempfile.mkdtemp(prefix="mpistage-sweep-"))
    with ResultStore(args.out) as store:
        for rate_text in args.rates.split(","):
            rate = parse_rate(rate_text)
            node_counts = [int(n) for n in args.nodes.split(",")]
            if rate_text in args.nodes_for:
                node_counts = [int(n) for n in args.nodes_for[rate_text].split(",")]
            sizes = [parse_size(s) for s in (args.sizes_for.get(rate_text) or args.sizes).split(",")]
            teardown(args.name)
            with EmulatedCluster(hosts=max(node_counts), rate=rate, name=args.name) as cluster:
                for size in sizes:
                    src = sample_file(work, size)
                    for nodes in node_counts:
                        hosts = list(range(nodes))
                        base = {"rate": rate_text, "nodes": nodes, "size": size, "arity": 2}
                        jobs: list[tuple[dict, object]] = []
                        if nodes == 2:
                            jobs.append(({**base, "method": "p2p", "algorithm": "send",
                                          "chunk": size}, ("p2p", None)))
                        for algorithm in filter(None, args.mpi_bcast.split(",")):
                            jobs.append(({**base, "method": "mpi_bcast", "algorithm": algorithm,
                                          "chunk": size}, ("bcast", algorithm)))
                        for algorithm, chunk in runs:
                            chunk_bytes = parse_size(chunk) if chunk != "auto" else 1 << 20
                            if rough_seconds(algorithm, size, nodes, chunk_bytes, rate) > args.cap:
                                continue
                            jobs.append(({**base, "method": "mpistage", "algorithm": algorithm,
                                          "chunk": chunk_bytes if chunk != "auto" else 0},
                                         ("mpistage", (algorithm, chunk))))
                        for config, (kind, detail) in jobs:
                            for repeat in range(args.repeat):
                                config = {**config, "repeat": repeat}
                                if store.has(config):
                                    continue
                                if time.monotonic() > deadline:
                                    print("time budget spent; resume with the same command")
                                    return
                                record(store, cluster, hosts, src, config, kind, detail, work)


def record(store: ResultStore, cluster: EmulatedCluster, hosts: list[int], src: Path,
           config: dict, kind: str, detail: object, work: Path) -> None:
    size = config["size"]
    label = (f"{config['rate']} n={config['nodes']} {format_bytes(size)} {config['method']}"
             f"/{config['algorithm']} chunk {format_bytes(config['chunk'])}")
    if kind == "p2p":
        seconds = run_mpi(cluster, "mpistage.cluster.p2p", [0, 1], size)
        store.append(config, {"seconds": seconds if seconds else float("nan"),
                              "ok": seconds is not None})
    elif kind == "bcast":
        env = {} if detail == "auto" else {"MPIR_CVAR_BCAST_INTRA_ALGORITHM": str(detail)}
        seconds = run_mpi(cluster, "mpistage.cluster.bcast", hosts, size, env)
        store.append(config, {"seconds": seconds if seconds else float("nan"),
                              "ok": seconds is not None})
    else:
        algorithm, chunk = detail  # type: ignore[misc]
        report = run_mpistage(cluster, hosts, src, algorithm, chunk)
        if not report.get("ok"):
            store.append(config, {"seconds": float("nan"), "ok": False,
                                  "error": report.get("error", "")})
            seconds = None
        else:
            prediction = report.get("prediction") or {}
            seconds = report["transfer_seconds"]
            store.append(config, {
                "seconds": seconds, "elapsed": report["elapsed"], "ok": True,
                "cores": os.cpu_count() or 1,  # for the ranks' CPU load (bench/report.py)
                "predicted": prediction.get("predicted", float("nan")),
                "chosen_algorithm": report["algorithm"], "chosen_chunk": report["chunk_size"],
                "quick_latency": (prediction.get("parameters") or {}).get("latency") or float("nan"),
                "quick_bandwidth": (prediction.get("parameters") or {}).get("bandwidth") or float("nan"),
                # the CPU's terms the run's model used (its probe's o, the rate, the share)
                **{f"model_{name}": (prediction.get("parameters") or {}).get(name) or float("nan")
                   for name in ("overhead", "cpu_rate", "share")},
                "error": "",
            }, report["ranks"])
    print(f"{label}: {seconds if seconds is None else f'{seconds:.3f} s'}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/sweep-3x.h5")
    parser.add_argument("--name", default="mstsweep", help="emulated cluster's name")
    parser.add_argument("--rates", default="100mbit,1gbit")
    parser.add_argument("--nodes", default="2,4,8,16")
    parser.add_argument("--sizes", default="1M,4M,16M,64M")
    parser.add_argument("--runs", default=DEFAULT_RUNS,
                        help="ALGORITHM:CHUNK pairs for mpistage (default %(default)s)")
    parser.add_argument("--mpi-bcast", default=",".join(MPI_BCAST_ALGORITHMS),
                        help="MPI_Bcast algorithms to run as baselines, comma-separated "
                        "('' for none; default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each configuration (default %(default)s; reports take "
                        "their median)")
    parser.add_argument("--cap", type=float, default=40.0,
                        help="leave out runs the model expects to take longer (seconds)")
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--nodes-for", type=json.loads, default={"1gbit": "2,4,8"},
                        help='per-rate node counts as JSON (default {"1gbit": "2,4,8"}: '
                        "16 ranks on 2 cores cannot drive 1 Gbit/s links)")
    parser.add_argument("--sizes-for", type=json.loads, default={"1gbit": "1M,16M,64M,256M"},
                        help="per-rate sizes as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("sweep: needs root (network namespaces)", file=sys.stderr)
        return 2
    sweep(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
