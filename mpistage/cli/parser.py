"""The ``mpistage`` command's arguments: one parser, built in groups as ``--help`` shows them
(and as ``man/generate.sh`` writes the manual page from it)."""

from __future__ import annotations

import argparse

from .._version import __version__
from ..engine.algorithms import algorithm_help
from ..engine.pipeline import DEFAULT_DEPTH, DEFAULT_TIMEOUT
from ..errors import UsageError
from ..model.decide import AUTO
from ..plan import MAX_DEPTH, MIN_DEPTH, check_timeout
from ..staging.options import ALGORITHMS, CALIBRATION_ENV, DEFAULT_MEMORY, READ_BY
from ..units import format_bytes, parse_size
from .base import RankZeroParser

EPILOG = """\
DEST is like cp -r's: an existing directory receives DEST/basename(SRC); anything else is
the new path of the one SRC. Several SRCs, or --files-from, need a directory DEST.
SRC - reads standard input on rank 0 to its end (DEST names the file); --pipe CMD
takes DEST's place and feeds the stream to CMD on every node.
A directory is staged whole, in one pipelined stream: each file is checked against its
own xxh3 digest on every node, files a node already holds (same size and digest; with
--quick size and mtime) are not sent to it, and each directory appears at its final
path at once, complete. DEST may contain {node}, {host} and {rank}, expanded per node.
exit status: 0 every node holds a verified copy; 1 a node failed or the transfer
stalled (the summary names the nodes); 2 usage error or failed pre-flight check
(nothing was created); 128+N ended by signal N (143 SIGTERM, e.g. scancel or a
time limit; 130 SIGINT): every rank removed its temp file, no partial file is in place.

examples:
  mpiexec -n 8 mpistage /lustre/ref/genome.fa /scratch
  mpiexec -n 8 mpistage /lustre/datasets/imagenet-val /scratch/
  mpiexec -n 8 mpistage model.safetensors tokenizer.json config.json /scratch/model/
  mpiexec -n 8 mpistage --files-from shards.txt /scratch/data/
  mpiexec -n 8 mpistage --from-cmd 'tar c -C /lustre/env .' /scratch/env.tar
  tar c -C /lustre/env . | srun --input=0 mpistage - /scratch/env.tar
  mpiexec -n 8 mpistage --pipe 'tar x -C /scratch/env' env.tar
  mpiexec -n 8 mpistage --compress auto data.csv /scratch/
  mpiexec -n 8 mpistage --algorithm binomial --chunk-size 8M input.dat /scratch/in.dat
  mpiexec -n 8 mpistage --calibration cal.json input.dat /scratch
  mpiexec -n 8 mpistage --explain input.dat /scratch
  mpiexec -n 4 mpistage --ranks-as-nodes data.bin '/tmp/node{node}/'
  mpiexec -n 8 mpistage calibrate --dest /scratch --source input.dat -o cal.json
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected seconds") from None
    try:
        return check_timeout(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _memory(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(rank: int = 0) -> argparse.ArgumentParser:
    parser = RankZeroParser(
        prog="mpistage",
        description="Stage a file or a directory tree from one MPI rank to node-local "
        "storage on every node: one read, a pipelined chain or tree, a verified copy "
        "everywhere.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        rank=rank,
    )
    _add_what_and_where(parser)
    _add_plan_options(parser)
    _add_copy_options(parser)
    _add_output_options(parser)
    _add_tree_options(parser.add_argument_group(
        "trees (a directory, several sources, a file list)"))
    _add_stream_options(parser.add_argument_group("streams and compression"))
    return parser


def _add_what_and_where(parser: argparse.ArgumentParser) -> None:
    """SRC and DEST."""
    parser.add_argument("sources", metavar="SRC", nargs="*",
                        help="file or directory to read on the root rank; several go into "
                        "the directory DEST")
    parser.add_argument("dest", metavar="DEST", nargs="?",
                        help="directory or path on every node (none with --pipe)")


def _add_plan_options(parser: argparse.ArgumentParser) -> None:
    """How the bytes travel: the algorithm, the chunk, the model's inputs, the buffers."""
    parser.add_argument(
        "-a", "--algorithm", choices=(*ALGORITHMS, AUTO), default=AUTO,
        help=f"{algorithm_help()}; auto (the default): the one the cost model predicts "
        "fastest",
    )
    parser.add_argument(
        "--read-by", choices=READ_BY, default=AUTO,
        help="who reads the source: root, or all (every node reads its share of a file all "
        "of them mount, e.g. on Lustre or GPFS, and the shares go round a ring; needs the "
        "same file on every node); auto (the default): the model picks, where the source "
        "is on a network file system")
    parser.add_argument(
        "-c", "--chunk-size", type=_size, default=AUTO, metavar="SIZE",
        help="bytes per pipelined message, K/M/G suffixes, or auto (the default): the "
        "model's best within --memory",
    )
    parser.add_argument("--arity", type=int, default=2, metavar="K",
                        help="children per node of the tree algorithm (default 2)")
    parser.add_argument("--calibration", metavar="FILE.json",
                        help="model parameters from 'mpistage calibrate' (default: the file "
                        f"${CALIBRATION_ENV} names, else the root measures its first link "
                        "quickly, unless the file is at most 1 MiB and no link could change "
                        "the choice)")
    parser.add_argument("--explain", action="store_true",
                        help="print the predicted time of each algorithm, what bounds it "
                        "(link, CPU, read or write) and the choice, with the parameters "
                        "used (α, B, the CPU's o and ρ, ranks per core), without moving data")
    parser.add_argument("--root", type=int, default=0, metavar="RANK",
                        help="rank that reads SRC (default 0)")
    parser.add_argument("--ranks-as-nodes", action="store_true",
                        help="count every rank as its own node (emulate many nodes on one machine)")
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH, metavar="N",
                        help=f"chunk buffers per node leader, {MIN_DEPTH} to {MAX_DEPTH} "
                        f"(default {DEFAULT_DEPTH}; fewer if they exceed --memory)")
    parser.add_argument("--memory", type=_memory, default=DEFAULT_MEMORY, metavar="SIZE",
                        help="chunk buffer memory per node leader: depth × chunk stays "
                        "within it, and twotree's extra buffers too "
                        f"(default {format_bytes(DEFAULT_MEMORY)})")


