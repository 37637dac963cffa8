"""Test hooks for fault injection, off unless ``MPISTAGE_TEST_FAULTS`` is set.

``MPISTAGE_TEST_FAULTS="corrupt-chunk@2,corrupt-disk@3"`` makes node 2 write a flipped
byte in its first chunk (as if the network corrupted it: the node's digest of what it
wrote differs from the source's) and node 3 flip a byte of its file on disk after
writing (only ``--verify``, which re-reads the file, can see that).  The tests use these
to prove that corruption is detected; nothing else reads this variable.
"""

from __future__ import annotations

import os

import numpy as np

ENV = "MPISTAGE_TEST_FAULTS"


def active(kind: str, node: int) -> bool:
    """Whether fault ``kind`` is injected on node ``node``."""
    spec = os.environ.get(ENV, "")
    return f"{kind}@{node}" in {item.strip() for item in spec.split(",")}


def flipped(view: np.ndarray) -> np.ndarray:
    """A copy of ``view`` with its first byte inverted."""
    copy = np.array(view, copy=True)
    if copy.size:
        copy[0] ^= 0xFF
    return copy


def flip_byte_on_disk(path: str | os.PathLike[str]) -> None:
    """Invert the first byte of the file at ``path``."""
    fd = os.open(path, os.O_RDWR)
    try:
        first = os.pread(fd, 1, 0)
        if first:
            os.pwrite(fd, bytes([first[0] ^ 0xFF]), 0)
    finally:
        os.close(fd)
