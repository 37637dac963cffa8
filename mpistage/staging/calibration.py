"""``mpistage calibrate``: measure the cost model's parameters on this allocation.

Collective over the communicator, one leader per node as in staging:

* **links**: ping-pong from the first node's leader to every other leader over a range of
  message sizes; per link a least-squares line ``one_way(s) = α + s/B``;
* **round trips**: many 1-byte ping-pongs on the first link, kept as a histogram (like
  mrsync's ``rtt`` tool: is the network healthy, are there outliers?);
* **read**: the root reads a sample of the source (its cached pages dropped first);
* **read together**: every leader reads its part of that sample at once, where every node
  sees the source (a file system they all mount): the rate ``A`` of ``--read-by all``;
* **write**: every leader writes a sample file into its destination directory;
* **start-up**: process start until MPI is ready, the slowest rank's.

The parameters the model uses are the medians over links, the root's read and the slowest
node's write (the slowest stage paces a pipeline).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from ..engine.reader import pread_full
from ..errors import UsageError
from ..model import SCHEMA, Parameters
from ..plan import expand
from ..units import format_bytes, format_seconds
from . import engine_cost
from .topology import Topology

DEFAULT_SIZES = (1, 1 << 10, 64 << 10, 256 << 10, 1 << 20)
_TAG = 7301


@dataclass
class Calibration:
    """What ``calibrate`` measured; ``parameters`` feed the model."""

    parameters: Parameters
    nodes: int
    links: list[dict[str, Any]] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)
    read: dict[str, Any] | None = None
    writes: list[dict[str, Any]] = field(default_factory=list)
    engine: dict[str, Any] | None = None
    read_together: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "parameters": self.parameters.to_dict(),
            "nodes": self.nodes,
            "links": self.links,
            "rtt": {"seconds": self.rtt, **rtt_summary(self.rtt)},
            "read": self.read,
            "read_together": self.read_together,
            "writes": self.writes,
            "engine": self.engine,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(self.to_dict(), out, indent=2)
            out.write("\n")

    def summary(self) -> str:
        p = self.parameters
        lines = [
            f"mpistage calibrate: {self.nodes} nodes",
            f"  latency α        {format_seconds(p.latency)} per message (median of "
            f"{len(self.links)} links)",
            f"  bandwidth B      {_rate(p.bandwidth)}",
            f"  read R (root)    {_rate(p.read_bandwidth)}",
            f"  read A (all)     {_rate(p.shared_read_bandwidth)}"
            + (f" ({self.read_together['readers']} nodes at once)" if self.read_together
               and "readers" in self.read_together else " (not every node sees the source)"
               if self.read_together else ""),
            f"  write W (min)    {_rate(p.write_bandwidth)}",
            f"  start-up I       {format_seconds(p.startup)}",
            f"  per file φ (max) {format_seconds(p.file_cost) if p.file_cost else '-'}"
            " (a tree's create, mode, mtime, close)",
            f"  CPU per message o {format_seconds(p.overhead) if p.overhead else '-'}"
            " (the engine's, per end: staged by chain at 64 KiB and 1 MiB chunks)",
            f"  CPU rate         {_rate(p.cpu_rate)} per message end",
        ]
        for link in self.links:
            lines.append(f"    link {link['from']} -> {link['to']} ({link['host']}): "
                         f"α {format_seconds(link['latency'])}, B {_rate(link['bandwidth'])}")
        if self.rtt:
            lines.append(f"  round trips (1 byte, {len(self.rtt)}): " + ", ".join(
                f"{k} {format_seconds(v)}" for k, v in rtt_summary(self.rtt).items()
                if k != "histogram"))
            lines += ["    " + row for row in rtt_histogram_lines(self.rtt)]
        return "\n".join(lines)


def _rate(value: float) -> str:
    if math.isinf(value):
        return "not measured (taken as unlimited)"
    return f"{format_bytes(value)}/s ({value * 8 / 1e6:.1f} Mbit/s)"


def rtt_summary(rtt: list[float]) -> dict[str, Any]:
    if not rtt:
        return {}
    ordered = sorted(rtt)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
        "histogram": rtt_histogram(ordered),
    }


def rtt_histogram(rtt: list[float], bins: int = 12) -> list[tuple[float, float, int]]:
    """Log-spaced bins from the fastest to the slowest round trip: ``(low, high, count)``."""
    low, high = min(rtt), max(rtt)
    if high <= low * 1.0001:
        return [(low, high, len(rtt))]
    edges = np.geomspace(low, high, bins + 1)
    counts, _ = np.histogram(rtt, bins=edges)
    return [(float(a), float(b), int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts)]


def rtt_histogram_lines(rtt: list[float], width: int = 40) -> list[str]:
    rows = rtt_histogram(rtt)
    most = max(c for _, _, c in rows) or 1
    return [f"{format_seconds(a):>9} - {format_seconds(b):>9} {'#' * max(1 if c else 0, round(width * c / most)):<{width}} {c}"
            for a, b, c in rows]


def _ping_pong(comm: MPI.Comm, peer: int, leader: bool, size: int, repeats: int) -> list[float]:
    """One-way times (half round trips) of ``size`` bytes between this rank and ``peer``."""
    buf = np.zeros(max(size, 1), dtype=np.uint8)[:size]
    times = []
    for i in range(repeats + 1):
        if leader:
            started = MPI.Wtime()
            comm.Send(buf, dest=peer, tag=_TAG)
            comm.Recv(buf, source=peer, tag=_TAG)
            if i:  # the first exchange may set up the connection
                times.append((MPI.Wtime() - started) / 2)
        else:
            comm.Recv(buf, source=peer, tag=_TAG)
            comm.Send(buf, dest=peer, tag=_TAG)
    return times


def fit_link(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``(α, B)`` of ``one_way = α + size/B`` (relative errors weighted).

    Noise (oversubscribed ranks, shared memory where 64 KiB takes microseconds) can
    make the fitted α or 1/B come out at or below zero. Neither is a measurement, and
    both would mislead the model, so each falls back to a direct, conservative
    reading: α to the fastest smallest message, B to the largest size over its
    median time (a lower bound of the link's rate).
    """
    sizes = np.array([s for s, _ in samples], dtype=float)
    times = np.array([t for _, t in samples], dtype=float)
    design = np.stack([1 / times, sizes / times], axis=1)
    (alpha, inverse), *_ = np.linalg.lstsq(design, np.ones(len(times)), rcond=None)
    if alpha <= 0:
        alpha = float(times[sizes == sizes.min()].min())
    if inverse <= 0:
        largest = sizes.max()
        inverse = float(np.median(times[sizes == largest])) / largest if largest > 0 else 0.0
    return float(alpha), (1 / float(inverse) if inverse > 0 else math.inf)


