"""How compressible the source is: a sample, and each codec's cost on it (root only).

``--compress auto`` lets the model decide, and the model needs the ratio and speeds on
*this* data: the root reads a few pieces spread over the file (the start of a stream,
kept and sent first) and times each candidate codec on them, ~10 ms for 2 MiB.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from ..engine.codec import NONE, CodecCost, candidates, measure
from ..engine.encoders import encoder_count
from .streams import StreamInput

if TYPE_CHECKING:
    from .manifest import Manifest

#: The sample: this many pieces of this size, spread evenly over the source.
PIECES = 8
PIECE = 256 << 10


def sample_file(path: str, size: int) -> list[bytes]:
    """Pieces of the file at ``path`` (``size`` bytes), spread from start to end."""
    if size <= PIECES * PIECE:
        offsets = range(0, size, PIECE)
    else:
        step = (size - PIECE) // (PIECES - 1)
        offsets = range(0, PIECES * step, step)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        return [piece for offset in offsets if (piece := os.pread(fd, PIECE, offset))]
    finally:
        os.close(fd)


def sample_stream(stream: StreamInput) -> list[bytes]:
    """The start of the stream (kept: it is sent first all the same), in pieces."""
    start = stream.peek(PIECES * PIECE)
    return [start[i: i + PIECE] for i in range(0, len(start), PIECE)]


def codec_costs(requested: str, samples: list[bytes]) -> tuple[CodecCost | None, ...]:
    """Each codec ``--compress requested`` weighs, with its cost on ``samples``
    (``None`` for sending as is); the root encodes with :func:`encoder_count` threads."""
    threads = encoder_count()
    costs: list[CodecCost | None] = []
    for name in candidates(requested):
        if name == NONE:
            costs.append(None)
            continue
        one = measure(name, samples)
        costs.append(replace(one, encode_rate=one.encode_rate * threads, encode_threads=threads))
    return tuple(costs)


def sample_files(manifest: Manifest) -> list[bytes]:
    """The start of a tree's largest files (a piece of each; files that vanished since
    the walk are passed over: the transfer will say so)."""
    largest = sorted(manifest.files(), key=lambda i: manifest.sizes[i], reverse=True)[:PIECES]
    samples = []
    for index in largest:
        try:
            with open(manifest.source_path(index), "rb") as source:
                piece = source.read(PIECE)
        except OSError:
            continue
        if piece:
            samples.append(piece)
    return samples
