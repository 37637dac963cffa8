"""The run's summary for a person (rank 0 prints it): the outcome first, then what each
failed node says, the model's line, and the phase table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..digest import ALGORITHM as DIGEST_ALGORITHM
from ..model import ASSUMED_LOCAL_RATE
from ..plan import source_label
from ..units import format_bytes, format_rate, format_seconds


class _Node(Protocol):
    """What the summary reads of a node's result (:class:`mpistage.staging.report.NodeResult`)."""

    index: int
    host: str
    rank: int
    status: str
    error: str | None
    stderr: str | None

    @property
    def ok(self) -> bool: ...


class Summarised(Protocol):
    """What the summary reads of a report (:class:`mpistage.staging.report.StageReport`,
    which calls :func:`render`; named here so that this module needs nothing from it)."""

    source: str
    size: int
    source_digest: str | None
    algorithm: str
    chunk_size: int
    ok: bool
    source_error: str | None
    stall: str | None
    missing_ranks: list[int]
    prediction: dict[str, Any] | None
    tree: dict[str, Any] | None
    codec: str
    pipe: str | None
    read_by: str

    @property
    def wire_bytes(self) -> int: ...

    @property
    def nodes(self) -> Sequence[_Node]: ...

    @property
    def failed(self) -> Sequence[_Node]: ...

    @property
    def elapsed(self) -> float: ...

    @property
    def transfer_seconds(self) -> float: ...

    def phase_stats(self) -> dict[str, dict[str, Any]]: ...


#: Nodes whose ``--pipe`` command's stderr the summary shows.
_STDERR_NODES = 3


def render(report: Summarised) -> str:
    """Several lines: the headline, the outcome, notes, the model, the phases."""
    lines = [_headline(report)]
    fresh = _outcome(report, lines)
    _notes(report, fresh, lines)
    if report.prediction and report.transfer_seconds > 0:
        lines.append(_model_line(report))
    _phase_table(report, lines)
    return "\n".join(lines)


def _headline(report: Summarised) -> str:
    """What went where, how, and how long it took."""
    n = len(report.nodes)
    if report.transfer_seconds <= 0:
        moved = "nothing to send"
    elif report.size == 0:
        empty = "no file's bytes" if report.tree else "an empty file"
        moved = f"transfer {format_seconds(report.transfer_seconds)} ({empty})"
    else:
        moved = (f"transfer {format_seconds(report.transfer_seconds)}"
                 f" ({format_rate(report.size, report.transfer_seconds)} into every node)")
    what = _describe_tree(report.tree) if report.tree else format_bytes(report.size)
    source = source_label(report.source)
    codec = ""
    if report.codec != "none":
        saved = f", {report.size / report.wire_bytes:.2f}x smaller" if report.wire_bytes else ""
        codec = f", {report.codec}{saved}"
    return (f"mpistage: {source} ({what}) to {n} node"
            f"{'s' if n != 1 else ''} by {report.algorithm}, chunk "
            f"{format_bytes(report.chunk_size)}{codec}: {format_seconds(report.elapsed)} in "
            f"all, {moved}")


def _outcome(report: Summarised, lines: list[str]) -> list[int]:
    """Who holds a verified copy, or what failed; the nodes up to date already (unless
    every node was)."""
    n = len(report.nodes)
    good = n - len(report.failed)
    fresh = [node.index for node in report.nodes if node.status == "up-to-date"]
    if report.ok and len(fresh) == n:
        holders = "the node was" if n == 1 else f"all {n} nodes were"
        lines.append(f"  {holders} up to date already; nothing was sent")
        fresh = []
    elif report.ok and report.tree:
        holders = "the node holds" if n == 1 else f"all {n} nodes hold"
        lines.append(f"  {holders} a verified copy of the tree (each file checked against "
                     f"its {DIGEST_ALGORITHM} digest); {report.tree['files_sent']} of "
                     f"{report.tree['files']} files sent "
                     f"({format_bytes(report.tree['bytes_sent'])}), the rest already in place")
    elif report.ok and report.pipe:
        digest = f" ({DIGEST_ALGORITHM} {report.source_digest})" if report.source_digest else ""
        holders = "the node's" if n == 1 else f"all {n} nodes'"
        lines.append(f"  {holders} {report.pipe!r} took the verified stream{digest} and "
                     "exited 0")
    elif report.ok and report.read_by == "all":
        holders = "the node holds" if n == 1 else f"all {n} nodes hold"
        lines.append(f"  {holders} a verified copy: every node read its share, and each "
                     f"chunk was checked against its reader's {DIGEST_ALGORITHM} "
                     f"({DIGEST_ALGORITHM} of them in order: {report.source_digest})")
    elif report.ok:
        digest = f" ({DIGEST_ALGORITHM} {report.source_digest})" if report.source_digest else ""
        holders = "the node holds" if n == 1 else f"all {n} nodes hold"
        lines.append(f"  {holders} a verified copy{digest}")
    else:
        lines.append(f"  FAILED: {good} of {n} nodes hold a verified copy")
        if report.stall:
            lines.append(f"  {report.stall}")
        if report.source_error:
            lines.append(f"  source: {report.source_error}")
        for node in report.failed:
            lines.append(f"  node {node.index} ({node.host}, rank {node.rank}): {node.status}: {node.error}")
        if report.missing_ranks:
            lines.append(f"  no status from ranks {_ranges(report.missing_ranks)} (dead or unreachable)")
    return fresh


