"""A tree as the staging run sees it: its source, its sink, how a node's copy is judged.

See :mod:`mpistage.staging.copies` (a file's counterpart) and :mod:`mpistage.sinks.tree`.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from ..engine.buffers import BufferPool, PhaseClock
from ..engine.pipeline import EngineResult, ProgressCallback
from ..plan import Plan
from ..sinks.tree import TreeSink
from ..sinks.tree_commit import NodeTree
from ..sources.manifest import DIRECTORY, FILE, SYMLINK, TRAILER, Manifest, stream_files
from ..sources.tree import TreeSource
from .copies import SourceOutcome, judge_stream
from .preflight import NodeCheck


@dataclass
class TreeCopy:
    """A tree: a :class:`mpistage.sinks.tree.TreeSink`, each file checked on its own.

    Attributes:
        needed: per entry, 1 where the file is in the stream.
        node: this leader's view of its destination (``None`` elsewhere).
        files_in_stream, bytes_in_stream: the stream's files (what the model charges φ
            for) and their bytes, each file's digest included (the plan's size).
    """

    manifest: Manifest
    needed: bytearray
    node: NodeTree | None
    delete: bool = False
    digest_writes = False  # the sink checks each file against its own digest
    files_in_stream: int = field(init=False)
    bytes_in_stream: int = field(init=False)

    def __post_init__(self) -> None:
        sizes = self.manifest.sizes
        self._ends = array("q")  # where each file of the stream ends, digest included
        end = 0
        for index in stream_files(self.manifest, self.needed):
            end += sizes[index] + TRAILER
            self._ends.append(end)
        self.files_in_stream = len(self._ends)
        self.bytes_in_stream = end

    def for_plan(self, plan: Plan) -> TreeCopy:
        """A tree is read by the root (its files are one stream)."""
        return self

    def source(self, plan: Plan, pool: BufferPool, clock: PhaseClock) -> TreeSource:
        return TreeSource(plan, pool, clock, manifest=self.manifest, needed=self.needed)

    def open_sink(self, mine: NodeCheck, *, remove_first: bool, fsync: bool,
                  verify: bool) -> TreeSink:
        assert self.node is not None
        return TreeSink(self.manifest, self.needed, self.node, fsync=fsync,
                        remove_first=remove_first, verify=verify, delete=self.delete)

    def judge(self, result: EngineResult, outcome: SourceOutcome,
              sink: TreeSink | None) -> str | None:
        error = judge_stream(result, outcome[0], outcome[1])
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
        ends = self._ends

        def tell(done: int, total: int) -> None:
            files(bisect_right(ends, done), len(ends))
            callback(done, total)

        return tell

    def summary(self) -> dict[str, Any]:
        """The tree's counts for the report: entries by type, bytes, what was sent."""
        kinds = self.manifest.kinds
        return {
            "files": kinds.count(FILE),
            "directories": kinds.count(DIRECTORY),
            "symlinks": kinds.count(SYMLINK),
            "bytes": self.manifest.total_bytes,
            "files_sent": self.files_in_stream,
            "bytes_sent": self.bytes_in_stream - TRAILER * self.files_in_stream,
            "skipped_special": list(self.manifest.skipped),
        }

    def counts(self, mine: NodeCheck, status: str) -> dict[str, int]:
        """Files this node copied, had already, and failed to get."""
        copied = mine.files_wanted if status == "copied" else 0
        failed = mine.files_wanted if status == "failed" else 0
        return {"files_copied": copied, "files_up_to_date": mine.files_have,
                "files_failed": failed}
