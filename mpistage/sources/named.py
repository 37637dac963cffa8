"""What the user named: one file, a directory, several sources, or a file list.

One regular file is staged as today (:func:`mpistage.plan.describe_source`); anything
else is a tree (:mod:`mpistage.sources.manifest`).  A source named on the command line that is
a symlink is followed (as ``cp -H`` does); symlinks inside a tree are copied as links.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from ..errors import UsageError
from ..plan import SourceInfo, check_template

if TYPE_CHECKING:
    from .manifest import Manifest

#: What :func:`mpistage.stage` takes as its source.
Sources = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]], None]

#: Source names shown in a summary before "and N more".
_SHOWN = 3


@dataclass(frozen=True)
class SourceSpec:
    """The sources of a run, as given (checked on the root only, where they are)."""

    sources: tuple[str, ...]
    files_from: str | None = None
    base: str | None = None
    nul: bool = False

    @classmethod
    def of(cls, source: Sources, files_from: str | os.PathLike[str] | None = None,
           base: str | os.PathLike[str] | None = None, nul: bool = False) -> SourceSpec:
        """Raises :class:`UsageError` (on every rank alike) for a contradictory request."""
        if source is None:
            sources: tuple[str, ...] = ()
        elif isinstance(source, (str, os.PathLike)):
            sources = (os.fspath(source),)
        else:
            sources = tuple(os.fspath(s) for s in source)
        if files_from is not None and sources:
            raise UsageError("give sources or --files-from, not both")
        if files_from is None and not sources:
            raise UsageError("no source given")
        if base is not None and files_from is None:
            raise UsageError("--base goes with --files-from")
        if any(not s for s in sources):
            raise UsageError("a source is empty")
        return cls(sources, None if files_from is None else os.fspath(files_from),
                   None if base is None else os.fspath(base), nul)

    def is_tree(self) -> bool:
        """Root only: anything but one regular file (or a symlink to one)."""
        return (self.files_from is not None or len(self.sources) > 1
                or os.path.isdir(self.sources[0]))

    def walk(self, dest: str, *, skip_special: bool) -> tuple[Manifest, SourceInfo]:
        """Root only: the tree's manifest, and a description of it for the plan (its
        size is the stream's, set once the nodes have said what they lack)."""
        from .manifest import read_list, walk, walk_list  # a file's run never walks

        check_template(dest)
        if self.files_from is not None:
            listing = os.path.abspath(self.files_from)
            base = self.base if self.base is not None else os.path.dirname(listing)
            if not os.path.isdir(base):
                raise UsageError(f"--base {base!r} is not a directory")
            manifest = walk_list(read_list(listing, nul=self.nul), base,
                                 skip_special=skip_special)
            shown = f"the {manifest.file_count} files listed in {listing}"
        else:
            manifest = walk(self.sources, skip_special=skip_special)
            names = [os.path.abspath(s) for s in self.sources]
            shown = ", ".join(names[:_SHOWN])
            if len(names) > _SHOWN:
                shown += f" and {len(names) - _SHOWN} more"
        return manifest, SourceInfo(source=shown, size=0, mode=0, mtime_ns=0, dest=dest)
