"""``mpistage SRC DEST``: parse, validate, one library call, report, exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import interrupt, mpi_library
from ..engine import stuck
from ..engine.algorithms import SCHEDULES
from ..errors import MpistageError, ReportLost, RootLost, Stalled, UsageError
from ..model.choice import TIE
from ..sources.streams import FromCommand
from ..staging.explain import explain
from ..staging.run import stage
from ..units import format_bytes, format_seconds
from .parser import build_parser
from .progress import TerminalProgress

if TYPE_CHECKING:
    from mpi4py import MPI


def _speak(report, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    """Rank 0: the report file, the summary (or, with --quiet, just the failures)."""
    if args.report:
        try:
            report.write_json(args.report)
        except OSError as exc:
            print(f"mpistage: error: cannot write report {args.report}: {exc.strerror}",
                  file=sys.stderr)
    if not args.quiet:
        print(report.summary(), flush=True)
    elif not report.ok:
        if report.stall:
            print(f"mpistage: {report.stall}", file=sys.stderr)
        for node in report.failed:
            print(f"mpistage: node {node.index} ({node.host}): {node.status}: {node.error}",
                  file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()


#: Seconds rank 0 leaves the launcher to forward what it printed before it ends the job:
#: hydra's proxy, told to kill its processes, may drop what is still in their pipes (a
#: randomised kill, seed 3215513472, run 7: the report file written, the summary lost).
OUTPUT_DRAIN = 0.5


#: Seconds ``MPI_Abort`` may take before this process ends itself: after a peer died,
#: MPICH's OFI transport was seen spinning inside it for good (mpistage.engine.stuck).
ABORT_GRACE = 5.0


def _abort(comm, code: int) -> None:  # type: ignore[no-untyped-def]
    """``MPI_Abort``, or, if MPI does not end the process within :data:`ABORT_GRACE`,
    this process's own end (temp files removed, exit status 1)."""
    with interrupt.deadline(ABORT_GRACE, None):
        comm.Abort(code)


def _abort_after_output(comm, code: int) -> None:  # type: ignore[no-untyped-def]
    """``MPI_Abort`` once what this rank printed has had the time to reach the launcher."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(OUTPUT_DRAIN)
    _abort(comm, code)


def _end_without_the_lost(comm, rank: int, code: int) -> None:  # type: ignore[no-untyped-def]
    """End a job some of whose ranks are gone.  MPICH: rank 0 calls ``MPI_Abort`` (hydra
    then ends every process, also one on a host cut off), the others return.  Open MPI:
    every rank leaves at once, without ``MPI_Finalize``: after ``MPI_Abort``, or in
    ``MPI_Finalize``, with a process dead, its launcher (5.0, ``--with-ft ulfm``) waited
    until its own time limit (``MPIEXEC_TIMEOUT``, 120 s in the tests) before it ended."""
    if mpi_library.family() == "openmpi":
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(OUTPUT_DRAIN)
        os._exit(code)
    if rank == 0:
        _abort_after_output(comm, code)


def describe_prediction(prediction) -> str:  # type: ignore[no-untyped-def]
    """The --explain table: every algorithm's best chunk and predicted time, the choice
    first, then the others fastest first.  The choice can trail the fastest by up to
    ``choice.TIE`` (a tie, won by the simpler schedule), or more where the fastest must
    win by its schedule's ``auto_margin`` (twotree, ring); its line then says so."""
    if prediction is None:
        return "mpistage --explain: every node already holds the file; nothing would be sent"
    p = prediction.parameters
    rates = ", ".join(
        f"{name} {'-' if value == float('inf') else format_bytes(value) + '/s'}"
        for name, value in (("B", p.bandwidth), ("R", p.read_bandwidth), ("W", p.write_bandwidth))
    ) + ("" if p.shared_read_bandwidth == float("inf")
         else f", A {format_bytes(p.shared_read_bandwidth)}/s (every node reading at once)")
    cpu = (f"; CPU o {format_seconds(p.overhead)} per message, "
           f"{format_bytes(p.cpu_rate)}/s per message end, {p.share:g} ranks per core"
           if p.overhead else "")
    if prediction.cache_chunk:
        cpu += (f"; chunks of at most {format_bytes(prediction.cache_chunk)}, so every "
                "rank's buffers on one machine fit in its last-level cache")
    lines = [
        f"mpistage --explain: {prediction.nodes} nodes to serve; parameters from the "
        f"{prediction.source}: α {format_seconds(p.latency)}, {rates}{cpu}",
        f"  {'algorithm':<10} {'chunk':>10} {'predicted transfer':>19}  {'bound by':<8}",
    ]
    chosen = prediction.choice.algorithm
    predictions = prediction.choice.predictions
    bounds = prediction.choice.bounds or {}
    fastest_name = min(predictions, key=lambda name: predictions[name][1])
    fastest = predictions[fastest_name][1]
    for algorithm, (chunk, seconds) in sorted(
            predictions.items(), key=lambda item: (item[0] != chosen, item[1][1])):
        mark = ""
        if algorithm == chosen:
            mark = "  <- chosen"
            if seconds > fastest * (1 + TIE):  # the fastest did not win by its margin
                margin = SCHEDULES[fastest_name].auto_margin
                mark += (f" ({fastest_name} predicted {seconds / fastest - 1:.0%} faster, "
                         f"short of the {margin:.0%} it must win by)")
            elif seconds > fastest:
                mark += f" (within {TIE:.0%} of the fastest: a tie, won by the simpler schedule)"
        lines.append(f"  {algorithm:<10} {format_bytes(chunk):>10} {format_seconds(seconds):>19}"
                     f"  {bounds.get(algorithm, '-'):<8}{mark}")
    codecs = prediction.choice.codecs or {}
    if len(codecs) > 1:
        weighed = ", ".join(f"{name} {format_seconds(seconds)}"
                            for name, seconds in sorted(codecs.items(), key=lambda i: i[1]))
        lines.append(f"  compression weighed (best time with each): {weighed}; "
                     f"chosen: {prediction.choice.codec}")
    return "\n".join(lines)


