"""Before any byte moves: the run's own communicator and topology, the source agreed on,
every node checked, the plan decided and the transfer's communicator made.

The steps :func:`mpistage.staging.run.stage` and :func:`mpistage.staging.explain.explain`
share, in the order they run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from mpi4py import MPI

from ..engine.algorithms import SCHEDULES
from ..engine.codec import CodecCost
from ..engine.pipeline import SourceFactory
from ..engine.rollcall import draining, run_over
from ..engine.waiting import quiet_barrier
from ..errors import UsageError
from ..model import Parameters
from ..model.choice import CHUNK_CHOICES, fits
from ..model.decide import Prediction, decide
from ..mpi_library import fail_fast
from ..plan import Plan, SourceInfo, describe_source
from ..sources.named import SourceSpec
from ..sources.source import FileSource
from ..sources.streams import STDIN, StreamInput, StreamSource, describe_stream
from ..units import format_bytes
from .closing import participants
from .copies import FileCopy, PipeCopy
from .options import DEFAULT_CHUNK, StageOptions
from .preflight import NodeCheck, check_commands, preflight
from .shared_dest import check_shared_paths
from .shared_source import look_at_source
from .topology import Topology

if TYPE_CHECKING:  # a tree's modules load only for a tree's run
    from ..sources.manifest import Manifest
    from .treecopy import TreeCopy


@contextmanager
def own_communicator(comm: MPI.Comm) -> Iterator[MPI.Comm]:
    """A duplicate of ``comm``: our own context, so our messages never match the
    application's; freed on the way out."""
    own = fail_fast(comm.Dup())
    try:
        yield own
    finally:
        run_over()  # this run's chores and drains (mpistage.engine.rollcall)
        own.Free()


@contextmanager
def topology_of(comm: MPI.Comm, options: StageOptions) -> Iterator[Topology]:
    topo = Topology.build(comm, options.root, options.ranks_as_nodes)
    try:
        yield topo
    finally:
        topo.free()


Codecs = tuple[CodecCost | None, ...]


def agree_on_source(
    comm: MPI.Comm, what: SourceSpec | None, dest: str, options: StageOptions,
    stream: StreamInput | None,
) -> tuple[SourceInfo, Parameters | None, Manifest | None, Codecs]:
    """The root checks the source and reads the calibration (only it can see them);
    every rank learns what is to be sent, for its pre-flight check: one file's (or a
    stream's) description, or a tree's manifest (its columns broadcast as buffers); and
    the codecs ``--compress`` weighs, measured on a sample of the source."""
    outcome: tuple[SourceInfo, Parameters | None, bool, list[str], Codecs] | str | None = None
    manifest: Manifest | None = None
    if comm.rank == options.root:
        try:
            if what is None:
                info = describe_stream(dest, options.expect_size,
                                       stream.name if stream is not None else STDIN)
            elif what.is_tree():
                if options.pipe is not None:
                    raise UsageError("--pipe takes one file or - (standard input), not a tree")
                if options.every_node_reads:
                    raise UsageError("--read-by all stages one file, not a tree (the root "
                                     "reads a tree's files)")
                manifest, info = what.walk(dest, skip_special=options.skip_special)
                if options.no_clobber:
                    raise UsageError("--no-clobber stages one file, not a tree")
            else:
                info = describe_source(what.sources[0], dest)
            outcome = (info, options.load_calibration(), manifest is not None,
                       manifest.skipped if manifest is not None else [],
                       _codec_costs(options.compress, info, manifest, stream))
        except UsageError as exc:
            outcome = str(exc)
    quiet_barrier(comm)  # the others sleep while the root walks a tree
    outcome = comm.bcast(outcome, root=options.root)
    if isinstance(outcome, str):
        raise UsageError(outcome)
    assert outcome is not None
    info, params, is_tree, skipped, codecs = outcome
    if is_tree:
        from ..sources.manifest import Manifest

        manifest = (manifest or Manifest()).bcast(comm, options.root)
        manifest.skipped = skipped
    return info, params, manifest, codecs


def _codec_costs(compress: str, info: SourceInfo, manifest: Manifest | None,
                 stream: StreamInput | None) -> Codecs:
    """Root: the codecs to weigh, each measured on a sample of this source."""
    if compress == "none":
        return (None,)
    from ..sources.sampling import codec_costs, sample_file, sample_files, sample_stream

    if stream is not None:
        samples = sample_stream(stream)
    elif manifest is not None:
        samples = sample_files(manifest)
    else:
        try:
            samples = sample_file(info.source, info.size)
        except OSError as exc:
            raise UsageError(f"cannot read {info.source} to sample it: {exc.strerror}") from None
    return codec_costs(compress, samples)


