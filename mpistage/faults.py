"""Test hooks for fault injection, off unless ``MPISTAGE_TEST_FAULTS`` is set.

``MPISTAGE_TEST_FAULTS="corrupt-chunk@2,corrupt-disk@3"`` makes node 2 write a flipped
byte in its first chunk (as if the network corrupted it: the node's digest of what it
wrote differs from the source's) and node 3 flip a byte of its file on disk after
writing (only ``--verify``, which re-reads the file, can see that).
``slow-commit@N`` makes node N's commit take 5 s more while making progress (a long
``--verify`` or ``--fsync``); ``hang-write@N`` makes node N's next write never return
(a hung file server, a dead disk).  The tests use these to prove that corruption is
detected and that a slow node is waited for while a stuck one is not; nothing else
reads this variable.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

ENV = "MPISTAGE_TEST_FAULTS"


def active(kind: str, node: int) -> bool:
    """Whether fault ``kind`` is injected on node ``node``."""
    spec = os.environ.get(ENV, "")
    return f"{kind}@{node}" in {item.strip() for item in spec.split(",")}


def flipped(view: memoryview, last: bool = False) -> memoryview:
    """A copy of ``view`` with its first byte (or its ``last``) inverted.  An encoded
    chunk is damaged at its end: an LZ4 block always ends in plain bytes, so the damage
    passes the decoder and only the digest can catch it."""
    copy = bytearray(view)
    if copy:
        copy[-1 if last else 0] ^= 0xFF
    return memoryview(copy)


def flip_byte_on_disk(path: str | os.PathLike[str]) -> None:
    """Invert the first byte of the file at ``path``."""
    fd = os.open(path, os.O_RDWR)
    try:
        first = os.pread(fd, 1, 0)
        if first:
            os.pwrite(fd, bytes([first[0] ^ 0xFF]), 0)
    finally:
        os.close(fd)


#: How much longer ``slow-commit`` makes a commit.
SLOW_COMMIT_SECONDS = 5.0


def make_writes_hang(sink: Any) -> None:
    """``hang-write``: every write of ``sink`` from now on blocks forever."""
    def hang(fd: int, data: memoryview) -> int:
        threading.Event().wait()
        return 0

    sink._write_some = hang  # noqa: SLF001 (a test hook)


def slow_commit(sink: Any) -> None:
    """``slow-commit``: take :data:`SLOW_COMMIT_SECONDS` while showing progress, as a
    long flush or re-read does."""
    deadline = time.monotonic() + SLOW_COMMIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.05)
        sink.progress += 1