def _process_age() -> float:
    """Seconds since this process started (Linux), so start-up includes MPI_Init."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


def _configure_logging(rank: int, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"mpistage[{rank}] %(name)s: %(message)s"))
    logger = logging.getLogger("mpistage")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if rank == 0 else logging.ERROR)


class _Speaker:
    """Says, on rank 0 only, which signal ended the run."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def announce(self, signum: int) -> None:
        if self.rank == 0:
            os.write(2, f"mpistage: interrupted by {interrupt.signal_name(signum)}: every rank "
                     "stopped and removed its unfinished copy; copies already in place are "
                     f"complete (exit status {interrupt.exit_status(signum)})\n".encode())

    def gave_up(self, reason: str) -> None:
        """The transfer lost its root (rank 0 by default): rank 1 speaks instead."""
        if self.rank == 1:
            os.write(2, f"mpistage: transfer failed: {reason}; every other rank removed "
                     "its unfinished copy (exit status 1)\n".encode())


def _sources_and_dest(args: argparse.Namespace) -> None:
    """SRC... and DEST from the positional names (the last is DEST, unless ``--pipe``
    takes its place), ``--from-cmd``'s command, or ``-``: standard input."""
    names = [*args.sources, *([args.dest] if args.dest is not None else [])]
    args.dest = None
    if args.pipe is None:  # else there is no DEST: every name is a SRC
        if not names:
            raise UsageError("the following arguments are required: DEST")
        args.dest = names.pop()
    args.sources = names
    if args.from_cmd is not None:
        if names:
            raise UsageError("--from-cmd CMD takes the place of SRC: give DEST (or "
                             "--pipe) only")
        args.sources = FromCommand(args.from_cmd)
    if not args.sources and args.files_from is None:
        raise UsageError("expected SRC... DEST: what to stage and where "
                         "(or --files-from LIST DEST)")
    if args.sources == ["-"]:
        args.sources = "-"  # standard input: a stream


