"""The codec slot between source and sink: how a chunk travels.

The root encodes each chunk once after reading (and digesting) it; the nodes forward the
encoded bytes unchanged and decode only for their own write, so digests are always of
the source's own bytes.  Today the only codec is :data:`IDENTITY`: chunks travel as they
are.  A compressing codec (issue: streams and compression) plugs in here; its encoded
chunks differ in length, which the engine must then carry with each chunk.
"""

from __future__ import annotations

from typing import Protocol

from .buffers import Buffer



class Codec(Protocol):
    """Turns a chunk into what travels, and back."""

    name: str

    def encode(self, chunk: Buffer) -> Buffer:
        """On the root, after reading: the bytes to send for ``chunk``."""

    def decode(self, chunk: Buffer) -> Buffer:
        """On every node, before writing: the source's bytes for what arrived."""


class Identity:
    """Chunks travel as they are (no copy)."""

    name = "none"

    def encode(self, chunk: Buffer) -> Buffer:
        return chunk

    def decode(self, chunk: Buffer) -> Buffer:
        return chunk


IDENTITY: Codec = Identity()
