"""Timings gathered to rank 0: the human summary and the JSON report.

The JSON layout is the contract with the cost-model tooling; it is documented in the
docs/report.md ("Report format") and versioned by ``SCHEMA``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..digest import ALGORITHM as DIGEST_ALGORITHM
from ..sinks.file import current_umask

if TYPE_CHECKING:
    from ..model.decide import Prediction
    from ..plan import Plan
    from .preflight import NodeCheck

SCHEMA = "mpistage.staging.report/1"

#: Phases in the order a run goes through them.
PHASES = (
    "startup", "plan", "read", "encode", "wait", "decode", "write", "digest", "transfer",
    "cpu", "fsync", "verify", "rename", "total",
)


#: What became of a node: it received a verified copy, it already had one, another node
#: wrote the file it sees at DEST and it checked it (``--shared-dest``), it was left out
#: by the pre-flight check (``--skip-bad-nodes``), or it failed.
STATUSES = ("copied", "up-to-date", "shared", "skipped", "failed")


@dataclass
class NodeResult:
    """Outcome on one node, as its leader reported it (or as rank 0 inferred it)."""

    index: int
    host: str
    rank: int
    path: str | None
    status: str
    error: str | None = None
    digest: str | None = None
    bytes: int = 0
    files_copied: int = 0
    files_up_to_date: int = 0
    files_failed: int = 0
    wire_bytes: int = 0
    stderr: str | None = None

    @property
    def ok(self) -> bool:
        """The node holds a verified copy."""
        return self.status in ("copied", "up-to-date", "shared")


@dataclass
class RankRecord:
    """Seconds per phase on one rank; ``phases`` has only the phases the rank went through."""

    rank: int
    node: int
    host: str
    leader: bool
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RankStatus:
    """What one rank tells rank 0 at the end of a run (pickled, a few hundred bytes).

    Attributes:
        result: its node's outcome (node leaders only).
        source_outcome: the root's ``(source_digest, read_error, source_size)`` as this
            rank learnt it
            (the transfer's participants only).
        stall: why this rank's transfer stalled, if it did.
        prediction: the model's prediction (the transfer's participants only).
        lost: nodes the transfer lost mid-way and went on without (index -> why; the
            transfer's root only, :mod:`mpistage.engine.recovery`).
    """

    record: RankRecord
    result: NodeResult | None = None
    source_outcome: tuple[str | None, str | None, int | None] | None = None
    stall: str | None = None
    prediction: Prediction | None = None
    lost: dict[int, str] = field(default_factory=dict)


@dataclass
class StageReport:
    """What a staging run did, the same object on every rank."""

    version: str
    source: str
    size: int
    source_digest: str | None
    algorithm: str
    chunk_size: int
    depth: int
    nodes: list[NodeResult]
    ranks: list[RankRecord]
    ok: bool = False
    source_error: str | None = None
    stalled: bool = False
    stall: str | None = None
    missing_ranks: list[int] = field(default_factory=list)
    prediction: dict[str, Any] | None = None
    tree: dict[str, Any] | None = None
    codec: str = "none"
    pipe: str | None = None
    #: Who read the source: ``"root"``, or ``"all"`` (every node its share; the digest is
    #: then the hash list of the readers' chunk digests, :class:`~mpistage.digest.ChunkDigests`).
    read_by: str = "root"
    #: Rank 0 only: whether this report reached every rank (not when a rank died after
    #: it reported; the CLI then ends the job instead of waiting for it to finalize).
    reached_all: bool = True

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    @property
    def failed(self) -> list[NodeResult]:
        return [n for n in self.nodes if not n.ok]

    @property
    def elapsed(self) -> float:
        """Wall time of the whole run: the slowest rank's total."""
        return max((r.phases.get("total", 0.0) for r in self.ranks), default=0.0)

    @property
    def transfer_seconds(self) -> float:
        """Time data was moving: the slowest leader's transfer phase."""
        return max((r.phases.get("transfer", 0.0) for r in self.ranks if r.leader), default=0.0)

    def phase_stats(self) -> dict[str, dict[str, Any]]:
        """Per phase over node leaders: min, median, max and the slowest node."""
        stats: dict[str, dict[str, Any]] = {}
        leaders = [r for r in self.ranks if r.leader]
        for phase in PHASES:
            values = [(r.phases[phase], r.node) for r in leaders if phase in r.phases]
            if not values:
                continue
            seconds = [v for v, _ in values]
            slowest = max(values)
            stats[phase] = {
                "min": min(seconds),
                "median": _median(seconds),
                "max": slowest[0],
                "slowest_node": slowest[1],
            }
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": self.version,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "source": {
                "path": self.source,
                "size": self.size,
                "digest": self.source_digest,
                "digest_algorithm": (DIGEST_ALGORITHM if self.read_by == "root"
                                     else f"{DIGEST_ALGORITHM} of each chunk's "
                                     f"{DIGEST_ALGORITHM} in order, by its reader"),
                "error": self.source_error,
                "read_by": self.read_by,
            },
            "algorithm": self.algorithm,
            "chunk_size": self.chunk_size,
            "codec": self.codec,
            "wire_bytes": self.wire_bytes,
            "pipe": self.pipe,
            "depth": self.depth,
            "node_count": len(self.nodes),
            "rank_count": len(self.ranks),
            "elapsed": self.elapsed,
            "transfer_seconds": self.transfer_seconds,
            "phases": self.phase_stats(),
            "prediction": self.prediction,
            "stalled": self.stalled,
            "stall": self.stall,
            "missing_ranks": self.missing_ranks,
            "tree": self.tree,
            "nodes": [{**asdict(n), "ok": n.ok} for n in self.nodes],
            "ranks": [asdict(r) for r in self.ranks],
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON, atomically (a reader never sees half a report) and
        safely in a shared directory: the temp file has an unpredictable name and is
        created exclusively, so a symlink planted beside ``path`` redirects nothing."""
        import json  # only runs with --report pay for it

        final = os.path.abspath(os.fspath(path))
        fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(final)[:100]}.",
                                    suffix=".tmp", dir=os.path.dirname(final))
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
            with open(fd, "w", encoding="utf-8") as out:
                json.dump(self.to_dict(), out, indent=2)
                out.write("\n")
            os.replace(temp, final)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    @property
    def wire_bytes(self) -> int:
        """Bytes of the messages that carried the source (encoded, with frame headers),
        once per hop: what compression saved is ``size`` against this."""
        return max((n.wire_bytes for n in self.nodes), default=0)

    def summary(self) -> str:
        """Several lines for a person: the outcome first, then the phase table
        (:func:`mpistage.staging.summary.render`)."""
        from .summary import render

        return render(self)


def build_report(
    plan: Plan, checks: list[NodeCheck], statuses: list[RankStatus], missing: list[int],
    stall: str | None, depth: int, tree: dict[str, Any] | None = None,
    pipe: str | None = None, lost: dict[int, str] | None = None,
) -> StageReport:
    """Rank 0: the report of a run from the statuses that reached it (in rank order);
    a node without a status is reported failed: lost mid-transfer (``lost`` says why)
    or dead or unreachable."""
    results = {s.result.index: s.result for s in statuses if s.result is not None}
    lost = lost or {}
    nodes = [results.get(check.index) or NodeResult(
                index=check.index, host=check.host, rank=check.rank, path=check.target,
                status="failed",
                error=lost.get(check.index, "no status from this node (dead or unreachable)"))
             for check in checks]
    outcomes = [s.source_outcome for s in statuses if s.source_outcome is not None]
    source_digest, source_error, source_size = outcomes[0] if outcomes else (None, None, None)
    predictions = [s.prediction for s in statuses if s.prediction is not None]
    prediction = predictions[0] if predictions else None
    return StageReport(
        version=__version__,
        source=plan.source,
        size=source_size if plan.stream and source_size is not None else plan.size,
        source_digest=source_digest,
        algorithm=plan.algorithm,
        chunk_size=plan.chunk_size,
        depth=depth,
        nodes=nodes,
        ranks=[s.record for s in statuses],
        ok=stall is None and all(n.ok for n in nodes),
        source_error=source_error,
        stalled=stall is not None,
        stall=stall,
        missing_ranks=missing,
        prediction=prediction.to_dict() if prediction else None,
        tree=tree,
        codec=plan.codec,
        pipe=pipe,
        read_by=plan.read_by,
    )


def _median(values: list[float]) -> float:
    """The median (``statistics`` would cost every run ~10 ms of imports)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