def _explain(args: argparse.Namespace, comm: MPI.Comm) -> int:
    """``--explain``: the prediction of every algorithm, printed by rank 0."""
    if not isinstance(args.sources, list) or args.pipe is not None:
        raise UsageError("--explain needs a file to sample and a DEST: standard input "
                         "cannot be read twice, and --pipe writes no file")
    prediction = explain(
        args.sources, args.dest, comm=comm, files_from=args.files_from,
        base=args.base, nul=args.from0, algorithm=args.algorithm,
        chunk_size=args.chunk_size, root=args.root, ranks_as_nodes=args.ranks_as_nodes,
        arity=args.arity, calibration=args.calibration, quick=args.quick,
        depth=args.depth, memory=args.memory, timeout=args.timeout,
        compress=args.compress, shared_dest=args.shared_dest, read_by=args.read_by,
    )
    if comm.rank == 0:
        print(describe_prediction(prediction), flush=True)
    return 0


def _stage(args: argparse.Namespace, comm: MPI.Comm, started: float) -> int:
    """The staging, under a watchdog for a rank MPI holds for good; rank 0 speaks."""
    rank = comm.rank
    progress = None
    if args.progress or (not args.quiet and sys.stderr.isatty()):
        progress = TerminalProgress(sys.stderr)
    with stuck.Watchdog(stuck.limit_for(args.timeout), stuck.leave(rank)):
        report = stage(
            args.sources, args.dest, comm=comm, files_from=args.files_from, base=args.base,
            nul=args.from0, delete=args.delete, skip_special=args.skip_special,
            pipe=args.pipe, compress=args.compress, expect_size=args.expect_size,
            algorithm=args.algorithm,
            chunk_size=args.chunk_size, root=args.root, ranks_as_nodes=args.ranks_as_nodes,
            arity=args.arity, calibration=args.calibration,
            fsync=args.fsync, verify=args.verify, depth=args.depth, memory=args.memory,
            timeout=args.timeout,
            mkdir=args.mkdir, skip_bad_nodes=args.skip_bad_nodes, quick=args.quick,
            remove_first=args.remove_first, no_clobber=args.no_clobber,
            shared_dest=args.shared_dest, read_by=args.read_by, progress=progress,
            started=started,
        )
    if rank == 0:
        _speak(report, args)
    if report.stalled or report.missing_ranks or not report.reached_all:
        # Some ranks are gone or cut off: MPI_Finalize could wait for them forever
        # (and the launcher for their hosts).  The others have committed by now.
        _end_without_the_lost(comm, rank, report.exit_code)
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 a node failed, 2 usage; on
    SIGTERM/SIGINT the process ends with 128 + the signal number)."""
    started = time.perf_counter() - _process_age()
    from mpi4py import MPI  # initializes MPI; after the clock so start-up counts it

    comm = MPI.COMM_WORLD
    rank = comm.rank
    speaker = _Speaker(rank)
    interrupt.install(speaker.announce)  # after MPI_Init, which may set handlers
    interrupt.on_give_up(speaker.gave_up)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["calibrate"]:
        from .calibrate import main as calibrate_main

        return calibrate_main(argv[1:], started=started)
    try:
        try:
            args = build_parser(rank).parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0)
        _configure_logging(rank, args.verbose)
        _sources_and_dest(args)
        if args.explain:
            return _explain(args, comm)
        return _stage(args, comm, started)
    except ReportLost as exc:
        speaker.gave_up(str(exc))  # rank 0 spoke, unless it died after its summary
        _abort_after_output(comm, 1)
        return 1
    except RootLost as exc:
        # The transfer's root (rank 0 unless --root) is gone: nobody else will speak,
        # and MPI_Finalize (or MPI_Abort) could wait for it for ever.
        speaker.gave_up(str(exc))
        interrupt.remove_temp_files()
        os._exit(exc.exit_code)
    except Stalled as exc:
        # Rank 0 prints the verdict and ends the job; give it the time to, then end it
        # from here in case rank 0 cannot be reached.
        logging.getLogger("mpistage").debug("rank %d: %s", rank, exc)
        time.sleep(10)
        _abort(comm, exc.exit_code)
        return exc.exit_code
    except MpistageError as exc:
        if rank == 0:
            print(f"mpistage: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except BaseException:
        # A bug or an MPI failure on one rank: abort the whole job rather than leave the
        # other ranks waiting forever for this one.
        logging.getLogger("mpistage").exception("rank %d failed unexpectedly", rank)
        _abort(comm, 1)
        raise
