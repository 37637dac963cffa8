"""What is sent, and how: described and decided on the root, the same on every rank.

Two small objects travel pickled (a few hundred bytes each; the file's bytes never do):
first the :class:`SourceInfo`, what is to be sent, which every node needs for its
pre-flight check; then, once the root has measured the links among the nodes that need
the file and resolved ``auto``, the :class:`Plan`: the source with its algorithm and
chunk size, final, the one every rank holds and the report reads.
"""

from __future__ import annotations

import os
import stat
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import UsageError

#: Placeholders a destination may contain, expanded on each node.
PLACEHOLDERS = ("node", "host", "rank")

MIN_CHUNK = 1
MAX_CHUNK = 1 << 30  # a few chunks stay in memory per rank; keep that bounded
MIN_DEPTH = 2        # one buffer in flight while the next one fills
MAX_DEPTH = 64       # more buffers than that only hold memory; none helps past nchunks
#: Longest ``--timeout``: a week.  Longer (or ``inf``) overflows the clocks that the waits
#: use, and a stall that takes a week to notice is a hang.
MAX_TIMEOUT = 7 * 24 * 3600.0


@dataclass(frozen=True, kw_only=True)
class SourceInfo:
    """What is to be sent: the source as the root found it, and where it goes.

    Attributes:
        source: path of the source file on the root.
        size: bytes to send (a Python int: files over 2 GiB need no special case).
        mode: permission bits of the source.
        mtime_ns: modification time of the source, preserved on every copy.
        dest: destination template as given (placeholders not yet expanded).
        identity: the source's ``(device, inode, size, mtime_ns, ctime_ns)`` when it was
            described; the root checks it again before and after reading, so a file
            replaced or written to meanwhile is never staged as a mix of old and new
            bytes (:func:`describe_source` always sets it; ``None`` only in hand-made
            descriptions).
        stream: the source is a stream (standard input) whose size nobody knows until
            it ends; ``size`` is then what ``--expect-size`` announced, or 0.
    """

    source: str
    size: int
    mode: int
    mtime_ns: int
    dest: str
    identity: tuple[int, int, int, int, int] | None = None
    stream: bool = False

    @property
    def source_name(self) -> str:
        """The name a copy takes inside a directory DEST ("" for a stream: it has none)."""
        return "" if self.stream else os.path.basename(self.source)


@dataclass(frozen=True, kw_only=True)
class Plan(SourceInfo):
    """The transfer every rank agrees on: the source, and how it is sent.

    Attributes:
        chunk_size: bytes per pipeline message.
        algorithm: schedule name (never ``auto``: the root resolves it first).
        codec: how chunks travel (:mod:`mpistage.engine.codec`; never ``auto`` either).
        link_rate: bytes/s the model has for a link (the probe's or the calibration's;
            0 unknown): how long a rank may sleep in a wait (:mod:`mpistage.engine.waits`).
        read_by: ``"root"`` reads the source, or ``"all"``: every node reads its share
            of it, the same file on a file system they all mount (the algorithm is then
            one whose :attr:`~mpistage.engine.schedules.Schedule.every_node_reads`).
    """

    chunk_size: int
    algorithm: str
    codec: str = "none"
    link_rate: float = 0.0
    read_by: str = "root"

    @classmethod
    def of(cls, info: SourceInfo, *, chunk_size: int, algorithm: str,
           codec: str = "none", link_rate: float = 0.0, read_by: str = "root") -> Plan:
        return cls(**{f.name: getattr(info, f.name) for f in fields(SourceInfo)},
                   chunk_size=check_chunk_size(chunk_size), algorithm=algorithm, codec=codec,
                   link_rate=link_rate, read_by=read_by)

    @property
    def nchunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """Bytes in chunk ``index``: ``chunk_size`` except for a shorter last chunk."""
        if not 0 <= index < self.nchunks:
            raise IndexError(f"chunk {index} outside 0..{self.nchunks - 1}")
        return min(self.chunk_size, self.size - index * self.chunk_size)


def source_label(source: str) -> str:
    """How messages name a source: ``-`` (a stream on standard input) is "standard input"."""
    return "standard input" if source == "-" else source


def check_chunk_size(chunk_size: int) -> int:
    """Return ``chunk_size`` if it is usable, else raise :class:`UsageError`."""
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"invalid chunk size {chunk_size}: expected 1 byte to 1 GiB")
    return chunk_size


def check_depth(depth: int) -> int:
    """Return ``depth`` (chunk buffers per leader) if usable, else raise :class:`UsageError`."""
    if not MIN_DEPTH <= depth <= MAX_DEPTH:
        raise UsageError(f"invalid depth {depth}: expected {MIN_DEPTH} to {MAX_DEPTH} buffers")
    return depth


def check_timeout(timeout: float) -> float:
    """Return ``timeout`` (seconds) if usable, else raise :class:`UsageError`."""
    if not 0 < timeout <= MAX_TIMEOUT:  # also refuses nan
        raise UsageError(f"invalid timeout {timeout:g}: expected seconds above 0, "
                         f"at most {MAX_TIMEOUT:g} (a week)")
    return timeout


