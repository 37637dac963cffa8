"""Benchmark sweep on the emulated cluster: algorithms × sizes × node counts × chunks.

Every run (its configuration, its per-rank phase timings, the model's prediction) is
appended to an HDF5 file as soon as it finishes, so a sweep can be stopped and resumed
(runs already in the file are skipped) and sweeps from several machines merged
(``python bench/report.py --merge``).  Baselines run in the same sweep: one point-to-point
transfer of the same bytes (the bound), MPI's default ``MPI_Bcast``, and MPICH's own
large-message algorithms forced through ``MPIR_CVAR_BCAST_INTRA_ALGORITHM``.

Two kinds of runs beside the emulated links, so that the check sees where the CPU binds:
``--one-host 2,4`` stages on this machine alone (ranks as nodes, tmpfs to tmpfs, MPI's
shared memory; rate ``shm``), and ``--zstd RATE:NODES:SIZE`` stages a compressible text
(log lines, zstd ratio ~3-4) with ``--compress zstd`` and without (methods
``mpistage-zstd`` and ``mpistage-text``).

Needs root (network namespaces).  Example (the committed results, three repeats of each
configuration; ``bench/results/sweep.h5`` and ``sweep-3x.h5`` are earlier sweeps, before
the model had CPU terms)::

    sudo .venv/bin/python bench/sweep.py --out bench/results/sweep-cpu.h5 --repeat 3 \\
        --rates 100mbit,1gbit --nodes 2,4,8,16 --sizes 16M,64M --sizes-for '{"1gbit": "64M,256M"}' \\
        --nodes-for '{"1gbit": "2,4,8"}' --mpi-bcast "" --one-host 2,4 --one-host-sizes 1G \\
        --runs chain:64K,chain:256K,chain:1M,chain:4M,twotree:1M,binomial:1M,auto:auto \\
        --zstd 100mbit:8:64M
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streams import write_text  # noqa: E402  (the compressible sample of bench/streams.py)

from mpistage import mpi_library
from mpistage.cluster import EmulatedCluster, parse_rate, teardown
from mpistage.cluster.runs import mpistage_command, read_report, stage_with_report
from mpistage.model import Parameters, predict
from mpistage.samples import write_random_file
from mpistage.staging.results import ResultStore
from mpistage.units import format_bytes, parse_size

#: MPICH's broadcast algorithms worth forcing for large messages (MPICH 5.0 names).
MPI_BCAST_ALGORITHMS = ("auto", "scatter_ring_allgather", "pipelined_tree")
#: mpistage runs per (nodes, size): the chain at three chunk sizes (the chunk-size
#: question), every other algorithm at 1 MiB, and the model's own choice.
DEFAULT_RUNS = "chain:256K,chain:1M,chain:4M,binomial:1M,tree:1M,twotree:1M,flat:1M,bcast:1M,auto:auto"


#: One run: a report (an mpistage run, or ``{"ok": False, "error": ...}``) or a
#: baseline's seconds (``None`` where it failed).
Runner = Callable[[], "dict | float | None"]


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
                 chunk: str, options: tuple[str, ...] = ()) -> dict:
    run, report = stage_with_report(
        cluster, src, ["--algorithm", algorithm, "--chunk-size", chunk, "--timeout", "120",
                       *options],
        hosts=hosts, env={"MPIEXEC_TIMEOUT": "900"}, timeout=1200)
    for i in hosts:
        (cluster.scratch_dir(i) / src.name).unlink(missing_ok=True)
    if run.returncode != 0 or report is None:
        return {"ok": False, "error": (run.stderr or run.stdout).strip()[-500:]}
    return report


def run_locally(ranks: int, src: Path, algorithm: str, chunk: str, work: Path) -> dict:
    """``mpiexec -n RANKS mpistage --ranks-as-nodes`` on this machine alone, into tmpfs;
    the report, or ``{"ok": False, "error": ...}``."""
    mpiexec = mpi_library.find_mpiexec()
    if mpiexec is None:
        return {"ok": False, "error": "no mpiexec"}
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        report_path = run_dir / "report.json"
        argv = mpistage_command(report_path, ["--ranks-as-nodes", "--algorithm", algorithm,
                                              "--chunk-size", chunk, "--timeout", "120"],
                                src, str(run_dir / "x{node}"))
        env = {**os.environ, **mpi_library.launch_environment(), "MPIEXEC_TIMEOUT": "900"}
        run = subprocess.run([mpiexec, "-n", str(ranks), *argv], env=env, capture_output=True,
                             text=True, timeout=1200)
        report = read_report(report_path)
        if run.returncode != 0 or report is None:
            return {"ok": False, "error": (run.stderr or run.stdout).strip()[-500:]}
        return report
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_mpi(cluster: EmulatedCluster, module: str, hosts: list[int], size: int,
            env: dict[str, str] | None = None) -> float | None:
    run = cluster.mpiexec([sys.executable, "-m", module, str(size)], hosts=hosts,
                          env={"MPIEXEC_TIMEOUT": "900", **(env or {})},
                          capture_output=True, text=True, timeout=1200)
    if run.returncode != 0:
        print(f"  {module} failed: {run.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return float(run.stdout.split()[-1])


class OutOfTime(Exception):
    """The sweep's time budget is spent (resume with the same command)."""


