"""mpistage-sbcast against Slurm's sbcast, on a real Slurm on the emulated cluster.

As root (it brings up and tears down its own cluster with a Slurm on it):

    python bench/sbcast.py --nodes 4,8 --rate 100mbit --size 64M --repeat 3

For each node count, in one batch job per repeat (both tools run from the job script,
where users run them, on the same allocation, one after the other): the wall time of
``sbcast -f SRC DEST`` and of ``mpistage-sbcast -f SRC DEST`` (start-up, MPI
initialization and verification included), each held against one MPI point-to-point
transfer of the same bytes between two hosts (the physical bound of moving the file
once).  Every copy is checked on every node after every run.  Prints a Markdown table
(medians) and writes it to ``--out`` too when given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from mpistage.cluster import EmulatedCluster, teardown
from mpistage.cluster.launch import mpi_environment
from mpistage.cluster.runs import point_to_point
from mpistage.cluster.slurm import SlurmSettings
from mpistage.digest import file_digest
from mpistage.samples import write_random_file
from mpistage.units import format_bytes, parse_size

NAME = "sbbench"

JOB = """#!/bin/bash
set -e
now() {{ date +%s.%N; }}
t0=$(now); sbcast -f {src} /scratch/sbcast.bin; t1=$(now)
awk -v a="$t0" -v b="$t1" 'BEGIN {{ printf "sbcast %.3f\\n", b - a }}'
t0=$(now); mpistage-sbcast -f {src} /scratch/mpistage.bin -- -q; t1=$(now)
awk -v a="$t0" -v b="$t1" 'BEGIN {{ printf "mpistage-sbcast %.3f\\n", b - a }}'
"""


def one_job(cluster: EmulatedCluster, nodes: int, src: Path, work: Path) -> dict[str, float]:
    """Both tools in one batch job on ``nodes`` nodes; every copy checked."""
    script = work / "job.sh"
    script.write_text(JOB.format(src=src))
    output = work / "job.out"
    output.unlink(missing_ok=True)
    run = cluster.run(0, ["sbatch", "--wait", f"--nodes={nodes}", f"--output={output}",
                          str(script)], env=mpi_environment(), capture_output=True, text=True,
                      timeout=1800)
    text = output.read_text() if output.exists() else ""
    if run.returncode != 0:
        raise SystemExit(f"job failed (exit {run.returncode}): {run.stderr.strip()}\n{text}")
    times = {name: float(value) for name, value in
             (line.split() for line in text.splitlines() if line.startswith(("sbcast ", "mpistage-sbcast ")))}
    digest = file_digest(src)
    for i in range(nodes):
        for copy in ("sbcast.bin", "mpistage.bin"):
            path = cluster.scratch_dir(i) / copy
            if not path.exists() or file_digest(path) != digest:
                raise SystemExit(f"{copy} on host {i} is missing or differs from the source")
            path.unlink()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="4,8", help="node counts (default 4,8)")
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--size", type=parse_size, default=parse_size("64M"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.nodes.split(",")]
    teardown(NAME)
    lines = [
        f"sbcast vs mpistage-sbcast: {format_bytes(args.size)} at {args.rate} per link, "
        f"from a batch job; median of {args.repeat}",
        "",
        "| nodes | point-to-point | sbcast | × p2p | mpistage-sbcast | × p2p | sbcast / mpistage |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="mpistage-sbcast-bench-") as tmp:
        work = Path(tmp)
        src = work / "input.bin"
        write_random_file(src, args.size)
        with EmulatedCluster(hosts=max(counts), rate=args.rate, name=NAME,
                             slurm=SlurmSettings()) as cluster:
            for nodes in counts:
                p2p = statistics.median(point_to_point(cluster, args.size)
                                        for _ in range(args.repeat))
                runs = [one_job(cluster, nodes, src, work) for _ in range(args.repeat)]
                sb = statistics.median(r["sbcast"] for r in runs)
                ms = statistics.median(r["mpistage-sbcast"] for r in runs)
                lines.append(f"| {nodes} | {p2p:.2f} s | {sb:.2f} s | {sb / p2p:.2f} | "
                             f"{ms:.2f} s | {ms / p2p:.2f} | {sb / ms:.2f}× |")
                print(lines[-1], file=sys.stderr, flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
