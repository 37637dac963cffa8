"""``python -m mpistage.cluster``: an emulated cluster from the command line.

    python -m mpistage.cluster try --hosts 8 --rate 100mbit --size 64M   # up, stage, check, down
    python -m mpistage.cluster run --hosts 8 --rate 100mbit -- mpistage in.dat /scratch
    python -m mpistage.cluster up --hosts 8 --rate 100mbit --slow 3=10mbit --small-scratch 5=1M
    python -m mpistage.cluster up --hosts 4 --rate 100mbit --slurm    # and a Slurm on it
    python -m mpistage.cluster up --hosts 8 --rate 100mbit --shared-fs --client-rate 25mbit \
        --shared-rate 400mbit                            # and a file system all hosts mount
    python -m mpistage.cluster exec 0 -- sbatch --nodes=4 job.sh
    python -m mpistage.cluster mpiexec -- mpistage in.dat /scratch
    python -m mpistage.cluster exec 3 -- ls -l /scratch
    python -m mpistage.cluster probe 0 1
    python -m mpistage.cluster link 3 down
    python -m mpistage.cluster down
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..digest import file_digest
from ..samples import write_random_file
from ..units import format_bytes, parse_size
from .cluster import EmulatedCluster
from .hosts import ClusterError
from .launch import mpi_environment
from .layout import HostSpec
from .rates import format_link_rate, parse_rate
from .runs import stage_with_report
from .shared_fs import SharedFS
from .slurm import PARTITION, SlurmError, SlurmSettings
from .system import interrupts_as_exceptions, teardown


def _override(text: str) -> tuple[int, str]:
    host, sep, value = text.partition("=")
    if not sep or not host.isdigit() or not value:
        raise argparse.ArgumentTypeError(f"expected HOST=VALUE with a host index, got {text!r}")
    return int(host), value


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, default=8, help="number of hosts (default 8)")
    parser.add_argument("--rate", type=_rate, default=parse_rate("1gbit"),
                        help="link rate of every host, both directions (default 1gbit; "
                        "100mbit matches the Ka paper)")
    parser.add_argument("--scratch", default="/scratch",
                        help="path of every host's private scratch (default /scratch)")
    parser.add_argument("--scratch-size", help="size limit of every host's scratch tmpfs")
    parser.add_argument("--slow", type=_override, action="append", default=[],
                        metavar="HOST=RATE", help="a straggler: host index with a slower link")
    parser.add_argument("--small-scratch", type=_override, action="append", default=[],
                        metavar="HOST=SIZE", help="a host whose scratch holds only SIZE")
    parser.add_argument("--slurm", action="store_true",
                        help="also start a Slurm: munge, slurmctld on host 0, a slurmd on every "
                        "host, one partition; then 'exec 0 -- sbatch ...' (needs the Debian "
                        "packages slurmctld slurmd slurm-client munge)")
    parser.add_argument("--prolog", metavar="SCRIPT",
                        help="with --slurm: slurm.conf Prolog (PrologFlags=Alloc)")
    parser.add_argument("--epilog", metavar="SCRIPT", help="with --slurm: slurm.conf Epilog")
    parser.add_argument("--shared-fs", metavar="PATH", nargs="?", const="/shared",
                        help="also a storage host serving a directory over SFTP, mounted with "
                        "sshfs at PATH on every host (default /shared; needs the Debian "
                        "packages sshfs socat openssh-sftp-server)")
    parser.add_argument("--client-rate", type=_rate, default=parse_rate("1gbit"),
                        help="with --shared-fs: one host's read rate at most (default 1gbit)")
    parser.add_argument("--shared-rate", type=_rate, default=parse_rate("10gbit"),
                        help="with --shared-fs: all hosts' read rate together at most "
                        "(default 10gbit)")
    parser.add_argument("--kill-wait", type=int, default=30, metavar="SECONDS",
                        help="with --slurm: seconds from SIGTERM to SIGKILL (default 30)")


def _cluster_from(args: argparse.Namespace) -> EmulatedCluster:
    overrides: dict[int, HostSpec] = {}
    for host, rate in args.slow:
        overrides[host] = HostSpec(rate=parse_rate(rate))
    for host, size in args.small_scratch:
        previous = overrides.get(host, HostSpec())
        overrides[host] = HostSpec(rate=previous.rate, scratch_size=size)
    slurm = None
    if args.slurm:
        slurm = SlurmSettings(
            prolog=os.path.abspath(args.prolog) if args.prolog else None,
            epilog=os.path.abspath(args.epilog) if args.epilog else None,
            kill_wait=args.kill_wait,
        )
    elif args.prolog or args.epilog:
        raise ClusterError("--prolog and --epilog need --slurm")
    shared = (SharedFS(args.client_rate, args.shared_rate, args.shared_fs)
              if args.shared_fs else None)
    return EmulatedCluster(hosts=args.hosts, rate=args.rate, name=args.name,
                           scratch=args.scratch, scratch_size=args.scratch_size,
                           overrides=overrides, slurm=slurm, shared_fs=shared)


def _host(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mpistage.cluster",
        description="An emulated cluster on this machine: hosts as network namespaces with "
        "shaped links, private scratch and their own host names; MPI across them. Needs root.",
        epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", default="mpistage",
                        help="cluster name, the prefix of everything it creates (default mpistage)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="bring a cluster up and leave it up")
    _shape_arguments(p)
    sub.add_parser("down", help="remove everything the cluster created (idempotent)")
    sub.add_parser("status", help="show the cluster's hosts")

    p = sub.add_parser("run", help="bring a cluster up, run CMD on every host with mpiexec, tear down")
    _shape_arguments(p)
    p.add_argument("--ppn", type=int, default=1, help="ranks per host (default 1)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")

    p = sub.add_parser("try", help="bring a cluster up, stage a sample with every algorithm "
                       "next to one point-to-point transfer, check every copy, tear down")
    _shape_arguments(p)
    p.add_argument("--size", type=parse_size, default=parse_size("64M"))
    p.add_argument("--chunk-size", default="1M")
    p.add_argument("--algorithms", default="chain,binomial,bcast")
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the median is shown")

    p = sub.add_parser("mpiexec", help="run CMD under mpiexec on the cluster that is up")
    p.add_argument("--ppn", type=int, default=1, help="ranks per host (default 1)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")

    p = sub.add_parser("exec", help="run CMD on one host")
    p.add_argument("host", type=_host)
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")

    p = sub.add_parser("probe", help="measure TCP throughput between two hosts")
    p.add_argument("sender", type=_host, nargs="?", default=0)
    p.add_argument("receiver", type=_host, nargs="?", default=1)
    p.add_argument("--seconds", type=float, default=2.0)

    p = sub.add_parser("link", help="take a host's link down or bring it up")
    p.add_argument("host", type=_host)
    p.add_argument("state", choices=("up", "down"))

    p = sub.add_parser("rate", help="change a host's link rate")
    p.add_argument("host", type=_host)
    p.add_argument("rate", type=_rate)
    return parser


def _command(argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ClusterError("no command given (put it after --)")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="mpistage.cluster: %(message)s")
    try:
        with interrupts_as_exceptions():
            return _dispatch(args)
    except (ClusterError, SlurmError) as exc:
        print(f"mpistage.cluster: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mpistage.cluster: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        cluster = _cluster_from(args).up()
        _print_status(cluster)
        return 0
    if args.command == "down":
        for item in teardown(args.name):
            print(f"removed {item}")
        return 0
    if args.command in ("run", "try"):
        with _cluster_from(args) as cluster:
            if args.command == "run":
                return cluster.mpiexec(_command(args.argv), ppn=args.ppn).returncode
            return try_mpistage(cluster, args.size, args.chunk_size, args.algorithms.split(","),
                                repeat=args.repeat)
    cluster = EmulatedCluster.attach(args.name)
    if args.command == "status":
        _print_status(cluster)
    elif args.command == "mpiexec":
        return cluster.mpiexec(_command(args.argv), ppn=args.ppn).returncode
    elif args.command == "exec":
        # The MPI settings too: a command may be sbatch or srun starting MPI ranks.
        return cluster.run(args.host, _command(args.argv), env=mpi_environment()).returncode
    elif args.command == "probe":
        bits = cluster.probe(args.sender, args.receiver, args.seconds)
        print(f"{cluster.host(args.sender)} -> {cluster.host(args.receiver)}: "
              f"{bits / 1e6:.1f} Mbit/s (link {format_link_rate(cluster.rate_of(args.receiver))})")
    elif args.command == "link":
        cluster.set_link(args.host, args.state == "up")
    elif args.command == "rate":
        cluster.set_rate(args.host, args.rate)
    return 0


def _print_status(cluster: EmulatedCluster) -> None:
    print(f"cluster {cluster.name}: {cluster.hosts} hosts, scratch at {cluster.scratch} on each")
    for i, host in enumerate(cluster.hostnames):
        print(f"  {i:>2} {host:<16} {cluster.address(i):<13} {format_link_rate(cluster.rate_of(i)):>8}"
              f"  scratch {cluster.scratch_dir(i)}")
    if cluster.shared_fs is not None:
        print(f"shared file system at {cluster.shared_fs.describe()}, served by "
              f"{cluster.storage} from {cluster.export_dir}")
    if cluster.slurm is not None:
        print(f"Slurm: partition {PARTITION} with every host, slurmctld on {cluster.hostnames[0]}; "
              f"client commands: python -m mpistage.cluster exec 0 -- sinfo")


def try_mpistage(cluster: EmulatedCluster, size: int, chunk_size: str,
                 algorithms: Sequence[str], repeat: int = 1) -> int:
    """Stage a random sample with each algorithm; print times next to one p2p transfer.

    Every row is the median of ``repeat`` runs; every copy is checked after every run.
    """
    python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="mpistage-try-"))
    failures = 0
    try:
        sample = work / "sample.bin"
        write_random_file(sample, size)
        digest = file_digest(sample)
        link = cluster.rate_of(0)
        print(f"{cluster.hosts} hosts at {format_link_rate(link)}, {format_bytes(size)} sample, "
              f"chunk {chunk_size}")
        probe = cluster.probe(0, 1)
        print(f"TCP probe h0 -> h1: {probe / 1e6:.1f} Mbit/s")
        ideal = size * 8 / link
        p2p_runs = []
        for _ in range(repeat):
            p2p = cluster.mpiexec([python, "-m", "mpistage.cluster.p2p", str(size)],
                                  hosts=[0, 1], capture_output=True, text=True, timeout=600)
            if p2p.returncode != 0:
                raise ClusterError(f"point-to-point run failed: {p2p.stderr.strip()}")
            p2p_runs.append(float(p2p.stdout.split()[-1]))
        p2p_seconds = statistics.median(p2p_runs)
        print()
        print(f"| run (median of {repeat}) | transfer | × p2p | whole command | copies verified |")
        print("|---|---|---|---|---|")
        print(f"| ideal S·8/rate | {ideal:.2f} s | {ideal / p2p_seconds:.2f} | | |")
        print(f"| MPI point-to-point h0 → h1 | {p2p_seconds:.2f} s | 1.00 | | |")
        for algorithm in algorithms:
            transfers, totals, verified = [], [], 0
            for _ in range(repeat):
                run, report = stage_with_report(
                    cluster, sample, ["--algorithm", algorithm, "--chunk-size", chunk_size])
                good = sum(
                    (cluster.scratch_dir(i) / sample.name).exists()
                    and file_digest(cluster.scratch_dir(i) / sample.name) == digest
                    for i in range(cluster.hosts)
                )
                for i in range(cluster.hosts):
                    (cluster.scratch_dir(i) / sample.name).unlink(missing_ok=True)
                if run.returncode != 0 or report is None:
                    print(f"mpistage {algorithm} failed (exit {run.returncode}): "
                          f"{run.stderr.strip()[-300:]}", file=sys.stderr)
                    continue
                transfers.append(report["transfer_seconds"])
                totals.append(report["elapsed"])
                verified += good == cluster.hosts
            failures += verified != repeat
            if not transfers:
                print(f"| mpistage {algorithm} | failed | | | {verified}/{repeat} runs |")
                continue
            transfer = statistics.median(transfers)
            print(f"| mpistage {algorithm} | {transfer:.2f} s | {transfer / p2p_seconds:.2f} |"
                  f" {statistics.median(totals):.2f} s | {verified}/{repeat} runs, "
                  f"{cluster.hosts} hosts each |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