def run_jobs(store: ResultStore, jobs: list[tuple[dict, Runner]], repeat: int,
             deadline: float) -> None:
    """Each job ``repeat`` times, skipping runs already in ``store``."""
    for config, runner in jobs:
        for index in range(repeat):
            config = {**config, "repeat": index}
            if store.has(config):
                continue
            if time.monotonic() > deadline:
                raise OutOfTime
            record(store, config, runner)


def sweep(args: argparse.Namespace) -> None:
    runs = [tuple(item.split(":")) for item in args.runs.split(",")]
    deadline = time.monotonic() + args.budget_minutes * 60
    work = Path(tempfile.mkdtemp(prefix="mpistage-sweep-"))  # the emulated hosts see /tmp
    try:
        with ResultStore(args.out) as store:
            for rate_text in filter(None, args.rates.split(",")):
                cluster_sweep(args, store, runs, rate_text, work, deadline)
            if args.one_host:
                one_host_sweep(args, store, runs, deadline)
            if args.zstd:
                zstd_sweep(args, store, work, deadline)
    except OutOfTime:
        print("time budget spent; resume with the same command")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cluster_sweep(args: argparse.Namespace, store: ResultStore, runs: list[tuple[str, ...]],
                  rate_text: str, work: Path, deadline: float) -> None:
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
                jobs: list[tuple[dict, Runner]] = []
                if nodes == 2:
                    jobs.append(({**base, "method": "p2p", "algorithm": "send", "chunk": size},
                                 lambda: run_mpi(cluster, "mpistage.cluster.p2p", [0, 1], size)))
                for algorithm in filter(None, args.mpi_bcast.split(",")):
                    env = {} if algorithm == "auto" else \
                        {"MPIR_CVAR_BCAST_INTRA_ALGORITHM": algorithm}
                    jobs.append(({**base, "method": "mpi_bcast", "algorithm": algorithm,
                                  "chunk": size},
                                 lambda env=env: run_mpi(cluster, "mpistage.cluster.bcast",
                                                         hosts, size, env)))
                for algorithm, chunk in runs:
                    chunk_bytes = parse_size(chunk) if chunk != "auto" else 1 << 20
                    if rough_seconds(algorithm, size, nodes, chunk_bytes, rate) > args.cap:
                        continue
                    jobs.append(({**base, "method": "mpistage", "algorithm": algorithm,
                                  "chunk": chunk_bytes if chunk != "auto" else 0},
                                 lambda a=algorithm, c=chunk, h=hosts, s=src:
                                 run_mpistage(cluster, h, s, a, c)))
                run_jobs(store, jobs, args.repeat, deadline)


