"""Reading the source on one node against every node reading its share, on a shared
file system of the emulated cluster (``--shared-fs``: sshfs from a storage host whose
link gives one client at most C and all of them together at most A).

As root (it brings up and tears down its own cluster):

    python bench/shared_read.py --hosts 8 --rate 100mbit --size 64M \\
        --client-rate 25mbit --shared-rate 400mbit --fast-client-rate 1gbit --fast-rate 50mbit \\
        --repeat 3 --dbcast /path/to/dbcast --out bench/results/shared-read

For each setting of the file system (C < the link rate, where one reader caps the
staging; then C ≥ the link rate, where it does not: slower links, since one sshfs client
on this machine reads ~75 Mbit/s at most), side by side in one run: the read
rates as measured (one host alone, every host at once), one point-to-point transfer of
the file between two hosts (the link's bound), and the whole command's time with
``--read-by root``, ``--read-by all`` and the default (``auto``), every copy checked on
every host after every run; the bound of any staging is max(S/A, S/B) (every byte must
leave the storage and enter each node).  Optionally mpifileutils' ``dbcast`` (built
from its sources against this Python's MPI, the PyPI wheel, ``--dbcast BINARY``: Debian's
MPICH uses UCX, which moved the bytes between the emulated hosts through shared memory,
past the shaped links), which needs two ranks per node.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mpistage.cluster import EmulatedCluster, teardown
from mpistage.cluster.launch import mpi_environment, mpiexec_command
from mpistage.cluster.rates import format_link_rate
from mpistage.cluster.runs import point_to_point, stage_with_report
from mpistage.cluster.shared_fs import SharedFS
from mpistage.cluster.storage import measure_reads, reshape
from mpistage.digest import file_digest
from mpistage.samples import write_random_file
from mpistage.units import format_bytes, parse_size

NAME = "mstshr"
MODES = ("root", "all", "auto")


def check_copies(cluster: EmulatedCluster, name: str, digest: str) -> None:
    for i in range(cluster.hosts):
        path = cluster.scratch_dir(i) / name
        if not path.exists() or file_digest(path) != digest:
            raise SystemExit(f"{name} on host {i} is missing or differs from the source")
        path.unlink()


def stage(cluster: EmulatedCluster, src: Path, mode: str, digest: str) -> dict[str, Any]:
    run, report = stage_with_report(cluster, src, ["--read-by", mode], timeout=1800)
    if run.returncode != 0 or report is None or not report["ok"]:
        raise SystemExit(f"--read-by {mode} failed: {run.stderr.strip()}")
    check_copies(cluster, src.name, digest)
    prediction = report.get("prediction") or {}
    return {"mode": mode, "seconds": report["elapsed"], "transfer": report["transfer_seconds"],
            "algorithm": report["algorithm"], "chunk": report["chunk_size"],
            "predicted": prediction.get("predicted")}


def dbcast(cluster: EmulatedCluster, binary: str, src: Path, digest: str) -> float:
    """mpifileutils' dbcast, two ranks per host, its whole command timed."""
    env = {"LD_LIBRARY_PATH": str(Path(binary).parent.parent / "lib")}
    # built against the MPI this Python's mpiexec launches (the PyPI wheel, over TCP
    # between the hosts: Debian's MPICH uses UCX, which shares memory between them)
    argv = mpiexec_command(cluster, [binary, "--size", "1MB", str(src),
                                     f"{cluster.scratch}/{src.name}"], ppn=2)
    started = time.perf_counter()
    run = subprocess.run(argv, env=mpi_environment(env), capture_output=True, text=True,
                         timeout=1800)
    seconds = time.perf_counter() - started
    if run.returncode != 0 or "Bcast complete" not in run.stdout:  # it exits 0 on some errors
        print(f"dbcast failed: {run.stdout[-1000:]} {run.stderr.strip()[-1000:]}",
              file=sys.stderr)
        return float("nan")
    check_copies(cluster, src.name, digest)
    return seconds


