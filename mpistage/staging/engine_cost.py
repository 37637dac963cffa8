"""What the engine's CPU costs per chunk message and per byte: ``mpistage calibrate``
stages a sample through the real engine twice and fits the model's ``overhead`` (o)
and ``cpu_rate``.

A ping-pong sees MPI's own per-message cost (a few microseconds through shared memory)
but not the engine's work around each message, which is most of it.  So the sample goes
along a chain at two chunk sizes, :data:`SMALL` and :data:`LARGE`: a rank with ``e``
message ends per chunk spends ``m·e·o + max(e, 2)·S/cpu_rate`` CPU seconds on ``m``
chunks of the ``S``-byte sample (:meth:`mpistage.model.Parameters.rank_cpu`: the root's
read and a leaf's write are two ends' bytes with one end), and the two runs separate
``o`` from the per-byte rate.  CPU is the process's (every thread: the reader's and
writer's per-byte work counts), and includes the polls of a rank waiting for a slow
link, which is what a chunk costs there.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from mpi4py import MPI

from ..model import Parameters

SMALL, LARGE = 64 << 10, 1 << 20
_SUBDIR = ".mpistage-calibrate-engine"


def message_ends(rank_index: int, ranks: int) -> int:
    """Message ends per chunk of a chain's rank: the root sends, the last receives,
    every other rank does both."""
    return 1 if rank_index in (0, ranks - 1) else 2


def fit_engine(runs: list[tuple[int, int, float]], size: int) -> tuple[float, float]:
    """``(overhead, cpu_rate)`` from ``(chunks, message ends per chunk, CPU seconds)`` of
    ranks' runs of one ``size``: least squares of ``chunks·ends·o + max(ends, 2)·size/rate``
    through them, each kept non-negative (noise in a short run must not make a chunk
    free)."""
    chunks = np.array([m * e for m, e, _ in runs], dtype=float)
    byte_ends = np.array([max(e, 2) * float(size) for _, e, _ in runs], dtype=float)
    seconds = np.array([s for _, _, s in runs], dtype=float)
    design = np.stack([chunks, byte_ends], axis=1)
    (overhead, inverse_rate), *_ = np.linalg.lstsq(design, seconds, rcond=None)
    overhead = max(float(overhead), 0.0)
    if inverse_rate <= 0:
        inverse_rate = max(float(np.min((seconds - chunks * overhead) / byte_ends)), 0.0)
    return overhead, (1 / inverse_rate if inverse_rate > 0 else math.inf)


def measure(comm: MPI.Comm, dest: str, sample: int, link: Parameters,
            ranks_as_nodes: bool) -> dict[str, Any] | None:
    """Stage a ``sample``-byte file (written by rank 0 into its ``dest``) by a chain at
    :data:`SMALL` and :data:`LARGE` chunks into a scratch directory under every node's
    ``dest``, and fit the engine's costs (collective; ``None`` on ranks other than 0,
    for a single node, whose transfer sends nothing, and for a sample of one
    :data:`SMALL` chunk or less, which cannot tell ``o`` from ``ρ``).  Everything it wrote is
    removed."""
    from ..plan import expand
    from .run import stage  # calibrate's own use of the engine; staging never needs this

    if sample <= SMALL or comm.size < 2:
        return None  # one chunk at either size (o and ρ not told apart), or nothing sent
    sample_path = None
    if comm.rank == 0:
        directory = expand(dest, node=0, host=os.uname().nodename, rank=0)
        fd, sample_path = tempfile.mkstemp(prefix=".mpistage-calibrate.", dir=directory)
        with os.fdopen(fd, "wb") as out:
            out.write(np.random.default_rng(1).integers(0, 256, sample, dtype=np.uint8).data)
    sample_path = comm.bcast(sample_path, root=0)
    runs: list[tuple[int, int, float]] = []  # (chunks, message ends, CPU) of each node
    try:
        for chunk in (SMALL, LARGE):  # each into its own directory: none is up to date
            target = os.path.join(dest, _SUBDIR, str(chunk)) + os.sep
            report = stage(sample_path, target, comm=comm, algorithm="chain", chunk_size=chunk,
                           ranks_as_nodes=ranks_as_nodes, calibration=link, mkdir=True)
            leaders = sorted((r for r in report.ranks if r.leader), key=lambda r: r.node)
            if len(leaders) < 2 or not report.ok:
                return None
            runs.extend((math.ceil(sample / chunk), message_ends(i, len(leaders)),
                         r.phases.get("cpu", 0.0)) for i, r in enumerate(leaders))
    finally:
        _remove_scratch(comm, dest, ranks_as_nodes)
        if comm.rank == 0 and sample_path:
            os.unlink(sample_path)
    if comm.rank != 0:
        return None
    overhead, cpu_rate = fit_engine(runs, sample)
    return {"overhead": overhead, "cpu_rate": cpu_rate if math.isfinite(cpu_rate) else None,
            "sample": sample,
            "runs": [{"chunks": m, "message_ends": e, "cpu": s} for m, e, s in runs]}


def _remove_scratch(comm: MPI.Comm, dest: str, ranks_as_nodes: bool) -> None:
    """Every node's scratch directory, removed by its first rank."""
    from ..plan import expand
    from .topology import Topology

    topo = Topology.build(comm, 0, ranks_as_nodes)
    try:
        if topo.is_leader:
            directory = expand(dest, node=topo.node.index, host=topo.node.host, rank=comm.rank)
            shutil.rmtree(os.path.join(directory, _SUBDIR), ignore_errors=True)
    finally:
        topo.free()
    comm.Barrier()