def one_host_sweep(args: argparse.Namespace, store: ResultStore,
                   runs: list[tuple[str, ...]], deadline: float) -> None:
    """Ranks as nodes on this machine alone: MPI's shared memory, no link to wait on, so
    the CPU (and tmpfs) bound every step (rate ``shm``); source and copies in /dev/shm."""
    work = Path(tempfile.mkdtemp(prefix="mpistage-sweep-", dir="/dev/shm"))
    try:
        for size in [parse_size(s) for s in args.one_host_sizes.split(",")]:
            src = sample_file(work, size)
            for nodes in [int(n) for n in args.one_host.split(",")]:
                base = {"rate": "shm", "nodes": nodes, "size": size, "arity": 2}
                run_jobs(store, [
                    ({**base, "method": "mpistage", "algorithm": algorithm,
                      "chunk": parse_size(chunk) if chunk != "auto" else 0},
                     lambda a=algorithm, c=chunk, n=nodes, s=src: run_locally(n, s, a, c, work))
                    for algorithm, chunk in runs], args.repeat, deadline)
            src.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def zstd_sweep(args: argparse.Namespace, store: ResultStore, work: Path,
               deadline: float) -> None:
    """A compressible text (bench/streams.py's log lines) with ``--compress zstd`` and
    without, default options otherwise, on ``NODES`` emulated hosts at ``RATE``."""
    rate_text, nodes_text, size_text = args.zstd.split(":")
    nodes, size = int(nodes_text), parse_size(size_text)
    src = work / f"text-{size}.log"
    write_text(src, size)
    teardown(args.name)
    with EmulatedCluster(hosts=nodes, rate=parse_rate(rate_text), name=args.name) as cluster:
        hosts = list(range(nodes))
        base = {"rate": rate_text, "nodes": nodes, "size": size, "arity": 2,
                "algorithm": "auto", "chunk": 0}
        run_jobs(store, [
            ({**base, "method": "mpistage-text"},
             lambda: run_mpistage(cluster, hosts, src, "auto", "auto")),
            ({**base, "method": "mpistage-zstd"},
             lambda: run_mpistage(cluster, hosts, src, "auto", "auto",
                                  ("--compress", "zstd"))),
        ], args.repeat, deadline)


def record(store: ResultStore, config: dict, runner: Runner) -> None:
    """Run ``runner`` and append its outcome: a baseline's seconds, or an mpistage
    report's transfer time, phases, the model's prediction and the terms it used."""
    label = (f"{config['rate']} n={config['nodes']} {format_bytes(config['size'])} "
             f"{config['method']}/{config['algorithm']} chunk {format_bytes(config['chunk'])}")
    result = runner()
    if not isinstance(result, dict):
        seconds = result
        store.append(config, {"seconds": seconds if seconds else float("nan"),
                              "ok": seconds is not None})
    elif not result.get("ok"):
        store.append(config, {"seconds": float("nan"), "ok": False,
                              "error": result.get("error", "")})
        seconds = None
    else:
        prediction = result.get("prediction") or {}
        parameters = prediction.get("parameters") or {}
        seconds = result["transfer_seconds"]
        store.append(config, {
            "seconds": seconds, "elapsed": result["elapsed"], "ok": True,
            "cores": os.cpu_count() or 1,  # for the ranks' CPU load (bench/report.py)
            "predicted": prediction.get("predicted", float("nan")),
            "chosen_algorithm": result["algorithm"], "chosen_chunk": result["chunk_size"],
            "quick_latency": parameters.get("latency") or float("nan"),
            "quick_bandwidth": parameters.get("bandwidth") or float("nan"),
            # the CPU's terms the run's model used (its probe's o, the rate, the share)
            **{f"model_{name}": parameters.get(name) or float("nan")
               for name in ("overhead", "cpu_rate", "share")},
            "error": "",
        }, result["ranks"])
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
    parser.add_argument("--one-host", default="",
                        help="rank counts for one-host runs (ranks as nodes, tmpfs, MPI's "
                        "shared memory; rate 'shm'), e.g. 2,4; none by default")
    parser.add_argument("--one-host-sizes", default="256M,1G")
    parser.add_argument("--zstd", default="", metavar="RATE:NODES:SIZE",
                        help="also stage a compressible text with --compress zstd and "
                        "without, e.g. 100mbit:8:64M")
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