def _add_copy_options(parser: argparse.ArgumentParser) -> None:
    """What each node's copy must satisfy, and what happens to what DEST holds."""
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="give up when the transfer makes no progress for this long; must "
                        f"exceed one chunk's time on the slowest link; at most a week "
                        f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--mkdir", action="store_true",
                        help="create DEST's directory where it is missing (a DEST ending in / "
                        "is the directory)")
    parser.add_argument("--skip-bad-nodes", action="store_true",
                        help="go on without nodes that fail the pre-flight check (no room, "
                        "not writable); they are reported and the exit status is 1")
    parser.add_argument("--quick", action="store_true",
                        help="an existing copy of the same size and mtime counts as up to "
                        "date (default: same size and xxh3 digest)")
    parser.add_argument("--remove-first", action="store_true",
                        help="delete an outdated copy before writing, for disks that cannot "
                        "hold the old and the new file together")
    parser.add_argument("--no-clobber", action="store_true",
                        help="fail on nodes where DEST already holds something other than an "
                        "up-to-date copy, instead of replacing it")
    parser.add_argument("--shared-dest", action="store_true",
                        help="where nodes' DEST is one file on a file system they share, "
                        "write it once and have the others check it (default: refuse)")
    parser.add_argument("--fsync", action="store_true",
                        help="flush each copy to its device before renaming it into place")
    parser.add_argument("--verify", action="store_true",
                        help="re-read each copy from disk and compare digests before the rename")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """What rank 0 says and writes."""
    parser.add_argument("--report", metavar="FILE.json",
                        help="write the full report (per-rank phase timings) as JSON")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="show progress on stderr even when it is not a terminal")
    shown.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging from every rank")
    parser.add_argument("--version", action="version", version=f"mpistage {__version__}")


def _add_tree_options(trees: argparse._ArgumentGroup) -> None:
    """Directories, several sources and file lists."""
    trees.add_argument("--files-from", metavar="FILE",
                       help="stage the paths listed in FILE (one a line), relative to --base "
                       "and kept relative under DEST")
    trees.add_argument("-0", "--from0", action="store_true",
                       help="the --files-from list is NUL-separated (find -print0)")
    trees.add_argument("--base", metavar="DIR",
                       help="directory the --files-from paths are relative to (default: the "
                       "list's directory)")
    trees.add_argument("--delete", action="store_true",
                       help="remove from DEST's copy of a directory what the source does not "
                       "hold (default: keep it, as cp does)")
    trees.add_argument("--skip-special", action="store_true",
                       help="leave out sockets, FIFOs and devices in a tree (reported) "
                       "instead of refusing it")


def _add_stream_options(streams: argparse._ArgumentGroup) -> None:
    """Standard input, a command's output, a command's input, and codecs."""
    streams.add_argument("--pipe", metavar="CMD",
                         help="instead of DEST: run CMD through the shell on every node "
                         "({node}, {host}, {rank} expanded) and write the stream to its "
                         "stdin; a node succeeds when every byte arrived, the digest "
                         "matched and CMD exited 0 (on a failure CMD is killed before its "
                         "input ends)")
    streams.add_argument("--from-cmd", metavar="CMD",
                         help="instead of SRC: run CMD through the shell on the root and "
                         "stage its standard output (a stream, like SRC -, but it works "
                         "under any launcher and a CMD that fails fails the run)")
    streams.add_argument("--compress", default="none", metavar="CODEC",
                         help="none (the default), zstd[:LEVEL] (default level 3), lz4, or "
                         "auto: the model weighs them on a sample of the source and "
                         "compresses only when it predicts a faster run; the root encodes "
                         "each chunk once, the nodes forward it encoded and decode their own")
    streams.add_argument("--expect-size", type=_memory, metavar="SIZE",
                         help="with - (standard input): its expected size, for the pre-flight "
                         "space check and the model's plan (default: no space check, planned "
                         "as 1 GiB)")