def check_nodes(
    topo: Topology, info: SourceInfo, manifest: Manifest | None, options: StageOptions,
    stream: StreamInput | None = None,
) -> tuple[list[NodeCheck], FileCopy | TreeCopy, SourceInfo]:
    """The pre-flight check of every node, for one file, a stream, a command's input
    or a tree; for a tree, the description's size becomes the stream's (the files some
    node lacks)."""
    source: SourceFactory = FileSource
    if info.stream:
        source = partial(StreamSource, stream=stream)
    if options.pipe is not None:
        return check_commands(topo, options.pipe), PipeCopy(source), info
    if manifest is None:
        checks = preflight(topo, info, mkdir=options.mkdir, remove_first=options.remove_first,
                           quick=options.quick, skip_bad_nodes=options.skip_bad_nodes,
                           no_clobber=options.no_clobber)
        checks = check_shared_paths(topo, checks, allowed=options.shared_dest)
        return checks, FileCopy(source), info
    if options.shared_dest:
        raise UsageError("--shared-dest writes one file for the nodes that share it; a "
                         "tree is staged into a DEST of each node's own ({node} in DEST)")
    from .treecheck import check_tree
    from .treecopy import TreeCopy

    checks, node_tree, needed = check_tree(
        topo, manifest, info, mkdir=options.mkdir, remove_first=options.remove_first,
        quick=options.quick, delete=options.delete, skip_bad_nodes=options.skip_bad_nodes)
    check_shared_paths(topo, checks)
    copy = TreeCopy(manifest, needed, node_tree, delete=options.delete)
    return checks, copy, replace(info, size=copy.bytes_in_stream)


def decide_plan(
    topo: Topology, checks: list[NodeCheck], transfer_comm: MPI.Comm | None,
    info: SourceInfo, params: Parameters | None, options: StageOptions, files: int = 0,
    codecs: Codecs = (None,),
) -> tuple[Plan, Prediction | None]:
    """The plan, decided once on the root and broadcast to every rank: ``auto`` resolved
    by the model over the links among the nodes that need the file (the root measures
    one when there is no calibration).  When no node needs the file nothing is measured
    and ``auto`` means the defaults."""
    taking_part = participants(topo, checks)
    _check_buffers(options, len(taking_part))
    decided: tuple[Plan, Prediction | None] | None = None
    if transfer_comm is not None:
        root = taking_part.index(topo.root_node)
        shared, rates = look_at_source(transfer_comm, root, info, options,
                                       [f"node {i} ({checks[i].host})" for i in taking_part],
                                       files)
        algorithm = options.algorithm
        if options.read_by == "all" and options.auto_algorithm:
            algorithm = next(a for a, cls in SCHEDULES.items() if cls.every_node_reads)
        decided = decide(transfer_comm, root,
                         info, calibration=params, algorithm=algorithm,
                         chunk_size=options.chunk_size, arity=options.arity,
                         timeout=options.timeout, max_chunk=options.max_auto_chunk,
                         files=files, codecs=codecs, memory=options.memory,
                         recoverable=files == 0 and options.pipe is None,
                         depth=options.depth, shared_source=shared, read_rates=rates)
    if topo.comm.rank == options.root and decided is None:
        decided = (Plan.of(info, chunk_size=min(DEFAULT_CHUNK, options.max_auto_chunk)
                           if options.auto_chunk
                           else int(options.chunk_size),
                           algorithm="chain" if options.auto_algorithm else options.algorithm),
                   None)
    decided = topo.comm.bcast(decided, root=options.root)
    assert decided is not None
    return decided


def _check_buffers(options: StageOptions, nodes: int) -> None:
    """Every rank: an algorithm given by name must fit the buffers it needs at least
    (twotree's grow with the node count) in ``--memory``, with its smallest chunk."""
    if options.auto_algorithm:
        return  # the model picks among those that fit
    least = CHUNK_CHOICES[0] if options.auto_chunk else int(options.chunk_size)
    if not fits(options.algorithm, nodes, least, options.memory):
        need = SCHEDULES[options.algorithm].buffers_needed(nodes)
        raise UsageError(
            f"{options.algorithm} to {nodes} nodes keeps {need} chunks per node: "
            f"{need} x {format_bytes(least)} is more than the memory budget of "
            f"{format_bytes(options.memory)}: use a smaller chunk or a larger --memory")


@contextmanager
def transfer_communicator(topo: Topology, checks: list[NodeCheck]) -> Iterator[MPI.Comm | None]:
    """The leaders that take part: those that need the file, and the root (which reads
    even when its own node needs nothing).  ``None`` elsewhere, or if nobody needs it;
    freed on the way out, whatever happened."""
    if topo.leaders is None:
        yield None
        return
    needed = any(c.needs_data for c in checks)
    mine = next(c for c in checks if c.index == topo.node.index)
    joins = needed and (mine.needs_data or topo.comm.rank == topo.root)
    sub = topo.leaders.Split(0 if joins else MPI.UNDEFINED, key=topo.node.index)
    if joins:
        fail_fast(sub)
    try:
        yield sub if joins else None
    finally:
        if joins and not draining(sub):  # a broken round's drains go on to the end
            sub.Free()
