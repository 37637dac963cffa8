"""Where a relaying rank's CPU goes: mpistage against the minimal MPI relays, under ``perf``.

    python bench/cpu_split.py                 # as root, on a quiet machine (about 3 minutes)
    python bench/cpu_split.py --rounds 3 --chunk 128K

On an emulated cluster (8 hosts, 100 Mbit/s, 64 MiB by default), each round records the
whole machine (``perf record -a -g``) around one run of each of mpistage (``-c CHUNK``),
the minimal MPI relay (``mpistage.cluster.mpirelay``) and that relay writing its copy
(``--write``), and sorts every sample of their ranks by where it fell:

- ``softirq``: the kernel's packet work (the emulated links' bridge, shaping and TCP
  stack), which runs in whatever task the CPU happened to be in: the tick charges it to
  that rank's system time (this kernel has no ``IRQ_TIME_ACCOUNTING``), so a busier rank
  is charged more of every host's packets;
- ``kernel``: the rest of the kernel (the rank's own system calls: sends and receives,
  writes, waits, page faults);
- ``interpreter`` (``libpython``), ``MPI`` (libmpi, libfabric, UCX, mpi4py's module) and
  ``other`` (libc, xxhash, the loader).

Prints a table per rank (the samples of all ranks over the rank count, in CPU seconds at
the sampling rate) and writes ``bench/results/cpu_split.md``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpistage.cluster import EmulatedCluster  # noqa: E402
from mpistage.cluster.launch import mpi_environment  # noqa: E402
from mpistage.cluster.runs import mpistage_command  # noqa: E402
from mpistage.samples import write_random_file  # noqa: E402
from mpistage.units import format_bytes, parse_size  # noqa: E402

HZ = 999
PARTS = ("softirq", "kernel", "interpreter", "MPI", "other")
SOFTIRQ = ("handle_softirqs", "__do_softirq", "net_rx_action", "net_tx_action")
MPI_LIBS = ("libmpi", "libfabric", "libucp", "libuct", "libucs", "libucm", "MPI.")


def classify(stack: list[tuple[str, str]]) -> str:
    """The part one sample counts to; ``stack``: (symbol, object) pairs, leaf first."""
    if any(symbol.startswith(SOFTIRQ) for symbol, _ in stack):
        return "softirq"
    symbol, where = stack[0]
    if "kernel" in where:
        return "kernel"
    if "libpython" in where:
        return "interpreter"
    if any(name in where for name in MPI_LIBS):
        return "MPI"
    return "other"


def split(data: Path, comm: str) -> collections.Counter[str]:
    """Samples of the tasks named ``comm`` in ``data`` by :data:`PARTS`."""
    script = subprocess.run(["perf", "script", "-i", str(data), "--comms", comm,
                             "-F", "comm,tid,ip,sym,dso"], capture_output=True, text=True,
                            check=True).stdout
    return count(script)


def count(script: str) -> collections.Counter[str]:
    """``perf script -F comm,tid,ip,sym,dso`` output (a header line per sample, then its
    frames, leaf first, as ``ADDRESS SYMBOL (OBJECT)``) by :data:`PARTS`."""
    counts: collections.Counter[str] = collections.Counter()
    for block in script.split("\n\n"):
        lines = [line.split() for line in block.strip().splitlines()[1:]]
        stack = [(words[1] if len(words) > 2 else "?", words[-1]) for words in lines if words]
        if stack:
            counts[classify(stack)] += 1
    return counts


def recorded(cluster: EmulatedCluster, argv: list[str], data: Path) -> None:
    """``argv`` on every host of ``cluster``, the whole machine under ``perf record``."""
    command = ["perf", "record", "-a", "-g", "-F", str(HZ), "-o", str(data), "--",
               *cluster.mpiexec_command(argv)]
    run = subprocess.run(command, env=mpi_environment(None), capture_output=True, text=True,
                         timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"cpu_split: {' '.join(argv[:4])}… failed: {run.stderr[-500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--size", default="64M")
    parser.add_argument("--chunk", default="256K")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("cpu_split: needs perf (apt-get install linux-perf)", file=sys.stderr)
        return 2
    size, chunk = parse_size(args.size), parse_size(args.chunk)
    work = Path(tempfile.mkdtemp(prefix="cpu-split-"))
    totals: dict[str, list[collections.Counter[str]]] = collections.defaultdict(list)
    with EmulatedCluster(hosts=args.hosts, rate=args.rate, name="cpusplit") as cluster:
        src = work / "src.bin"
        write_random_file(src, size, seed=3)
        relay = [sys.executable, "-m", "mpistage.cluster.mpirelay", str(size), str(chunk)]
        runs = {"mpistage": ([*mpistage_command(work / "report.json", ["-c", args.chunk],
                                                src, cluster.scratch)], "python"),
                "MPI relay": (relay, "python"),
                "MPI relay, writing": ([*relay, "--write", cluster.scratch], "python")}
        for round_ in range(args.rounds):
            for name, (argv, comm) in runs.items():
                data = work / "perf.data"
                recorded(cluster, argv, data)
                counts = split(data, comm)
                totals[name].append(counts)
                for host in range(args.hosts):
                    (cluster.scratch_dir(host) / src.name).unlink(missing_ok=True)
                print(f"round {round_ + 1}, {name}: " + ", ".join(
                    f"{part} {counts[part] / HZ / args.hosts:.3f} s" for part in PARTS),
                    flush=True)
    shutil.rmtree(work, ignore_errors=True)
    lines = [f"CPU per rank by where it fell, {args.hosts} hosts at {args.rate}, "
             f"{format_bytes(size)} in {format_bytes(chunk)} chunks (`perf record -a -g`, "
             f"{HZ} Hz, all ranks' samples over {args.hosts}; medians of {args.rounds} rounds; "
             "`python bench/cpu_split.py`)", "",
             "| run | " + " | ".join(PARTS) + " | all | all but softirq |",
             "|---|" + "---|" * (len(PARTS) + 2)]
    for name, rounds in totals.items():
        per = {part: statistics.median(c[part] for c in rounds) / HZ / args.hosts
               for part in PARTS}
        whole = statistics.median(sum(c.values()) for c in rounds) / HZ / args.hosts
        rest = statistics.median(sum(c.values()) - c["softirq"] for c in rounds) / HZ / args.hosts
        lines.append(f"| {name} | " + " | ".join(f"{per[p]:.3f} s" for p in PARTS)
                     + f" | {whole:.3f} s | {rest:.3f} s |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_split.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
