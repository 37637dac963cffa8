"""``stage()``: the one collective call that plans, checks, transfers, verifies and reports.

Every rank of ``comm`` calls it with the same arguments and every rank returns the same
:class:`StageReport` (or raises the same :class:`UsageError`), so an application can act
on the outcome without further communication.

After the pre-flight check no step waits forever: the transfer stops within ``timeout``
seconds of making no progress, and the closing exchange (statuses to rank 0, its verdict
back) is point-to-point with deadlines, so a dead or cut-off node is named in the report
instead of hanging the job.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, BinaryIO

from mpi4py import MPI

from ..engine.codec import check as check_codec
from ..engine.pipeline import DEFAULT_DEPTH, DEFAULT_TIMEOUT, ProgressCallback
from ..errors import RootLost, Stalled, UsageError
from ..model import Parameters
from ..model.decide import AUTO
from ..plan import check_template
from ..sources.named import Sources, SourceSpec
from ..sources.streams import STDIN, is_stream, open_stream
from .agreement import check_arguments_agree
from .closing import agree_on_report, connect_early
from .copies import SourceOutcome
from .options import DEFAULT_MEMORY, StageOptions
from .planning import (agree_on_source, check_nodes, decide_plan, own_communicator, topology_of,
                       transfer_communicator)
from .report import NodeResult, RankRecord, StageReport
from .shared_dest import verify_shared
from .transfer import take_part

if TYPE_CHECKING:  # a tree's modules load only for a tree's run
    pass

log = logging.getLogger("mpistage.staging.run")


def stage(
    source: Sources | BinaryIO,
    dest: str | os.PathLike[str] | None,
    *,
    comm: MPI.Comm | None = None,
    pipe: str | None = None,
    compress: str = "none",
    expect_size: int | None = None,
    files_from: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    nul: bool = False,
    delete: bool = False,
    skip_special: bool = False,
    algorithm: str = AUTO,
    chunk_size: int | str = AUTO,
    root: int = 0,
    ranks_as_nodes: bool = False,
    arity: int = 2,
    calibration: Parameters | str | os.PathLike[str] | None = None,
    fsync: bool = False,
    verify: bool = False,
    depth: int = DEFAULT_DEPTH,
    memory: int = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
    mkdir: bool = False,
    skip_bad_nodes: bool = False,
    quick: bool = False,
    remove_first: bool = False,
    no_clobber: bool = False,
    shared_dest: bool = False,
    read_by: str = AUTO,
    progress: ProgressCallback | None = None,
    started: float | None = None,
) -> StageReport:
    """Copy ``source`` from rank ``root`` to ``dest`` on every node (collective).

    Args:
        source: what to read on the root: a file, a directory (staged whole), or a list
            of them (several need a directory ``dest``); ``None`` or ``[]`` with
            ``files_from``; ``"-"`` for standard input, or a binary file object: a
            stream, read to its end (its size unknown in advance).
        dest: where each node writes, as ``cp -r`` does: an existing directory receives
            ``dest/basename(source)``; else, for one source, ``dest`` is its new path
            (a stream's must be). May contain ``{node}``, ``{host}`` and ``{rank}``.
            ``None`` with ``pipe``.
        comm: communicator of every rank taking part (default ``MPI.COMM_WORLD``).
        pipe: instead of writing a file, run this shell command on every node (its
            placeholders expanded) and write the stream to its standard input; a node
            succeeds when every byte arrived, the digest matched and it exited 0.
        compress: ``"none"``, ``"zstd"``, ``"zstd:LEVEL"``, ``"lz4"`` or ``"auto"`` (the
            model weighs them on a sample of the source): chunks are encoded once on
            the root and decoded by each node for its own write.
        expect_size: a stream's expected size: pre-flight checks room for it and the
            model plans for it.
        files_from: a file listing the paths to stage, one a line (NUL-separated with
            ``nul``), relative to ``base`` (default: the list's directory) and kept
            relative under ``dest``.
        delete: remove from the destination's copy of a source directory what the
            source does not hold (like ``rsync --delete``; by default it is kept, as
            ``cp`` keeps it).
        skip_special: leave out sockets, FIFOs and devices in a tree (and report them)
            instead of refusing the tree.
        algorithm: one of :data:`ALGORITHMS`, or ``"auto"`` (the default): the one the
            cost model predicts fastest.
        chunk_size: bytes per pipelined message, or ``"auto"`` (the default): the
            model's best within the memory budget.
        root: rank of ``comm`` that reads the source.
        ranks_as_nodes: treat every rank as its own node.
        arity: children per node of the ``tree`` algorithm.
        calibration: parameters (or a calibration file) for the model; without them
            the file named by ``$MPISTAGE_CALIBRATION``, else the root measures its
            first link quickly (not for a file of at most 1 MiB for which no link
            could change the model's choice).
        fsync: flush every copy to its device before renaming it into place.
        verify: re-read every copy from disk and compare digests before the rename.
        depth: chunk buffers per leader (fewer where ``depth * chunk_size`` would
            exceed ``memory``).
        memory: bytes of chunk buffers per leader; ``auto`` picks chunks of at most
            ``memory // depth``, and a chunk size above ``memory / 2`` is refused.
        timeout: seconds a transfer may make no progress before it counts as stalled.
        mkdir: create the destination directory where it is missing.
        skip_bad_nodes: go on without nodes that fail the pre-flight check (they are
            reported, and the run counts as failed) instead of stopping.
        quick: count an existing copy as up to date on size and mtime alone, instead of
            size and digest.
        remove_first: delete an existing, outdated copy before writing, for disks that
            cannot hold both (in a tree: each outdated file just before its new bytes).
        no_clobber: fail on nodes where something other than an up-to-date copy
            already stands at the destination, instead of replacing it (sbcast's
            default; its ``--force`` is this option's absence).
        read_by: ``"root"``: the root reads the source; ``"all"``: every node reads a
            share of it, the same file on a file system all of them mount (Lustre, GPFS,
            NFS), and the shares go round a ring (:mod:`mpistage.engine.ring`);
            ``"auto"`` (the default): the model picks, where the root's source is on
            such a file system and every node sees it as the root does.
        shared_dest: where several nodes' DEST is one file on a file system they share,
            write it once (the lowest node) and have the others check it in place,
            instead of refusing the run (one file, not a tree).
        progress: ``progress(done, total)`` called on the root as chunks leave it (bytes
            of the stream); for a tree, a callback that also has a ``files(done, total)``
            method is told the files sent, too (the CLI's progress line shows both).
        started: a ``time.perf_counter()`` value counted as the start of the run; the
            CLI passes the process's start so that start-up includes MPI initialization.

    Returns:
        The report, identical on every rank; ``report.ok`` tells whether every node
        holds a verified copy.

    Raises:
        UsageError: on every rank, for bad input or a failed pre-flight check; nothing
            has been created then (except directories made by ``mkdir``).
        Stalled: on a rank that lost contact with rank 0; rank 0 returns a report with
            ``stalled`` set.  Either way MPI may now be unusable: abort the job.
    """
    entered = time.perf_counter()
    start = entered if started is None else started
    comm = MPI.COMM_WORLD if comm is None else comm
    check_arguments_agree(comm, "stage", dict(
        source=source, dest=dest, pipe=pipe, compress=compress, expect_size=expect_size,
        files_from=files_from, base=base, nul=nul, delete=delete, skip_special=skip_special,
        algorithm=algorithm, chunk_size=chunk_size, root=root, ranks_as_nodes=ranks_as_nodes,
        arity=arity, calibration=calibration, fsync=fsync, verify=verify, depth=depth,
        memory=memory, timeout=timeout, mkdir=mkdir, skip_bad_nodes=skip_bad_nodes,
        quick=quick, remove_first=remove_first, no_clobber=no_clobber,
        shared_dest=shared_dest, read_by=read_by))
    dest = _destination(dest, pipe)
    kind = _stream_kind(comm, source, root)
    options = StageOptions(
        algorithm=algorithm, chunk_size=chunk_size, root=root, ranks_as_nodes=ranks_as_nodes,
        arity=arity, calibration=calibration, fsync=fsync, verify=verify, depth=depth,
        memory=memory, timeout=timeout, mkdir=mkdir, skip_bad_nodes=skip_bad_nodes,
        quick=quick, remove_first=remove_first, no_clobber=no_clobber, delete=delete,
        shared_dest=shared_dest,
        skip_special=skip_special, compress=check_codec(compress), pipe=pipe,
        expect_size=expect_size, stream=kind is not None, read_by=read_by,
    )
    options.check(comm.size)
    check_template(dest)
    what = _what(source, files_from, base, nul, options, kind)
    with own_communicator(comm) as comm, topology_of(comm, options) as topo:
        phases = {"startup": time.perf_counter() - start}
        mark = time.perf_counter()
        stream = open_stream(source) if kind and comm.rank == options.root else None
        info, params, manifest, codecs = agree_on_source(comm, what, dest, options, stream)
        checks, copy, info = check_nodes(topo, info, manifest, options, stream)
        result: NodeResult | None = None
        outcome: SourceOutcome | None = None
        stall: str | None = None
        lost: dict[int, str] = {}
        root_lost = False
        with transfer_communicator(topo, checks) as transfer_comm:
            connect_early(topo, checks, transfer_comm, timeout)
            plan, prediction = decide_plan(topo, checks, transfer_comm, info, params, options,
                                           copy.files_in_stream, codecs)
            copy = copy.for_plan(plan)
            phases["plan"] = time.perf_counter() - mark
            if topo.is_leader:
                mine = next(c for c in checks if c.index == topo.node.index)
                try:
                    result, outcome = take_part(topo, plan, checks, mine, transfer_comm,
                                                phases, options, progress, copy, lost)
                except Stalled as exc:
                    stall = str(exc)
                    root_lost = isinstance(exc, RootLost)
                    log.debug("stalled: %s", stall)
                    result = NodeResult(index=mine.index, host=mine.host, rank=comm.rank,
                                        path=mine.target, status="failed",
                                        error=f"stalled: {stall}")
        phases["total"] = time.perf_counter() - start
        record = RankRecord(rank=comm.rank, node=topo.node.index, host=topo.node.host,
                            leader=topo.is_leader, phases=phases)
        report = agree_on_report(topo, plan, checks, record, result, outcome, prediction,
                                 stall, options.buffers(plan.chunk_size), timeout,
                                 copy.summary(), pipe, lost, root_lost)
        if any(c.shares_with is not None for c in checks):
            report = verify_shared(topo, checks, report, timeout)
        return report


def _destination(dest: str | os.PathLike[str] | None, pipe: str | None) -> str:
    """What each node's target is made from: DEST, or with ``pipe`` the command."""
    if pipe is not None:
        if dest is not None:
            raise UsageError("--pipe CMD takes the place of DEST: give SRC and CMD only")
        if not pipe.strip():
            raise UsageError("--pipe command is empty")
        return pipe
    if dest is None:
        raise UsageError("no destination given")
    return os.fspath(dest)


def _stream_kind(comm: MPI.Comm, source: object, root: int) -> str | None:
    """Whether the root's ``source`` is a stream (``"stdin"``, ``"other"``) or not
    (``None``), the same on every rank: only the root's source counts for a stream, so
    the others may pass ``None``."""
    if not 0 <= root < comm.size:
        return None  # StageOptions.check says so, on every rank
    kind = None
    if comm.rank == root and is_stream(source):
        kind = "stdin" if source == STDIN else "other"
    return comm.bcast(kind, root=root)


def _what(source: Sources | BinaryIO, files_from: str | os.PathLike[str] | None,
          base: str | os.PathLike[str] | None, nul: bool,
          options: StageOptions, kind: str | None) -> SourceSpec | None:
    """The sources as given; ``None`` for a stream (checked here, alike on every rank)."""
    if kind is not None:
        if files_from is not None:
            raise UsageError("give - (standard input) or --files-from, not both")
        if kind == "stdin" and options.root != 0:
            raise UsageError("standard input reaches rank 0 only: --root must be 0 with -")
        return None
    if not isinstance(source, (str, os.PathLike)) and source is not None:
        if any(is_stream(s) for s in source):  # type: ignore[union-attr]
            raise UsageError("- (standard input) is the only source when it is one")
    return SourceSpec.of(source, files_from, base, nul)  # type: ignore[arg-type]
