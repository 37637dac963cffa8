"""What a tree run sends: every entry of the source tree, in columns, walked once.

A directory, several sources or a ``--files-from`` list become one :class:`Manifest`:
directories, regular files and symlinks in walk order (a directory before what it
holds), each with its path relative to the destination, its type, size, mode and mtime
(and a symlink's target).  The columns are flat arrays and two byte blobs (about 40
bytes per entry plus its path), not a Python object per entry, so a million entries
take tens of MB, and :meth:`Manifest.bcast` moves them compressed with MPI's buffer
``Bcast``, not pickle.  What only the root needs (where each entry is on its disk, each file's
identity) never leaves it.

Sockets, FIFOs and devices cannot be staged: the walk refuses them, naming them, or
leaves them out with ``skip_special`` (they are then listed in :attr:`Manifest.skipped`).
"""

from __future__ import annotations

import os
import stat
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from mpi4py import MPI

from ..errors import UsageError
from ..plan import describe_file_type

FILE, DIRECTORY, SYMLINK = ord("f"), ord("d"), ord("l")
#: Special files named in an error message; the rest are counted.
_NAMED = 5


def _int64s() -> array:
    return array("q")


@dataclass
class Manifest:
    """The entries of a tree run (the same on every rank after :meth:`bcast`).

    Attributes:
        kinds: one byte per entry: :data:`FILE`, :data:`DIRECTORY` or :data:`SYMLINK`.
        sizes, modes, mtimes: per entry (size 0 for directories and symlinks).
        origins: root only: index into ``prefixes`` of the directory the entry's
            relative path starts from on the root's disk.
        identities: root only: per entry ``(device, inode, ctime)``; with size and mtime
            what tells a file apart from a replaced or rewritten one.
        skipped: root only: special files left out (``skip_special``).
        real_tops: root only: per origin, where a source named as a symlink points.
    """

    kinds: bytearray = field(default_factory=bytearray)
    sizes: array = field(default_factory=_int64s)
    modes: array = field(default_factory=_int64s)
    mtimes: array = field(default_factory=_int64s)
    path_blob: bytearray = field(default_factory=bytearray)
    path_ends: array = field(default_factory=_int64s)
    link_blob: bytearray = field(default_factory=bytearray)
    link_ends: array = field(default_factory=_int64s)
    prefixes: list[bytes] = field(default_factory=list)
    real_tops: dict[int, bytes] = field(default_factory=dict)
    origins: array = field(default_factory=_int64s)
    identities: array = field(default_factory=_int64s)
    skipped: list[str] = field(default_factory=list)
    _frozen: bytes | None = field(default=None, repr=False, compare=False)
    _tops: list[int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.kinds)

    def add(self, path: bytes, st: os.stat_result, *, origin: int = 0, link: bytes = b"") -> None:
        """Append one entry (``st`` from ``lstat``; ``link`` a symlink's target)."""
        kind = (DIRECTORY if stat.S_ISDIR(st.st_mode) else
                SYMLINK if stat.S_ISLNK(st.st_mode) else FILE)
        self.kinds.append(kind)
        self.sizes.append(st.st_size if kind == FILE else 0)
        self.modes.append(stat.S_IMODE(st.st_mode))
        self.mtimes.append(st.st_mtime_ns)
        self.path_blob += path
        self.path_ends.append(len(self.path_blob))
        self.link_blob += link
        self.link_ends.append(len(self.link_blob))
        self.origins.append(origin)
        self.identities.extend((st.st_dev, st.st_ino, st.st_ctime_ns))

    def path(self, index: int) -> bytes:
        """Entry ``index``'s path relative to the destination, ``/``-separated."""
        ends = self.path_ends
        return self._paths[ends[index - 1] if index else 0:ends[index]]

    @property
    def _paths(self) -> bytes:
        """The path blob as ``bytes``, whose slices are one copy (a ``bytearray``'s
        would be two); made once the manifest is complete (:meth:`freeze`)."""
        frozen = self._frozen
        if frozen is None or len(frozen) != len(self.path_blob):
            frozen = self.freeze()
        return frozen

    def freeze(self) -> bytes:
        """Call once complete: later :meth:`path` calls slice this (tens of µs a file
        saved over a tree's passes)."""
        self._frozen = bytes(self.path_blob)
        self._tops = None
        return self._frozen

    def top_indices(self) -> list[int]:
        """Indices of the top-level entries (no ``/`` in their path)."""
        ends, blob = self.path_ends, self._paths
        if self._tops is None:
            self._tops = [i for i in range(len(self))
                          if b"/" not in blob[ends[i - 1] if i else 0:ends[i]]]
        return self._tops

    def link(self, index: int) -> bytes:
        start = self.link_ends[index - 1] if index else 0
        return bytes(self.link_blob[start:self.link_ends[index]])

    def source_path(self, index: int) -> bytes:
        """Root only: where entry ``index`` is on the root's disk."""
        return self.where(self.origins[index], self.path(index))

    def where(self, origin: int, relative: bytes) -> bytes:
        """Root only: the path on the root's disk of ``relative`` (its first component
        being a top-level entry's name) from source ``origin``."""
        real = self.real_tops.get(origin)
        if real is not None:  # a source named as a symlink: read where it points
            _, slash, rest = relative.partition(b"/")
            return real + slash + rest
        return self.prefixes[origin] + b"/" + relative

    def identity(self, index: int) -> tuple[int, int, int, int, int]:
        """Root only: as :func:`mpistage.plan.file_identity` gives it."""
        dev, ino, ctime = self.identities[3 * index:3 * index + 3]
        return (dev, ino, self.sizes[index], self.mtimes[index], ctime)

    def files(self) -> Iterator[int]:
        """Indices of the regular files, in order."""
        kinds = self.kinds
        return (i for i in range(len(kinds)) if kinds[i] == FILE)

    @property
    def file_count(self) -> int:
        return self.kinds.count(FILE)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def top_names(self) -> list[bytes]:
        """What lands directly in the destination directory (each committed as one unit
        there); every other path starts with one of them."""
        return [self.path(i) for i in self.top_indices()]

    def nbytes(self) -> int:
        """Bytes the columns take (what :meth:`bcast` moves)."""
        return sum(len(memoryview(column).cast("B")) for column in self._shared())

    def _shared(self) -> tuple[bytearray | array, ...]:
        return (self.kinds, self.sizes, self.modes, self.mtimes, self.path_blob,
                self.path_ends, self.link_blob, self.link_ends)

    def bcast(self, comm: MPI.Comm, root: int) -> Manifest:
        """The root's manifest on every rank (collective).

        The columns travel as one zlib-compressed buffer (paths share long prefixes,
        sizes and modes repeat: 10,000 files of a dataset shrink ~10-fold, which on a
        100 Mbit/s link is 0.1 s saved), with the buffer ``Bcast``: no entry is pickled.
        """
        packed = bytearray()
        lengths = None
        if comm.rank == root:
            lengths = [len(c) for c in self._shared()]
            packed = bytearray(zlib.compress(b"".join(memoryview(c).cast("B")
                                                      for c in self._shared()), 1))
        lengths, size = comm.bcast((lengths, len(packed)) if comm.rank == root else None,
                                   root=root)
        if comm.rank != root:
            packed = bytearray(size)
        if size:
            comm.Bcast([packed, MPI.BYTE], root=root)
        if comm.rank == root:
            return self
        columns = _unpacked(memoryview(zlib.decompress(packed)), self._shared(), lengths)
        kinds, sizes, modes, mtimes, path_blob, path_ends, link_blob, link_ends = columns
        manifest = Manifest(kinds=kinds, sizes=sizes, modes=modes, mtimes=mtimes,
                            path_blob=path_blob, path_ends=path_ends, link_blob=link_blob,
                            link_ends=link_ends)
        manifest.freeze()
        return manifest


