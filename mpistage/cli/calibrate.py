"""``mpistage calibrate``: parse, one library call, print on rank 0, save."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import MpistageError
from ..staging.calibration import DEFAULT_SIZES, calibrate
from ..units import format_bytes, parse_size
from .base import RankZeroParser


def build_parser(rank: int) -> argparse.ArgumentParser:
    parser = RankZeroParser(
        prog="mpistage calibrate",
        description="Measure the cost model's parameters between node leaders: per-message "
        "latency and bandwidth (ping-pong over a range of sizes), a histogram of round "
        "trips, the root's read bandwidth, each node's write bandwidth, and the engine's "
        "CPU per message and per byte (a sample staged by chain at two chunk sizes).",
        rank=rank,
    )
    parser.add_argument("--source", metavar="FILE", help="time the root's reads of this file")
    parser.add_argument("--dest", metavar="DIR",
                        help="time each node's writes in this directory ({node}, {host}, "
                        "{rank} allowed), and stage a sample through the engine there")
    parser.add_argument("-o", "--output", metavar="FILE.json", help="save the calibration here")
    parser.add_argument("--sample", type=parse_size, default=64 << 20, metavar="SIZE",
                        help="bytes read, written and staged (default 64M)")
    parser.add_argument("--sizes", default=",".join(format_bytes(s).replace(" ", "").replace(
                        "iB", "").replace(".0", "") for s in DEFAULT_SIZES),
                        help="ping-pong message sizes (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="ping-pongs per size and link")
    parser.add_argument("--round-trips", type=int, default=500,
                        help="1-byte round trips for the histogram (default 500)")
    parser.add_argument("--ranks-as-nodes", action="store_true",
                        help="count every rank as its own node")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    return parser


def main(argv: Sequence[str], started: float | None = None) -> int:
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.rank
    try:
        try:
            args = build_parser(rank).parse_args(argv)
        except SystemExit as exc:
            return int(exc.code or 0)
        sizes = tuple(parse_size(s) for s in args.sizes.replace("B", "").split(","))
        result = calibrate(source=args.source, dest=args.dest, sample=args.sample, sizes=sizes,
                           repeats=args.repeats, round_trips=args.round_trips,
                           ranks_as_nodes=args.ranks_as_nodes, started=started)
        if rank == 0:
            if args.output:
                result.save(args.output)
            if not args.quiet:
                print(result.summary(), flush=True)
        return 0
    except MpistageError as exc:
        if rank == 0:
            print(f"mpistage calibrate: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except BaseException:
        MPI.COMM_WORLD.Abort(1)
        raise
