"""What is sent: decided once on the root, broadcast once, the same on every rank.

The plan holds only metadata (a few hundred bytes), so it travels pickled in one
``bcast``; the file's bytes never do.
"""

from __future__ import annotations

import os
import stat
import string
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

#: Placeholders a destination may contain, expanded on each node.
PLACEHOLDERS = ("node", "host", "rank")

MIN_CHUNK = 1
MAX_CHUNK = 1 << 30  # a few chunks stay in memory per rank; keep that bounded


@dataclass(frozen=True)
class Plan:
    """The transfer every rank agrees on.

    Attributes:
        source: path of the source file on the root.
        size: bytes to send (a Python int: files over 2 GiB need no special case).
        mode: permission bits of the source.
        mtime_ns: modification time of the source, preserved on every copy.
        chunk_size: bytes per pipeline message.
        algorithm: schedule name.
        dest: destination template as given (placeholders not yet expanded).
    """

    source: str
    size: int
    mode: int
    mtime_ns: int
    chunk_size: int
    algorithm: str
    dest: str

    @property
    def nchunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """Bytes in chunk ``index``: ``chunk_size`` except for a shorter last chunk."""
        if not 0 <= index < self.nchunks:
            raise IndexError(f"chunk {index} outside 0..{self.nchunks - 1}")
        return min(self.chunk_size, self.size - index * self.chunk_size)

    @property
    def source_name(self) -> str:
        return os.path.basename(self.source)


def check_chunk_size(chunk_size: int) -> int:
    """Return ``chunk_size`` if it is usable, else raise :class:`UsageError`."""
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"invalid chunk size {chunk_size}: expected 1 byte to 1 GiB")
    return chunk_size


def make_plan(source: str | os.PathLike[str], dest: str, chunk_size: int, algorithm: str) -> Plan:
    """Check the source on the root and describe the transfer.

    Raises:
        UsageError: the source is missing, unreadable, a directory or not a regular file.
    """
    path = os.fspath(source)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UsageError(f"source {path!r} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"source {path!r} is a directory; mpistage stages one file") from None
    except PermissionError:
        raise UsageError(f"source {path!r} is not readable (permission denied)") from None
    except OSError as exc:
        raise UsageError(f"source {path!r} cannot be opened: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"source {path!r} is a directory; mpistage stages one file")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"source {path!r} is not a regular file")
    check_template(dest)
    return Plan(
        source=os.path.abspath(path),
        size=info.st_size,
        mode=stat.S_IMODE(info.st_mode),
        mtime_ns=info.st_mtime_ns,
        chunk_size=check_chunk_size(chunk_size),
        algorithm=algorithm,
        dest=dest,
    )


def check_template(dest: str) -> None:
    """Raise :class:`UsageError` unless ``dest`` uses only known placeholders."""
    if not dest:
        raise UsageError("destination is empty")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(dest) if f is not None]
    except ValueError as exc:
        raise UsageError(f"destination {dest!r}: {exc} (write {{{{ and }}}} for braces)") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            raise UsageError(
                f"destination {dest!r} has unknown placeholder {{{name}}}; "
                "expected {node}, {host} or {rank}"
            )


def resolve_dest(dest: str, source_name: str, *, node: int, host: str, rank: int) -> Path:
    """Where this node writes: like ``cp``, on this node's own file system.

    The placeholders are expanded first; then, if the result is an existing directory,
    the file goes inside it under the source's name, otherwise the result is the file
    path and its parent directory must exist.

    Raises:
        UsageError: the directory that would hold the file does not exist or is not one.
    """
    expanded = Path(dest.format(node=node, host=host, rank=rank))
    target = expanded / source_name if expanded.is_dir() else expanded
    parent = target.parent
    if not parent.exists():
        raise UsageError(f"destination directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise UsageError(f"destination {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"destination directory {str(parent)!r} is not writable")
    if target.is_dir():
        raise UsageError(f"destination {str(target)!r} is a directory")
    return target