def file_identity(info: os.stat_result) -> tuple[int, int, int, int, int]:
    """What tells a file apart from a replaced or rewritten one: device, inode, size,
    modification and change time (``rsync`` and ``tar`` compare the same)."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def identity_change(planned: tuple[int, ...], now: tuple[int, ...]) -> str | None:
    """What became of a file between two :func:`file_identity` readings, as a phrase
    ("was replaced by another file", "changed size (…)", "was modified"), or ``None``."""
    if now == planned:
        return None
    if now[:2] != planned[:2]:
        return "was replaced by another file"
    if now[2] != planned[2]:
        return f"changed size ({planned[2]} to {now[2]} bytes)"
    return "was modified"


def describe_file_type(mode: int) -> str:
    """``"a FIFO"``, ``"a character device"`` …: for messages refusing a file's type."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def describe_source(source: str | os.PathLike[str], dest: str) -> SourceInfo:
    """Check the source on the root and describe it.

    The type is checked before the file is opened (opening a FIFO waits for a writer;
    opening a tape device may rewind it), and the open does not block either, in case
    the path was swapped in between.

    Raises:
        UsageError: the source is missing, unreadable, or not a regular file.
    """
    path = os.fspath(source)
    with _source_errors(path, "examined"):
        before = os.stat(path)
    _refuse_unless_regular(path, before.st_mode)
    with _source_errors(path, "opened"):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    _refuse_unless_regular(path, info.st_mode)
    check_template(dest)
    return SourceInfo(
        source=os.path.abspath(path),
        size=info.st_size,
        mode=stat.S_IMODE(info.st_mode),
        mtime_ns=info.st_mtime_ns,
        dest=dest,
        identity=file_identity(info),
    )


@contextmanager
def _source_errors(path: str, doing: str) -> Iterator[None]:
    """The source's ``OSError`` as a one-line :class:`UsageError`."""
    try:
        yield
    except FileNotFoundError:
        raise UsageError(f"source {path!r} does not exist") from None
    except PermissionError:
        raise UsageError(f"source {path!r} is not readable (permission denied)") from None
    except OSError as exc:
        raise UsageError(f"source {path!r} cannot be {doing}: {exc.strerror}") from None


def _refuse_unless_regular(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise UsageError(f"source {path!r} is a directory; mpistage stages one file")
    if not stat.S_ISREG(mode):
        raise UsageError(f"source {path!r} is {describe_file_type(mode)}; "
                         "mpistage stages regular files only")


def check_template(dest: str) -> None:
    """Raise :class:`UsageError` unless ``dest`` uses only known placeholders, with
    format specs that suit their values (``{node:03d}`` is fine, ``{node:s}`` is not)."""
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
    try:
        expand(dest, node=0, host="host", rank=0)
    except UsageError as exc:
        raise UsageError(f"destination {dest!r}: {exc}") from None


def expand(dest: str, *, node: int, host: str, rank: int) -> str:
    """``dest`` with its placeholders filled in.

    Raises:
        UsageError: a placeholder's format spec does not suit its value.
    """
    try:
        return dest.format(node=node, host=host, rank=rank)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise UsageError(f"cannot expand the placeholders: {exc}") from None


def resolve_dest(dest: str, source_name: str, *, node: int, host: str, rank: int) -> Path:
    """Where this node writes: like ``cp``, on this node's own file system.

    The placeholders are expanded first; then, if the result is an existing directory,
    the file goes inside it under the source's name, otherwise the result is the file
    path and its parent directory must exist.  A result ending in ``/`` names a
    directory, which must exist (``--mkdir`` makes it first).

    Raises:
        UsageError: the directory that would hold the file does not exist or is not one;
            a name in the path is too long; the final path holds something other than a
            regular file or a symlink (a directory, a device, a FIFO, a socket).
    """
    text = expand(dest, node=node, host=host, rank=rank)
    try:
        return _resolve(text, source_name)
    except OSError as exc:  # e.g. ENAMETOOLONG, ELOOP from a directory on the way
        raise UsageError(f"destination {text!r}: {exc.strerror}") from None


def _resolve(text: str, source_name: str) -> Path:
    expanded = Path(text)
    if text.endswith("/") and not expanded.is_dir():
        if expanded.exists():
            raise UsageError(f"destination {text!r} is not a directory")
        raise UsageError(f"destination directory {text!r} does not exist (--mkdir creates it)")
    if expanded.is_dir() and not source_name:
        raise UsageError(f"destination {text!r} is a directory; standard input has no name "
                         "to give the copy there: name the file (DEST/NAME)")
    target = expanded / source_name if expanded.is_dir() else expanded
    parent = target.parent
    if not parent.exists():
        raise UsageError(f"destination directory {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise UsageError(f"destination {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"destination directory {str(parent)!r} is not writable")
    longest = os.pathconf(parent, "PC_NAME_MAX")
    if len(os.fsencode(target.name)) > longest:
        raise UsageError(f"destination name {target.name[:40]!r}... is longer than the "
                         f"{longest} bytes a file name may have")
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise UsageError(f"cannot inspect {str(target)!r}: {exc.strerror}") from None
    if stat.S_ISDIR(mode) or (stat.S_ISLNK(mode) and target.is_dir()):
        raise UsageError(f"destination {str(target)!r} is a directory")
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise UsageError(f"destination {str(target)!r} is {describe_file_type(mode)}; "
                         "mpistage replaces only regular files and symlinks")
    return target