def one_setting(cluster: EmulatedCluster, shared: SharedFS, rate: str, src: Path,
                digest: str, args: argparse.Namespace) -> dict[str, Any]:
    reshape(cluster, shared)
    for i in range(cluster.hosts):
        cluster.set_rate(i, rate)
    p2p = statistics.median(point_to_point(cluster, args.size) for _ in range(args.repeat))
    alone, together = measure_reads(cluster)
    runs = {mode: [stage(cluster, src, mode, digest) for _ in range(args.repeat)]
            for mode in MODES}
    if args.dbcast:
        runs["dbcast"] = [{"mode": "dbcast", "seconds": dbcast(cluster, args.dbcast, src, digest)}
                          for _ in range(args.repeat)]
    return {"client_rate": shared.client_rate, "shared_rate": shared.total_rate,
            "rate": rate, "p2p": p2p,
            "measured_alone": alone, "measured_together": together, "runs": runs}


def render(record: dict[str, Any]) -> str:
    size, hosts = record["size"], record["hosts"]
    dbcast_too = any("dbcast" in s["runs"] for s in record["settings"])
    lines = [f"{format_bytes(size)} to {hosts} hosts, the source on the cluster's shared file "
             f"system (sshfs from a storage host: C per client, A in all); seconds of the "
             f"whole command (start-up included; transfer alone in brackets), median of "
             f"{record['repeat']} runs; the bound: one point-to-point copy of the file "
             f"(S/B) or S/A, whichever is longer", ""]
    lines += ["| links | C / A set (measured) | bound | read by root | read by all | × bound |"
              " root / all | default (auto) | auto's choice |" + (" dbcast |" if dbcast_too else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|" if dbcast_too else "")]
    for s in record["settings"]:
        bound = max(size * 8 / s["measured_together"], s["p2p"])
        med = {m: statistics.median(r["seconds"] for r in runs) for m, runs in s["runs"].items()}
        moved = {m: statistics.median(r.get("transfer", r["seconds"]) for r in runs)
                 for m, runs in s["runs"].items()}
        auto = s["runs"]["auto"]
        choices = sorted({f"{r['algorithm']} {format_bytes(r['chunk'])}" for r in auto})
        row = (f"| {s['rate']} | {format_link_rate(s['client_rate'])} / "
               f"{format_link_rate(s['shared_rate'])} ({s['measured_alone'] / 1e6:.0f} / "
               f"{s['measured_together'] / 1e6:.0f} Mbit/s) | {bound:.2f} s | "
               f"{med['root']:.2f} s ({moved['root']:.2f}) | "
               f"{med['all']:.2f} s ({moved['all']:.2f}) | {med['all'] / bound:.2f} "
               f"({moved['all'] / bound:.2f}) | {med['root'] / med['all']:.2f}× | "
               f"{med['auto']:.2f} s | {', '.join(choices)} |")
        if dbcast_too:
            row += f" {med['dbcast']:.2f} s |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--size", type=parse_size, default=parse_size("64M"))
    parser.add_argument("--client-rate", default="25mbit")
    parser.add_argument("--shared-rate", default="400mbit")
    parser.add_argument("--fast-client-rate", default="1gbit",
                        help="the second setting's C, more than its links' rate ('' for none)")
    parser.add_argument("--fast-rate", default="50mbit",
                        help="the second setting's links (one sshfs client on a 2-core "
                        "machine reads ~75 Mbit/s at most: slower links make C ≥ B)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dbcast", help="mpifileutils' dbcast binary, to run beside")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.json")
    args = parser.parse_args(argv)
    teardown(NAME)
    settings = [(SharedFS.of(args.client_rate, args.shared_rate), args.rate)]
    if args.fast_client_rate:
        settings.append((SharedFS.of(args.fast_client_rate, args.shared_rate), args.fast_rate))
    record: dict[str, Any] = {"hosts": args.hosts, "rate": args.rate, "size": args.size,
                              "repeat": args.repeat, "settings": []}
    with EmulatedCluster(hosts=args.hosts, rate=args.rate, name=NAME,
                         shared_fs=settings[0][0]) as cluster:
        src = cluster.export_dir / "input.bin"
        write_random_file(src, args.size)
        digest = file_digest(src)
        shared_src = Path(settings[0][0].path) / src.name
        for shared, rate in settings:
            record["settings"].append(one_setting(cluster, shared, rate, shared_src, digest,
                                                  args))
            print(render(record), file=sys.stderr, flush=True)
    table = render(record)
    print(table)
    if args.out:
        args.out.with_suffix(".md").write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
