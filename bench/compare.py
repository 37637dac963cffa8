"""Side-by-side benchmark: mpistage's algorithms vs MPI_Bcast, one point-to-point copy and cp.

Run under mpiexec, one rank per (emulated) node; every figure comes from the same run:

    mpiexec -n 4 python bench/compare.py --size 256M --dir /dev/shm

Rows:
  cp             one local copy of the file (tmpfs to tmpfs), rank 0 only
  p2p            one MPI Send/Recv of the same bytes, memory to memory, rank 0 to 1
                 (the physical bound of moving S bytes once)
  MPI_Bcast      one MPI_Bcast of the same bytes, memory to memory, to every rank
  naive          what a user writes in five lines: the root reads the whole file, one
                 MPI_Bcast, every rank writes it (no pipelining, no digest, no temp file)
  mpistage/ALG   the whole file-to-file staging to every node, digests checked

Each row is the median of ``--repeat`` runs after one warm-up; time is the slowest rank's
(``Barrier`` before, ``MPI.Wtime``, max-reduced).  Prints a Markdown table on rank 0 and,
with ``--json``, writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from mpi4py import MPI

import mpistage
from mpistage.samples import write_random_file
from mpistage.units import format_bytes, parse_size

COMM = MPI.COMM_WORLD


def timed(action: Callable[[], object]) -> float:
    """Seconds the slowest rank spent in ``action``."""
    COMM.Barrier()
    started = MPI.Wtime()
    action()
    return COMM.allreduce(MPI.Wtime() - started, op=MPI.MAX)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--dir", default="/dev/shm", help="where files go (tmpfs by default)")
    parser.add_argument("--chunk-sizes", default="4M",
                        help="comma-separated chunk sizes for the mpistage rows")
    parser.add_argument("--algorithms", default=",".join(mpistage.ALGORITHMS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="write the rows here (rank 0)")
    args = parser.parse_args()
    chunks = [parse_size(c) for c in args.chunk_sizes.split(",")]
    algorithms = args.algorithms.split(",")

    work = Path(COMM.bcast(
        os.path.join(args.dir, f"mpistage-bench-{os.getpid()}") if COMM.rank == 0 else None))
    if COMM.rank == 0:
        for node in range(COMM.size):
            (work / f"n{node}").mkdir(parents=True)
        write_random_file(work / "source.bin", args.size, seed=1)
    COMM.Barrier()
    source = work / "source.bin"
    payload = np.empty(args.size, dtype=np.uint8)
    payload[:] = 1 if COMM.rank == 0 else 0  # touch every page before timing

    def clean() -> None:
        if COMM.rank == 0:
            (work / "cp.bin").unlink(missing_ok=True)
        (work / f"n{COMM.rank}" / "source.bin").unlink(missing_ok=True)
        COMM.Barrier()

    def cp() -> None:
        if COMM.rank == 0:
            shutil.copyfile(source, work / "cp.bin")

    def p2p() -> None:
        if COMM.rank == 0 and COMM.size > 1:
            COMM.Send(payload, dest=1)
        elif COMM.rank == 1:
            COMM.Recv(payload, source=0)

    def bcast() -> None:
        COMM.Bcast(payload, root=0)

    def naive() -> None:
        if COMM.rank == 0:
            with open(source, "rb") as src:
                src.readinto(payload)
        COMM.Bcast(payload, root=0)
        with open(work / f"n{COMM.rank}" / "source.bin", "wb") as out:
            out.write(payload)

    def staged(algorithm: str, chunk: int) -> Callable[[], None]:
        def run() -> None:
            report = mpistage.stage(source, str(work / "n{node}"), comm=COMM,
                                    algorithm=algorithm, chunk_size=chunk, ranks_as_nodes=True)
            if not report.ok:
                raise SystemExit(f"staging failed: {[n.error for n in report.failed]}")
        return run

    methods: list[tuple[str, int | None, Callable[[], object]]] = [
        ("cp", None, cp), ("p2p", None, p2p), ("MPI_Bcast", None, bcast),
        ("naive", None, naive),
    ]
    methods += [(f"mpistage/{a}", c, staged(a, c)) for a in algorithms for c in chunks]

    rows = []
    try:
        for name, chunk, action in methods:
            action()  # warm-up: page cache, MPI connections, buffers
            clean()
            times = []
            for _ in range(args.repeat):
                times.append(timed(action))
                clean()
            rows.append({"method": name, "chunk_size": chunk, "seconds": statistics.median(times),
                         "runs": times})
    finally:
        COMM.Barrier()
        if COMM.rank == 0:
            shutil.rmtree(work, ignore_errors=True)

    if COMM.rank == 0:
        bound = next(r["seconds"] for r in rows if r["method"] == "p2p")
        copy = next(r["seconds"] for r in rows if r["method"] == "cp")
        print(f"{format_bytes(args.size)} to {COMM.size} nodes (one rank each) in {args.dir}; "
              f"median of {args.repeat}; MPI: {MPI.Get_library_version().splitlines()[0].strip()}")
        print()
        print("| method | chunk | time | per node | × p2p | × cp |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            chunk = format_bytes(r["chunk_size"]) if r["chunk_size"] else "-"
            rate = args.size / r["seconds"] / (1 << 20)
            print(f"| {r['method']} | {chunk} | {r['seconds']:.3f} s | {rate:.0f} MiB/s"
                  f" | {r['seconds'] / bound:.2f} | {r['seconds'] / copy:.2f} |")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as out:
                json.dump({"size": args.size, "nodes": COMM.size, "dir": args.dir,
                           "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}, out, indent=2)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