def _timed_read(path: str, limit: int) -> dict[str, Any]:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = np.empty(min(limit, 16 << 20) or 1, dtype=np.uint8)
        total, started = 0, time.perf_counter()
        while total < limit and (n := os.readv(fd, [memoryview(buf)[: min(len(buf), limit - total)]])):
            total += n
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    return {"path": path, "bytes": total, "seconds": seconds,
            "bandwidth": total / seconds if total and seconds > 0 else math.inf}


def _read_together(leaders: MPI.Comm, path: str, sample: int) -> dict[str, Any] | None:
    """Every node reads a part of ``sample`` bytes of ``path`` (a file all of them may
    mount: :mod:`mpistage.staging.shared_source`), all at once, its cached pages dropped
    first: the rate they read at together (the model's ``A``), on ``leaders``' rank 0."""
    part = max(1, sample // leaders.size)
    seconds = math.inf
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            leaders.Barrier()
            started = time.perf_counter()
            if pread_full(fd, memoryview(bytearray(part)), leaders.rank * part) == part:
                seconds = time.perf_counter() - started
        finally:
            os.close(fd)
    except OSError:
        leaders.Barrier()
    slowest = leaders.reduce(seconds, op=MPI.MAX, root=0)
    if leaders.rank != 0:
        return None
    if not math.isfinite(slowest):
        return {"error": "not every node could read it"}
    return {"readers": leaders.size, "bytes": part * leaders.size, "seconds": slowest,
            "bandwidth": part * leaders.size / max(slowest, 1e-9)}


def _timed_write(directory: str, size: int) -> dict[str, Any]:
    block = np.random.default_rng(0).integers(0, 256, min(size, 16 << 20) or 1, dtype=np.uint8)
    fd, path = tempfile.mkstemp(prefix=".mpistage-calibrate.", dir=directory)
    try:
        written, started = 0, time.perf_counter()
        while written < size:
            written += os.write(fd, memoryview(block)[: min(len(block), size - written)])
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
    return {"bytes": written, "seconds": seconds,
            "bandwidth": written / seconds if seconds > 0 else math.inf}


def _timed_files(directory: str, count: int = 256) -> float:
    """Seconds per file beyond its bytes, as a tree's sink spends them: create one
    small file exclusively, set its mode and mtime, close it (then all are removed)."""
    folder = tempfile.mkdtemp(prefix=".mpistage-calibrate.", dir=directory)
    try:
        started = time.perf_counter()
        for number in range(count):
            fd = os.open(os.path.join(folder, str(number)),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.write(fd, b"x")
            os.fchmod(fd, 0o644)
            os.utime(fd, ns=(0, 0))
            os.close(fd)
        return (time.perf_counter() - started) / count
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def leaders_can_write(comm: MPI.Comm, writes: list[dict[str, Any]]) -> bool:
    """Whether every node's write was timed without an error (rank 0 decides; the
    same answer on every rank)."""
    return bool(comm.bcast(bool(writes) and not any("error" in w for w in writes), root=0))


#: Link parameters for calibrate's own stagings: their algorithm and chunk are fixed,
#: so the model's prediction does not matter, and the link is not probed again.
_NO_PROBE = Parameters(latency=1e-5, bandwidth=1e9)


def calibrate(
    comm: MPI.Comm | None = None, *, source: str | None = None, dest: str | None = None,
    sample: int = 64 << 20, sizes: tuple[int, ...] = DEFAULT_SIZES, repeats: int = 3,
    round_trips: int = 500, ranks_as_nodes: bool = False, started: float | None = None,
) -> Calibration:
    """Measure the model's parameters (collective); the same result on every rank.

    Args:
        source: a file to time the root's reads on (else R is not measured), and,
            where every node sees it (a file system they all mount), every node's reads
            of a part of it at once (A).
        dest: a directory on every node to time writes in (else W is not measured);
            may contain ``{node}``, ``{host}``, ``{rank}``.
        sample: bytes read and written for the disk measurements.
        sizes: message sizes of the ping-pongs.
        repeats: ping-pongs per size and link.
        round_trips: 1-byte round trips for the histogram.
        started: ``time.perf_counter()`` at process start, for the start-up time.
    """
    entered = time.perf_counter()
    comm = (MPI.COMM_WORLD if comm is None else comm).Dup()
    topo = Topology.build(comm, 0, ranks_as_nodes)
    try:
        startup = comm.allreduce(time.perf_counter() - (started or entered), op=MPI.MAX)
        links, rtt = [], []
        leaders = topo.leaders
        if leaders is not None:
            for peer in range(1, leaders.size):
                if leaders.rank not in (0, peer):
                    continue
                samples = [(s, t) for s in sizes for t in _ping_pong(leaders, peer if leaders.rank == 0 else 0, leaders.rank == 0, s, repeats)]
                if leaders.rank == 0:
                    alpha, bandwidth = fit_link(samples)
                    links.append({"from": 0, "to": peer, "host": topo.nodes[peer].host,
                                  "latency": alpha, "bandwidth": bandwidth,
                                  "samples": samples})
            if leaders.size > 1 and leaders.rank in (0, 1):
                rtt = [2 * t for t in _ping_pong(leaders, 1 - leaders.rank, leaders.rank == 0, 1, round_trips)]
        read = None
        if source is not None and comm.rank == 0:
            try:
                read = _timed_read(source, sample)
            except OSError as exc:
                read = {"path": source, "error": exc.strerror}
        together = None
        if source is not None and leaders is not None and leaders.size > 1:
            together = _read_together(leaders, source, sample)
        write = None
        if dest is not None and topo.is_leader:
            try:
                directory = expand(dest, node=topo.node.index, host=topo.node.host, rank=comm.rank)
                write = {"node": topo.node.index, "host": topo.node.host,
                         **_timed_write(directory, sample),
                         "file_cost": _timed_files(directory)}
            except OSError as exc:
                write = {"node": topo.node.index, "host": topo.node.host, "error": exc.strerror}
            except UsageError as exc:
                write = {"node": topo.node.index, "host": topo.node.host, "error": str(exc)}
        writes = [w for w in comm.gather(write, root=0) or [] if w is not None]
        engine = None
        if dest is not None and leaders_can_write(comm, writes):
            engine = engine_cost.measure(comm, dest, sample, _NO_PROBE, ranks_as_nodes)
        result = None
        if comm.rank == 0:
            problems = [f"node {w['node']} ({w['host']}): {w['error']}" for w in writes if "error" in w]
            if read and "error" in read:
                problems.append(f"source {source}: {read['error']}")
            if problems:
                result = "; ".join(problems)
            else:
                measured_writes = [w["bandwidth"] for w in writes]
                result = Calibration(
                    parameters=Parameters(
                        latency=statistics.median(l["latency"] for l in links) if links else 0.0,
                        bandwidth=statistics.median(l["bandwidth"] for l in links) if links else math.inf,
                        read_bandwidth=read["bandwidth"] if read else math.inf,
                        shared_read_bandwidth=(together or {}).get("bandwidth", math.inf),
                        write_bandwidth=min(measured_writes) if measured_writes else math.inf,
                        startup=startup,
                        file_cost=max((w["file_cost"] for w in writes), default=0.0),
                        overhead=engine["overhead"] if engine else 0.0,
                        cpu_rate=(engine or {}).get("cpu_rate") or math.inf,
                    ),
                    nodes=len(topo.nodes), links=links, rtt=rtt, read=read, writes=writes,
                    engine=engine, read_together=together,
                )
        result = comm.bcast(result, root=0)
        if isinstance(result, str):
            raise UsageError(result)
        return result
    finally:
        topo.free()
        comm.Free()
