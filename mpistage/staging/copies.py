"""What a node's copy is: one file, or a tree; the staging run asks it for its parts.

A run moves one stream through one engine either way; what differs is where the root's
bytes come from (the source), where a node's go (the sink), how a node's copy is judged
and how it is put in place.  :class:`FileCopy` is the one file of the plan;
:class:`mpistage.staging.treecopy.TreeCopy` a tree's files, checked per file (imported only by a
tree's run: a file's run does not pay for its modules).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine.pipeline import EngineResult, ProgressCallback, SourceFactory
from ..plan import Plan
from ..sinks.file import Sink
from ..sources.share import ShareSource
from ..sources.source import FileSource
from .preflight import NodeCheck

if TYPE_CHECKING:
    from ..sinks.pipe import PipeSink

log = logging.getLogger("mpistage.staging.copies")

#: The root's ``(source_digest, read_error, source_size)``, as every participant learns it.
SourceOutcome = tuple[str | None, str | None, int | None]


def judge_stream(result: EngineResult, source_digest: str | None,
                 source_error: str | None) -> str | None:
    """Why this node's copy must not be kept (the stream's side, for one file or a
    tree), or ``None``."""
    if source_error is not None:
        return f"source read failed on the root: {source_error}"
    if result.write_error is not None:
        return result.write_error
    return None


def remove_outdated(target: str, judged: tuple[int, int]) -> None:
    """``--remove-first``: delete the copy that pre-flight judged outdated (the disk
    cannot hold old and new together), and only that one.

    Another mpistage on this node may have staged the same path since: with
    ``--remove-first`` it removed the old copy already (nothing left to do), or it put
    its own finished copy there, which a job may be using: that copy stays, and this
    run's rename replaces it in one step.  (A rename between the ``lstat`` and the
    ``unlink`` below still loses the other run's copy: a window of microseconds.)
    """
    try:
        found = os.lstat(target)
    except FileNotFoundError:
        return
    if (found.st_dev, found.st_ino) != judged:
        log.info("%s is no longer the copy checked before the transfer (another run "
                 "staged it meanwhile): left in place until this copy replaces it", target)
        return
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass


@dataclass
class FileCopy:
    """One file: a :class:`mpistage.sinks.file.Sink` at the node's target, digest of it all.

    Attributes:
        source: makes the root's source: the plan's file, or a stream
            (:class:`mpistage.sources.streams.StreamSource`).
    """

    source: SourceFactory = FileSource
    digest_writes = True
    files_in_stream = 0  # one file's bytes: no per-file cost in the model

    def open_sink(self, mine: NodeCheck, *, remove_first: bool, fsync: bool,
                  verify: bool) -> Sink:
        assert mine.target is not None
        if remove_first and mine.existing_inode is not None:
            remove_outdated(mine.target, mine.existing_inode)
        return Sink(mine.target)

    def judge(self, result: EngineResult, outcome: SourceOutcome,
              sink: Sink | PipeSink | None) -> str | None:
        error = judge_stream(result, outcome[0], outcome[1])
        if error is None and result.digest != outcome[0]:
            error = f"digest mismatch: wrote {result.digest}, source {outcome[0]}"
        return error

    def finish(self, sink: Sink, plan: Plan, *, fsync: bool, verify: bool,
               source_digest: str | None) -> None:
        sink.commit(mode=plan.mode, mtime_ns=plan.mtime_ns, fsync=fsync,
                    verify_digest=source_digest if verify else None)

    def for_plan(self, plan: Plan) -> FileCopy:
        """The copy as the plan reads the source: where every node reads a share,
        :class:`SharedReadCopy`."""
        return SharedReadCopy() if plan.read_by == "all" else self

    def progress(self, callback: ProgressCallback) -> ProgressCallback:
        return callback

    def summary(self) -> None:
        """A tree's counts for the report; a file has none."""
        return None

    def counts(self, mine: NodeCheck, status: str) -> dict[str, int]:
        return {"files_copied": int(status == "copied"),
                "files_up_to_date": int(status == "up-to-date"),
                "files_failed": int(status == "failed")}


@dataclass
class PipeCopy(FileCopy):
    """``--pipe CMD``: the bytes go to a command's input on each node
    (:class:`mpistage.sinks.pipe.PipeSink`); the node's target is the expanded command."""

    def open_sink(self, mine: NodeCheck, *, remove_first: bool, fsync: bool,
                  verify: bool) -> PipeSink:
        from ..sinks.pipe import PipeSink

        assert mine.target is not None
        return PipeSink(mine.target)

    def finish(self, sink: PipeSink, plan: Plan, *, fsync: bool, verify: bool,  # type: ignore[override]
               source_digest: str | None) -> None:
        sink.finish()


@dataclass
class SharedReadCopy(FileCopy):
    """One file that every node reads a share of (``--read-by all``,
    :mod:`mpistage.engine.ring`): each node's reader is a
    :class:`mpistage.sources.share.ShareSource`, and the copy's digest, like the source's,
    is a hash list of its chunks (:class:`mpistage.digest.ChunkDigests`), re-read so by
    ``--verify``."""

    source: SourceFactory = ShareSource

    def judge(self, result: EngineResult, outcome: SourceOutcome,
              sink: Sink | PipeSink | None) -> str | None:
        if result.read_error is not None:
            return f"reading this node's share of the source failed: {result.read_error}"
        return super().judge(result, outcome, sink)

    def finish(self, sink: Sink, plan: Plan, *, fsync: bool, verify: bool,
               source_digest: str | None) -> None:
        sink.commit(mode=plan.mode, mtime_ns=plan.mtime_ns, fsync=fsync,
                    verify_digest=source_digest if verify else None,
                    verify_chunk=plan.chunk_size)

    def for_plan(self, plan: Plan) -> FileCopy:
        return self
