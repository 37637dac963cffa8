"""What a node's copy is: one file, or a tree; the staging run asks it for its parts.

A run moves one stream through one engine either way; what differs is where the root's
bytes come from (the source), where a node's go (the sink), how a node's copy is judged
and how it is put in place.  :class:`FileCopy` is the one file of the plan;
:class:`TreeCopy` a tree's files (:mod:`mpistage.manifest`), checked per file.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_right
from dataclasses import dataclass

from .buffers import BufferPool, PhaseClock
from .manifest import TRAILER, Manifest, stream_files
from .pipeline import EngineResult, ProgressCallback, SourceFactory
from .plan import Plan
from .preflight import NodeCheck
from .sink import Sink
from .source import FileSource
from .treesink import NodeTree, TreeSink
from .treesource import TreeSource

#: The root's ``(source_digest, read_error)``, as every participant learns it.
SourceOutcome = tuple[str | None, str | None]


def _judge(result: EngineResult, source_digest: str | None, source_error: str | None) -> str | None:
    """Why this node's copy must not be kept (the stream's side), or ``None``."""
    if source_error is not None:
        return f"source read failed on the root: {source_error}"
    if result.write_error is not None:
        return result.write_error
    return None


class FileCopy:
    """One file: a :class:`mpistage.sink.Sink` at the node's target, digest of it all."""

    source: SourceFactory = FileSource
    digest_writes = True
    files_in_stream = 0  # one file's bytes: no per-file cost in the model

    def open_sink(self, mine: NodeCheck, *, remove_first: bool, fsync: bool,
                  verify: bool) -> Sink:
        assert mine.target is not None
        if remove_first and mine.existing_size is not None:
            os.unlink(mine.target)  # the disk cannot hold old and new together
        return Sink(mine.target)

    def judge(self, result: EngineResult, outcome: SourceOutcome, sink: Sink | None) -> str | None:
        error = _judge(result, *outcome)
        if error is None and result.digest != outcome[0]:
            error = f"digest mismatch: wrote {result.digest}, source {outcome[0]}"
        return error

    def finish(self, sink: Sink, plan: Plan, *, fsync: bool, verify: bool,
               source_digest: str | None) -> None:
        sink.commit(mode=plan.mode, mtime_ns=plan.mtime_ns, fsync=fsync,
                    verify_digest=source_digest if verify else None)

    def progress(self, callback: ProgressCallback) -> ProgressCallback:
        return callback

    def counts(self, mine: NodeCheck, status: str) -> dict[str, int]:
        return {"files_copied": int(status == "copied"),
                "files_up_to_date": int(status == "up-to-date"),
                "files_failed": int(status == "failed")}


@dataclass
class TreeCopy:
    """A tree: a :class:`mpistage.treesink.TreeSink`, each file checked on its own.

    Attributes:
        needed: per entry, 1 where the file is in the stream.
        node: this leader's view of its destination (``None`` elsewhere).
    """

    manifest: Manifest
    needed: bytearray
    node: NodeTree | None
    delete: bool = False
    digest_writes = False  # the sink checks each file against its own digest

    @property
    def files_in_stream(self) -> int:
        """Files in the stream (what the model charges φ for)."""
        return sum(1 for _ in stream_files(self.manifest, self.needed))

    def source(self, plan: Plan, pool: BufferPool, clock: PhaseClock) -> TreeSource:
        return TreeSource(plan, pool, clock, manifest=self.manifest, needed=self.needed)

    def open_sink(self, mine: NodeCheck, *, remove_first: bool, fsync: bool,
                  verify: bool) -> TreeSink:
        assert self.node is not None
        return TreeSink(self.manifest, self.needed, self.node, fsync=fsync,
                        remove_first=remove_first, verify=verify, delete=self.delete)

    def judge(self, result: EngineResult, outcome: SourceOutcome,
              sink: TreeSink | None) -> str | None:
        error = _judge(result, *outcome)
        if error is None and sink is not None:
            error = sink.error
            if error is None and not sink.finished():
                error = "the stream ended before every file had arrived"
        return error

    def finish(self, sink: TreeSink, plan: Plan, *, fsync: bool, verify: bool,
               source_digest: str | None) -> None:
        sink.commit(fsync=fsync, verify=verify)

    def progress(self, callback: ProgressCallback) -> ProgressCallback:
        """``callback``, also told the files sent (through its ``files`` method, if it
        has one): the files whose last byte and digest have left the root."""
        files = getattr(callback, "files", None)
        if files is None:
            return callback
        ends = array("q")
        for index in stream_files(self.manifest, self.needed):
            ends.append((ends[-1] if ends else 0) + self.manifest.sizes[index] + TRAILER)

        def tell(done: int, total: int) -> None:
            files(bisect_right(ends, done), len(ends))
            callback(done, total)

        return tell

    def counts(self, mine: NodeCheck, status: str) -> dict[str, int]:
        """Files this node copied, had already, and failed to get."""
        copied = mine.files_wanted if status == "copied" else 0
        failed = mine.files_wanted if status == "failed" else 0
        return {"files_copied": copied, "files_up_to_date": mine.files_have,
                "files_failed": failed}

