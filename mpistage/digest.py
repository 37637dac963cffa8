"""xxh3-128 digests: computed while the bytes stream by, and re-computed from disk."""

from __future__ import annotations

import os
from collections.abc import Callable

import xxhash

ALGORITHM = "xxh3_128"
_READ_BLOCK = 8 << 20


def new_digest() -> xxhash.xxh3_128:
    """A streaming digest; ``update`` releases the GIL on large buffers."""
    return xxhash.xxh3_128()


def file_digest(path: str | os.PathLike[str], *, drop_cache: bool = True,
                progress: Callable[[int], None] | None = None) -> str:
    """Hex digest of a file as it is on disk.

    With ``drop_cache`` the kernel is first asked to forget the file's clean pages, so
    the bytes come from the device where it can (pages not yet written back stay).
    ``progress(count)`` is told of every block read (a watchdog's sign of life).
    """
    digest = new_digest()
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(_READ_BLOCK)
        view = memoryview(buf)
        while n := os.readv(fd, [view]):
            digest.update(view[:n])
            if progress is not None:
                progress(n)
    finally:
        os.close(fd)
    return digest.hexdigest()


class ChunkDigests:
    """The xxh3-128 of each chunk of a file, kept by chunk; the file's digest is the
    xxh3-128 of that list in chunk order (a hash list: the same for the same bytes,
    whoever read which chunk and in whatever order they were written).

    Where every node reads a share of the source (:class:`mpistage.engine.frames.Signed`),
    no node sees every byte in order, so no streaming digest of the whole file exists;
    the list of the readers' digests stands for the source, that of a node's own for its
    copy, and :func:`file_chunk_digest` re-reads a copy the same way.
    """

    SIZE = 16  # bytes of one xxh3-128

    def __init__(self, count: int) -> None:
        self._list = bytearray(self.SIZE * count)

    def put(self, k: int, digest: bytes) -> None:
        self._list[k * self.SIZE: (k + 1) * self.SIZE] = digest

    def get(self, k: int) -> bytes:
        return bytes(self._list[k * self.SIZE: (k + 1) * self.SIZE])

    def hexdigest(self) -> str:
        return xxhash.xxh3_128(self._list).hexdigest()


def chunk_digest(data: memoryview | bytes) -> bytes:
    """One chunk's xxh3-128, as :class:`ChunkDigests` keeps it."""
    return xxhash.xxh3_128(data).digest()


def file_chunk_digest(path: str | os.PathLike[str], chunk_size: int, *,
                      drop_cache: bool = True,
                      progress: Callable[[int], None] | None = None) -> str:
    """:class:`ChunkDigests`' digest of a file as it is on disk, in chunks of
    ``chunk_size`` bytes (as :func:`file_digest`, which it stands for where a copy's
    digest is a hash list)."""
    size = os.stat(path).st_size
    digests = ChunkDigests(-(-size // chunk_size))
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(min(chunk_size, _READ_BLOCK))
        view = memoryview(buf)
        for k in range(-(-size // chunk_size)):
            digest = new_digest()
            left = min(chunk_size, size - k * chunk_size)
            while left:
                n = os.readv(fd, [view[:min(left, len(view))]])
                if n == 0:
                    raise ValueError(f"{path} shrank while it was re-read")
                digest.update(view[:n])
                left -= n
                if progress is not None:
                    progress(n)
            digests.put(k, digest.digest())
    finally:
        os.close(fd)
    return digests.hexdigest()
