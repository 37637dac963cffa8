"""The cost model: predicted staging time from measured parameters (the choice made
with it is :mod:`mpistage.model.choice`'s).

Parameters (:class:`Parameters`), all measurable with ``mpistage calibrate``:

* ``latency`` α — seconds per message on one hop (MPI's own overhead plus the wire's);
* ``bandwidth`` B — bytes/s one link carries in one direction;
* ``read_bandwidth`` R — bytes/s the root reads the source;
* ``shared_read_bandwidth`` A — bytes/s every node together reads a source they all
  mount (a parallel file system serves many clients more than one); a ring's ``N``
  readers read ``min(N·R, A)``;
* ``write_bandwidth`` W — bytes/s a node writes its copy;
* ``startup`` I — seconds from launch until every rank is ready;
* ``file_cost`` φ — seconds a node spends per file of a tree beyond its bytes (create,
  set mode and mtime, close; the rename of the tree is one step for all of them).
* ``overhead`` o, ``cpu_rate`` ρ — the CPU a rank spends per end of a chunk message
  (LogGP's ``o``: MPI's call and the engine's work around it) and the bytes/s its CPU
  carries per message end (MPI's copy, its part of the digest and of the write);
* ``share`` s — the transfer's ranks per core on the most crowded machine (found at run
  time from the kernels' boot ids, :mod:`mpistage.model.cores`).

Every algorithm is pipelined by chunks of ``c`` bytes, ``m = ceil(S / c)`` of them.  One
hop of one chunk costs ``α + c/B``.  The pipeline advances one *step* per chunk at the
pace of its slowest stage: the busiest sender pushes the chunk to each of its ``f``
children in turn (``f`` hops), the root reads it (``c/R``), a node writes it (``c/W``).
Before that rhythm sets in, the first chunk must reach the last node: the *fill*,
``F`` hops.  A node posts a chunk's sends to all its children at once, so they share its
link and all get the chunk after ``f`` hops: the fill is the sum of the fan-outs along
the path to the last node.

    T = I + (m − 1) · max(f · (α + c/B), C, c/R, c/W) + F · max(α + c/B, 2(o + c/ρ))
          + max(c/R, c/W)

The processor is a resource of each step like the link: ``C``, the CPU a step needs, is
the busiest rank's ``e·o + max(e, 2)·c/ρ`` with ``e = f + 1`` message ends (it receives
the chunk and sends it ``f`` times; in a binomial tree or flat the root, ``e = f``: it
receives nothing).  An end's bytes are half a rank's own copy and digest of the chunk
plus one MPI copy, so a relay's two ends are its whole work, and a chain's root (its
read) or a leaf (its write), with one end, still pays two ends' bytes
(:meth:`Parameters.rank_cpu`).  Where ranks share cores it is
``s·(2(N − 1)·o + 2N·c/ρ)/N`` if that is more: every node receives each chunk once and
every rank copies and digests it, and a crowded machine's cores pay for all of its
ranks' (with a codec, its encoding and decoding too).  The terms
overlap rather than add: one host, 1 GiB to 2 ranks, measured 0.85-1.13 s at 1 MiB
where the CPU needs ~1.0 s and the wire 0.2 s; 8 hosts at 1 Gbit/s, 256 MiB in 512 KiB
chunks, 2.26 s where each term alone needs 2.2 s (added, 4.3 s).

Compressed (``--compress``, :mod:`mpistage.engine.codec`), a chunk of ``c`` source bytes travels
as ``r·c`` bytes (``r`` the ratio measured on a sample of the source), the root encodes it
after reading it (``c/E``, in the same thread) and each node decodes it before writing
(``c/D``): ``α + r·c/B`` per hop, ``c/R + c/E`` and ``c/W + c/D`` as the local stages.

A tree of ``n`` files is one stream of its bytes (each file followed by its 16-byte
digest), written at the pace ``W`` and φ per file allow: ``W`` becomes
``S / (S/W + n·φ)`` (so 10,000 files of 4 KiB cost 10,000·φ more than one 40 MiB file
where the disk is not the bottleneck anyway, and nothing more where the link is).

=========  ========================  ===============================================
algorithm  busiest fan-out ``f``     fill ``F`` (hops for the first chunk to the last)
=========  ========================  ===============================================
chain      1                         N − 1
binomial   k = ⌈log2 N⌉ (the root)   ≤ k + (k−1) + … + 1 = k(k+1)/2
tree       n (arity)                 ≤ n · h, h the height of the n-ary tree
twotree    1 (see below)             2·h + 1, h = ⌊log2(N − 1)⌋ the heaps' height
flat       N − 1                     N − 1
ring       1 (see below)             N − 1
=========  ========================  ===============================================

``ring`` (:mod:`mpistage.engine.ring`) has every node read a share of a source all of them
mount, and the shares go round a ring: a node's link brings the ``(N − 1)/N`` of the
chunks others read and its own share from the file system, the whole file as in a
chain, but the source is read at ``min(N·R, A)`` rather than ``R``.

``twotree`` (:mod:`mpistage.engine.twotree`) sends even chunks down one binary tree and odd
ones down another in which every interior node of the first is a leaf: a node sends
two chunks for every two it receives, the root one per chunk, so the pipeline steps at
one hop per chunk (a chain's bandwidth), while the first chunk reaches the last node
after two hops per level (a tree's depth).  It assumes full-duplex links and that a
node's two parents do not slow each other down (where both send to it at once, one
message waits on its downlink while its sender goes on: :mod:`mpistage.model.simulate` plays
that out and agrees within 1.5 % at every N).

``bcast`` is MPI's own broadcast of each chunk, ``MPI_Ibcast``, several in flight, as
MPICH 5.0.2 runs it (:mod:`mpistage.engine.bcast_model`: a binomial tree below 8 ranks, a
scatter and an allgather from 8): the first chunk's latency ``F_b`` (its longest path),
then one chunk per step of the busiest node's ``n_b`` messages and ``s_b`` bytes (the
root's ⌈log2 N⌉ copies in the tree; ``2·(N−1)/N · c`` with the scatter, in 2⌈log2 N⌉
messages with recursive doubling, ⌈log2 N⌉ + N − 1 with the ring), but no faster than
``F_b`` over the chunks in flight:

    T = I + F_b + (m − 1) · max(n_b·α + s_b/B, F_b/4, c/R, c/W) + max(c/R, c/W)

The Ka paper's terms map onto these (:func:`ka_terms`): its connection set-up ``d`` is a
per-message cost here, ``d ≈ α`` (MPI connects once, so each chunk pays α, not a TCP
handshake); its point-to-point transfer time is ``L = S/B``; ``n`` is the arity and its
``k`` levels are ``h`` hops; the launch time is ``I``; and the mixed scheme's network
latency ``d′`` is α again.  Ka streams each file through TCP, which pipelines at the
granularity of the socket buffer; here the granularity is the chunk.  So Ka's chain
``t = d·(N−1) + L`` is our chain with small chunks, ``I + L + (N−2)·(α + c/B) + m·α``
(fill plus a per-chunk cost that Ka's byte stream does not pay), and Ka's n-ary tree
``t = (d·(k−1) + L)·n`` is our tree's ``n·(m + h − 1)·(α + c/B)``: both pay the fan-out
``n`` on every byte and the depth only in the fill.

The optimal chunk balances the ``m`` steps (fewer with big chunks) against the fill
(shorter with small chunks): for the network-bound chain,
``c* = sqrt(S·α·B / (N − 2))``.  :func:`mpistage.model.choice.optimal_chunk` finds it numerically for every
algorithm, among powers of two.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from ..engine import bcast_model
from ..engine.algorithms import SCHEDULES
from ..engine.codec import CodecCost

#: Algorithms the model predicts (the names of the schedules).
MODELLED: tuple[str, ...] = tuple(SCHEDULES)
#: Those in which the root reads the source: ``auto``'s candidates unless every node
#: sees the source as the root does (:mod:`mpistage.staging.shared_source`).
ROOT_READ: tuple[str, ...] = tuple(a for a in MODELLED if not SCHEDULES[a].every_node_reads)

SCHEMA = "mpistage.staging.calibration/1"

#: Bytes/s a node reads or writes where not calibrated (the quick probe measures the
#: link only): this machine's page cache and tmpfs through mpistage's reader and writer
#: threads, 1.0-1.6 GB/s (``mpistage calibrate``: writes to tmpfs 1.58 GB/s).  Not
#: infinite: a pipeline's first read and last write overlap nothing, so one 16 MiB chunk
#: costs ~30 ms more than 1 MiB ones (2 hosts at 1 Gbit/s: 0.17 s against 0.14 s), which
#: the chunk choice must see.  Not the low end either: where the CPU binds (one host),
#: 1 GB/s made every chunk from 1 MiB up look read-bound and alike, and the choice fell
#: on 1 MiB, 13 % slower than 4 MiB (1 GiB, 2 ranks: 0.96-1.00 s against 0.84-0.89 s).
ASSUMED_LOCAL_RATE = 1.5e9
#: φ where it was not calibrated: creating a file, setting its mode and mtime and
#: closing it took 24 µs on tmpfs and 63 µs on ext4 here (Python's system calls), plus
#: the tree sink's own work per file.
ASSUMED_FILE_COST = 50e-6
#: The engine's own CPU per chunk message on a rank, beyond MPI's call (which the quick
#: probe measures): taking the chunk, posting and testing its requests, handing it to the
#: writer, digesting.  ``mpistage calibrate`` measures the whole per-message cost by
#: running the engine; this is what it measured here (2 cores, MPICH wheel, one host):
#: 0.10-0.12 ms per message, of which MPI's own 2-5 µs.
ENGINE_OVERHEAD = 105e-6
#: Bytes/s one rank's CPU carries through its per-byte work on a chunk where neither a
#: calibration nor the run's probe (:mod:`mpistage.model.cpu_rate`, the root's) gave it
#: (MPI's copy, the digest, the write's copy into the page cache): 1.0-1.5 GB/s here by
#: ``mpistage calibrate`` on busy days, 2.6-3.0 on quiet ones.
ASSUMED_CPU_RATE = 1.2e9


@dataclass(frozen=True)
class Parameters:
    """Calibrated machine parameters (SI units: seconds, bytes per second).

    The last three are the processor's (LogGP's ``o`` and a per-byte cost): ``overhead``
    is the CPU a rank spends per chunk message it sends or receives (MPI's call and the
    engine's own work around it), ``cpu_rate`` the bytes/s one rank's CPU carries per
    message end through its per-byte work (MPI's copy, and its part of the digest and
    of the write's or read's copy), ``share`` the transfer's ranks per core on the most
    crowded machine (4 ranks on a 2-core host: 2; 0, as where nothing is known of
    the placement: the crowd is not charged).
    Zero overhead and an infinite rate leave the CPU out: the wire-only model.
    """

    latency: float
    bandwidth: float
    read_bandwidth: float = math.inf
    write_bandwidth: float = math.inf
    shared_read_bandwidth: float = math.inf
    startup: float = 0.0
    file_cost: float = 0.0
    overhead: float = 0.0
    cpu_rate: float = math.inf
    share: float = 0.0

    def to_dict(self) -> dict[str, float | None]:
        return {k: (None if math.isinf(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, float | None]) -> Parameters:
        return cls(**{k: math.inf if data.get(k) is None else float(data[k])  # type: ignore[arg-type]
                      for k in ("latency", "bandwidth", "read_bandwidth", "write_bandwidth",
                                "shared_read_bandwidth", "startup", "file_cost", "overhead",
                                "cpu_rate", "share")
                      if k in data})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Parameters:
        """The parameters of a calibration file written by ``mpistage calibrate``."""
        import json  # a run without a calibration file does not pay for it

        with open(path, encoding="utf-8") as source:
            data = json.load(source)
        if data.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not an mpistage calibration file (schema {SCHEMA})")
        return cls.from_dict(data["parameters"])

    def message_cpu(self, nbytes: float) -> float:
        """CPU seconds one end of a message of ``nbytes`` costs its rank."""
        return self.overhead + nbytes / self.cpu_rate

    def rank_cpu(self, ends: float, nbytes: float) -> float:
        """CPU seconds a rank with ``ends`` message ends per chunk spends on a chunk of
        ``nbytes``: ``o`` per end, and at least two ends' per-byte work however few its
        ends.  An end is half a rank's own copy through fresh pages and digest, plus one
        MPI copy (:mod:`mpistage.model.cpu_rate`); a relaying rank's two ends are its
        whole work, but a chain's root (its read) and a leaf (its write) do that copy
        and digest with one end (one host, 1 GiB to 2 ranks in 1 MiB chunks: each rank
        1.3-1.4 CPU-s, where one end per chunk would be 0.6)."""
        return ends * self.overhead + max(ends, 2.0) * nbytes / self.cpu_rate

    def reading(self, readers: int) -> float:
        """Bytes/s ``readers`` nodes read the source at, all together."""
        if readers <= 1:
            return self.read_bandwidth
        return min(readers * self.read_bandwidth, self.shared_read_bandwidth)


def shape(algorithm: str, nodes: int, arity: int = 2) -> tuple[int, int]:
    """``(fan_out, fill)`` of a point-to-point schedule: the busiest sender's children,
    and the hops before the first chunk reaches the last node (from the schedule's own
    parent and children, :meth:`mpistage.engine.schedules.Schedule.shape`)."""
    schedule = SCHEDULES.get(algorithm)
    if schedule is None or not schedule.point_to_point:
        raise ValueError(f"no shape for algorithm {algorithm!r}")
    return schedule.shape(nodes, arity)


def predict(
    algorithm: str, size: int, nodes: int, chunk: int, params: Parameters, arity: int = 2,
    files: int = 0, codec: CodecCost | None = None,
) -> float:
    """Predicted seconds to stage ``size`` bytes to ``nodes`` nodes (start-up included);
    ``files``: the files of a tree's stream (``size`` then counts their digests too);
    ``codec``: how chunks are compressed (``None``: not at all).

    Raises:
        ValueError: an unknown algorithm, or a chunk size below one byte.
    """
    if algorithm not in MODELLED:
        raise ValueError(f"unknown algorithm {algorithm!r}: expected one of {', '.join(MODELLED)}")
    if chunk < 1:
        raise ValueError(f"invalid chunk size {chunk}")
    if size == 0:
        return params.startup
    return sum(_terms(algorithm, size, nodes, chunk, params, arity, files, codec).values())


#: The resources a step can wait for, as :func:`bound` names them.
RESOURCES = ("link", "CPU", "read", "write")


def bound(
    algorithm: str, size: int, nodes: int, chunk: int, params: Parameters, arity: int = 2,
    files: int = 0, codec: CodecCost | None = None,
) -> str:
    """Which resource paces the pipeline's steady steps: ``"link"``, ``"CPU"``,
    ``"read"`` (the source) or ``"write"`` (the disk); for a file of one chunk, the
    one the single step waits for longest."""
    terms = _step_terms(algorithm, size, nodes, chunk, params, arity, files, codec)
    return max(terms, key=lambda name: terms[name])


def _step_terms(
    algorithm: str, size: int, nodes: int, chunk: int, params: Parameters, arity: int,
    files: int, codec: CodecCost | None,
) -> dict[str, float]:
    """Seconds one steady step needs of each resource (:data:`RESOURCES`)."""
    chunk = max(1, min(chunk, size))
    write_bandwidth = params.write_bandwidth
    if files and params.file_cost > 0:
        write_bandwidth = size / (size / write_bandwidth + files * params.file_cost)
    schedule = SCHEDULES[algorithm]
    read = chunk / params.reading(schedule.readers(nodes))
    write, wire = chunk / write_bandwidth, chunk
    if codec is not None:
        read += chunk / codec.encode_rate
        write += chunk / codec.decode_rate
        wire = chunk * codec.ratio
    if nodes <= 1:
        return {"link": 0.0, "CPU": 0.0, "read": read, "write": write}
    # every node receives each chunk once: 2(N − 1) message ends per chunk in all, and
    # every rank copies and digests it (two ends' bytes, :meth:`Parameters.rank_cpu`),
    # so ranks crowded onto shared cores pay that over the ranks, per core
    crowd = params.share * (2 * (nodes - 1) * params.overhead
                            + 2 * nodes * wire / params.cpu_rate) / nodes
    if not SCHEDULES[algorithm].point_to_point:  # MPI's own broadcast
        messages = bcast_model.step_messages(chunk, nodes)
        wire_bytes = bcast_model.step_bytes(chunk, nodes)
        link = messages * params.latency + wire_bytes / params.bandwidth
        cpu = max(1.0, params.share) * ((messages + 1) * params.overhead
                                        + (wire_bytes + chunk) / params.cpu_rate)
    else:
        fan_out, _ = shape(algorithm, nodes, arity)
        link = fan_out * (params.latency + wire / params.bandwidth)
        # the busiest rank receives the chunk and sends it to each child (with two
        # nodes, each rank does one of the two; in a binomial tree or flat the root,
        # which receives nothing, sends the most), unless sharing cores is worse: then
        # the codec's CPU (the root's encoding, every other node's decoding) is shared too
        busiest = fan_out + (1 if nodes > 2 and not SCHEDULES[algorithm].root_busiest else 0)
        coding = 0.0
        if codec is not None and params.share:
            coding = params.share * ((nodes - 1) * chunk / codec.decode_rate
                                     + chunk * codec.encode_threads / codec.encode_rate) / nodes
        cpu = max(params.rank_cpu(busiest, wire), crowd + coding)
    return {"link": link, "CPU": cpu, "read": read, "write": write}


def _terms(
    algorithm: str, size: int, nodes: int, chunk: int, params: Parameters, arity: int,
    files: int, codec: CodecCost | None,
) -> dict[str, float]:
    """The predicted time in parts: ``startup``, ``steps`` (the steady chunks, each
    at the pace of the slowest resource), ``fill`` (the first chunk's way to the last
    node) and ``ends`` (the first read and the last write, which overlap nothing)."""
    chunk = min(chunk, size)
    chunks = math.ceil(size / chunk)
    steady = _step_terms(algorithm, size, nodes, chunk, params, arity, files, codec)
    step = max(steady.values())
    # the first chunks are read by every reader at once, each at its share of the rate
    ends = max(steady["read"] * SCHEDULES[algorithm].readers(nodes), steady["write"])
    if nodes <= 1:
        return {"startup": params.startup, "steps": chunks * step, "fill": 0.0, "ends": 0.0}
    wire = chunk * codec.ratio if codec is not None else chunk
    # one hop of the first chunk: its wire time, or the CPU to receive and send it
    # where that is longer (the ranks on its way do nothing else meanwhile)
    hop_cpu = params.rank_cpu(2, wire)
    if not SCHEDULES[algorithm].point_to_point:  # MPI's own broadcast
        messages, first_bytes = bcast_model.first_chunk(chunk, nodes)
        first = max(messages * params.latency + first_bytes / params.bandwidth,
                    messages * hop_cpu)
        step = max(step, first / bcast_model.IN_FLIGHT)
        return {"startup": params.startup, "steps": (chunks - 1) * step, "fill": first,
                "ends": ends}
    _, fill = shape(algorithm, nodes, arity)
    hop = max(params.latency + wire / params.bandwidth, hop_cpu)
    return {"startup": params.startup, "steps": (chunks - 1) * step, "fill": fill * hop,
            "ends": ends}


def ka_terms(params: Parameters, size: int) -> dict[str, float]:
    """The Ka paper's symbols in terms of the calibrated parameters (see module doc)."""
    return {"d": params.latency, "d_prime": params.latency, "L": size / params.bandwidth,
            "I": params.startup}
