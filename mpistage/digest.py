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