def _notes(report: Summarised, fresh: list[int], lines: list[str]) -> None:
    """Nodes up to date, sharing a file, commands' stderr, special files left out."""
    if fresh:
        lines.append(f"  up to date already, nothing sent: nodes {_ranges(fresh)}")
    sharing = [node.index for node in report.nodes if node.status == "shared"]
    if sharing:
        lines.append(f"  nodes {_ranges(sharing)} share another node's file "
                     "(--shared-dest: one file system at DEST), each checked it in place")
    chatty = [node for node in report.nodes if node.stderr and node.ok]
    for node in chatty[:_STDERR_NODES]:
        lines.append(f"  node {node.index} ({node.host}) command's stderr ended: {node.stderr}")
    if len(chatty) > _STDERR_NODES:
        lines.append(f"  (and {len(chatty) - _STDERR_NODES} more nodes' commands wrote to stderr)")
    if report.tree and report.tree["skipped_special"]:
        skipped = report.tree["skipped_special"]
        lines.append(f"  left out {len(skipped)} special file{'s' if len(skipped) != 1 else ''}"
                     f" (--skip-special): {', '.join(skipped[:3])}"
                     f"{' …' if len(skipped) > 3 else ''}")


def _model_line(report: Summarised) -> str:
    """The model's prediction against the measured transfer."""
    predicted = report.prediction["predicted"]
    error = (predicted - report.transfer_seconds) / report.transfer_seconds
    chosen = " (chosen by the model)" if report.prediction["auto"] else ""
    paced = (report.prediction.get("bounds") or {}).get(report.algorithm)
    chosen += f", bound by the {paced}" if paced else ""
    basis = report.prediction["source"]
    if basis == "quick measurement":  # disks unknown: see 'mpistage calibrate'
        read = report.prediction.get("parameters", {}).get("read_bandwidth")
        basis = ("quick link probe and source read, writes not measured"
                 if read is not None and read != ASSUMED_LOCAL_RATE
                 else "quick link probe, disks not measured")
    return (f"  model ({basis}): predicted transfer"
            f" {format_seconds(predicted)}{chosen}, measured"
            f" {format_seconds(report.transfer_seconds)} ({error:+.0%})")


def _phase_table(report: Summarised, lines: list[str]) -> None:
    """Each phase's min, median and max over the ranks, and its slowest node."""
    stats = report.phase_stats()
    if stats:
        lines.append(f"  {'phase':<9} {'min':>10} {'median':>10} {'max':>10}  slowest node")
        for phase, s in stats.items():
            lines.append(
                f"  {phase:<9} {format_seconds(s['min']):>10} {format_seconds(s['median']):>10}"
                f" {format_seconds(s['max']):>10}  {s['slowest_node']}"
            )


def _describe_tree(tree: dict[str, Any]) -> str:
    """``"4 files, 3 directories, 1 symlink, 293.0 KiB"``."""
    parts = [f"{tree[key]} {name if tree[key] == 1 else plural}"
             for key, name, plural in (("files", "file", "files"),
                                       ("directories", "directory", "directories"),
                                       ("symlinks", "symlink", "symlinks")) if tree[key]]
    return ", ".join([*parts, format_bytes(tree["bytes"])])


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2, 5, 7-8"``."""
    parts: list[list[int]] = []
    for number in sorted(numbers):
        if parts and parts[-1][1] == number - 1:
            parts[-1][1] = number
        else:
            parts.append([number, number])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)
