"""``explain()``: what :func:`mpistage.staging.run.stage` would do, without moving the
file: the same checks and link measurement, the prediction for every algorithm.
"""

from __future__ import annotations

import os
from dataclasses import replace

from mpi4py import MPI

from ..engine.codec import check as check_codec
from ..engine.pipeline import DEFAULT_DEPTH, DEFAULT_TIMEOUT
from ..errors import UsageError
from ..model import Parameters
from ..model.decide import AUTO, Prediction, decide
from ..plan import check_template
from ..sources.named import Sources, SourceSpec
from .agreement import check_arguments_agree
from .closing import connect_early, participants
from .options import DEFAULT_MEMORY, StageOptions
from .planning import (agree_on_source, check_nodes, own_communicator, topology_of,
                       transfer_communicator)
from .shared_source import look_at_source


def explain(
    source: Sources,
    dest: str | os.PathLike[str],
    *,
    comm: MPI.Comm | None = None,
    files_from: str | os.PathLike[str] | None = None,
    base: str | os.PathLike[str] | None = None,
    nul: bool = False,
    algorithm: str = AUTO,
    chunk_size: int | str = AUTO,
    root: int = 0,
    ranks_as_nodes: bool = False,
    arity: int = 2,
    calibration: Parameters | str | os.PathLike[str] | None = None,
    quick: bool = False,
    depth: int = DEFAULT_DEPTH,
    memory: int = DEFAULT_MEMORY,
    timeout: float = DEFAULT_TIMEOUT,
    compress: str = "none",
    shared_dest: bool = False,
    read_by: str = AUTO,
) -> Prediction | None:
    """What :func:`stage` would do, without moving the file (collective).

    Runs the same checks (bad nodes are left out rather than stopping it) and the same
    link measurement, then returns the prediction for every algorithm and the choice
    (``algorithm`` itself unless it is ``"auto"``); ``None`` if no node needs the file.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    check_arguments_agree(comm, "explain", dict(
        source=source, dest=dest, files_from=files_from, base=base, nul=nul,
        algorithm=algorithm, chunk_size=chunk_size, root=root, ranks_as_nodes=ranks_as_nodes,
        arity=arity, calibration=calibration, quick=quick, depth=depth, memory=memory,
        timeout=timeout, compress=compress, shared_dest=shared_dest, read_by=read_by))
    dest = os.fspath(dest)
    options = StageOptions(algorithm=algorithm, chunk_size=chunk_size, root=root,
                           ranks_as_nodes=ranks_as_nodes, arity=arity,
                           calibration=calibration, quick=quick, depth=depth,
                           memory=memory, timeout=timeout, skip_bad_nodes=True,
                           compress=check_codec(compress), shared_dest=shared_dest,
                           read_by=read_by)
    options.check(comm.size)
    check_template(dest)
    what = SourceSpec.of(source, files_from, base, nul)
    with own_communicator(comm) as comm, topology_of(comm, options) as topo:
        info, params, manifest, codecs = agree_on_source(comm, what, dest, options, None)
        checks, copy, info = check_nodes(topo, info, manifest, options)
        bad = [c for c in checks if c.problem]
        if bad and not any(c.needs_data for c in checks):
            raise UsageError("\n".join(c.line() for c in bad))  # no node could take it
        prediction = None
        with transfer_communicator(topo, checks) as transfer_comm:
            # every rank's first message to the root before the root is busy reading (a
            # refused first connection fails MPICH's gather after bounded retries)
            connect_early(topo, checks, transfer_comm, timeout)
            if transfer_comm is not None:
                taking_part = participants(topo, checks)
                root_rank = taking_part.index(topo.root_node)
                shared, rates = look_at_source(
                    transfer_comm, root_rank, info, replace(options, algorithm=AUTO),
                    [f"node {i} ({checks[i].host})" for i in taking_part],
                    copy.files_in_stream)
                decided = decide(
                    transfer_comm, root_rank, info,
                    calibration=params, algorithm=AUTO, chunk_size=options.chunk_size,
                    arity=arity, timeout=timeout, max_chunk=options.max_auto_chunk,
                    files=copy.files_in_stream, codecs=codecs,
                    recoverable=(options.auto_algorithm and copy.files_in_stream == 0
                                 and options.pipe is None),
                    depth=options.depth, shared_source=shared, read_rates=rates,
                )
                prediction = decided[1] if decided is not None else None
        if prediction is not None and not options.auto_algorithm:
            chunk, seconds = prediction.choice.predictions[algorithm]
            prediction = replace(prediction, auto=options.auto_chunk, choice=replace(
                prediction.choice, algorithm=algorithm, chunk_size=chunk, predicted=seconds))
        return comm.bcast(prediction, root=root)