def _unpacked(data: memoryview, templates: tuple[bytearray | array, ...],
              lengths: list[int]) -> list[bytearray | array]:
    """The columns a manifest's :meth:`Manifest.bcast` packed into ``data``, each of
    ``lengths`` items of its template's kind (bytes, or 64-bit integers)."""
    columns: list[bytearray | array] = []
    offset = 0
    for template, count in zip(templates, lengths):
        if isinstance(template, bytearray):
            columns.append(bytearray(data[offset:offset + count]))
            offset += count
        else:
            column = array("q")
            column.frombytes(data[offset:offset + 8 * count])
            columns.append(column)
            offset += 8 * count
    return columns


def walk(sources: Sequence[str | os.PathLike[str]], *, skip_special: bool = False) -> Manifest:
    """The manifest of ``sources`` (files, directories, symlinks), each landing under its
    own name, directories walked once with :func:`os.scandir` (symlinks never followed).

    Raises:
        UsageError: a source is missing or unreadable, two sources have the same name, or
            the tree holds special files (unless ``skip_special``).
    """
    manifest = Manifest()
    special: list[str] = []
    names: set[bytes] = set()
    for source in sources:
        path = os.path.abspath(os.fsencode(source))
        name = os.path.basename(path)
        if name in names:
            raise UsageError(f"two sources are named {os.fsdecode(name)!r}; "
                             "they would land on the same path")
        names.add(name)
        manifest.prefixes.append(os.path.dirname(path))
        if os.path.islink(path):  # named as a symlink: staged as what it points to (cp -H)
            manifest.real_tops[len(manifest.prefixes) - 1] = os.path.realpath(path)
        _add_tree(manifest, len(manifest.prefixes) - 1, name, special)
    return _settle_special(manifest, special, skip_special)


