"""Random sample files for benchmarks and trial runs, written in bounded memory."""

from __future__ import annotations

import os

import numpy as np

_BLOCK = 16 << 20


def write_random_file(path: str | os.PathLike[str], size: int, seed: int | None = None) -> None:
    """``size`` random bytes at ``path`` (the same bytes for the same ``seed``), written
    16 MiB at a time so that a sample of any size needs no more memory."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as out:
        for offset in range(0, size, _BLOCK):
            out.write(rng.integers(0, 256, min(_BLOCK, size - offset), np.uint8).tobytes())