def walk_list(paths: Iterable[bytes], base: str | os.PathLike[str], *,
              skip_special: bool = False) -> Manifest:
    """The manifest of ``paths`` relative to ``base`` (``--files-from``), kept relative
    under the destination; each path's parent directories come along, a directory
    with everything in it.

    Raises:
        UsageError: a path is absolute or leaves ``base``, is missing or unreadable, or
            the tree holds special files (unless ``skip_special``).
    """
    manifest = Manifest()
    manifest.prefixes.append(os.path.abspath(os.fsencode(base)))
    special: list[str] = []
    present: set[bytes] = set()
    for raw in paths:
        relative = _relative(raw)
        parts = relative.split(b"/")
        for depth in range(1, len(parts)):
            parent = b"/".join(parts[:depth])
            if parent not in present:
                present.add(parent)
                before = len(manifest)
                _add_one(manifest, 0, parent, special, recurse=False)
                if len(manifest) == before or manifest.kinds[-1] != DIRECTORY:
                    # through a symlink, a copy would be written wherever it points
                    raise UsageError(f"file list entry {os.fsdecode(raw)!r} goes through "
                                     f"{os.fsdecode(parent)!r}, which is not a directory")
        if relative not in present:
            present.add(relative)
            _add_tree(manifest, 0, relative, special, present)
    if not len(manifest):
        raise UsageError("the file list names no file")
    return _settle_special(manifest, special, skip_special)


def read_list(path: str | os.PathLike[str], *, nul: bool = False) -> list[bytes]:
    """The paths in a ``--files-from`` list: one a line (or NUL-separated with ``nul``);
    empty lines are ignored."""
    try:
        with open(path, "rb") as listing:
            data = listing.read()
    except OSError as exc:
        raise UsageError(f"cannot read the file list {os.fspath(path)!r}: {exc.strerror}") from None
    lines = data.split(b"\0" if nul else b"\n")
    return [line.rstrip(b"\r") if not nul else line for line in lines if line.strip()]


def _relative(raw: bytes) -> bytes:
    """``raw`` normalised; refused if absolute or leaving the base."""
    text = os.fsdecode(raw)
    if raw.startswith(b"/"):
        raise UsageError(f"file list entry {text!r} is absolute; paths are relative to --base")
    relative = os.path.normpath(raw)
    if relative == b"." or relative == b".." or relative.startswith(b"../"):
        raise UsageError(f"file list entry {text!r} is not below --base")
    return relative


def _add_tree(manifest: Manifest, origin: int, relative: bytes, special: list[str],
              present: set[bytes] | None = None) -> None:
    """Add ``relative`` and, for a directory, everything below it (depth first, each
    directory before what it holds)."""
    if not _add_one(manifest, origin, relative, special, recurse=True):
        return
    stack = [relative]
    while stack:
        directory = stack.pop()
        where = manifest.where(origin, directory)
        try:
            with os.scandir(where) as entries:
                names = sorted(entry.name for entry in entries)
        except OSError as exc:
            raise UsageError(f"source directory {os.fsdecode(where)!r} "
                             f"cannot be listed: {exc.strerror}") from None
        below = []
        for name in names:
            child = directory + b"/" + name
            if present is not None:
                if child in present:
                    continue
                present.add(child)
            if _add_one(manifest, origin, child, special, recurse=True):
                below.append(child)
        stack.extend(reversed(below))


def _add_one(manifest: Manifest, origin: int, relative: bytes, special: list[str], *,
             recurse: bool) -> bool:
    """Add one entry; whether it is a directory whose contents follow."""
    path = manifest.where(origin, relative)
    shown = os.fsdecode(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"source {shown!r} does not exist") from None
    except OSError as exc:
        raise UsageError(f"source {shown!r} cannot be examined: {exc.strerror}") from None
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        manifest.add(relative, st, origin=origin, link=os.readlink(path))
        return False
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        special.append(f"{shown} ({describe_file_type(mode)})")
        return False
    if not _readable(st, directory=stat.S_ISDIR(mode)):
        raise UsageError(f"source {shown!r} is not readable (permission denied)")
    manifest.add(relative, st, origin=origin)
    return recurse and stat.S_ISDIR(mode)


def _readable(st: os.stat_result, *, directory: bool) -> bool:
    """What the permission bits allow this process (no extra system call per file)."""
    euid = os.geteuid()
    if euid == 0:
        return True
    need = 0o5 if directory else 0o4
    if st.st_uid == euid:
        bits = st.st_mode >> 6
    elif st.st_gid == os.getegid() or st.st_gid in os.getgroups():
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & need == need


def _settle_special(manifest: Manifest, special: list[str], skip: bool) -> Manifest:
    if special and not skip:
        named = ", ".join(special[:_NAMED])
        more = f" and {len(special) - _NAMED} more" if len(special) > _NAMED else ""
        raise UsageError(f"the source holds {len(special)} special file"
                         f"{'s' if len(special) != 1 else ''} mpistage cannot stage: {named}"
                         f"{more} (--skip-special leaves them out)")
    manifest.skipped = special
    return manifest


#: Bytes of the digest that follows each file in a tree's stream (xxh3-128).
TRAILER = 16


def stream_files(manifest: Manifest, needed: bytearray) -> Iterator[int]:
    """The files in a tree's stream, in order: those some node lacks (``needed[i]``)."""
    kinds = manifest.kinds
    return (i for i in range(len(kinds)) if kinds[i] == FILE and needed[i])
