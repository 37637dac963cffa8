"""What a node's writer digests: the bytes it wrote in one stream (:class:`StreamDigest`),
or, for signed chunks (:class:`mpistage.engine.frames.Signed`), each chunk against its
reader's digest (:class:`SignedCopy`).

Where every node reads a share of the source, no node sees every byte in order, so
neither the source nor a copy has a streaming digest; both are hash lists
(:class:`mpistage.digest.ChunkDigests`): the readers' digests for the source, this
node's for its copy.  A chunk that differs from its reader's digest (damaged on its
way, or here) fails this node's copy at once; the source's digest is still known, so
the root can judge the others.
"""

from __future__ import annotations

import xxhash

from ..digest import ChunkDigests, new_digest
from .buffers import Buffer
from .frames import Signed


class StreamDigest:
    """The xxh3-128 of every byte written, in order (chunks come in file order)."""

    def __init__(self) -> None:
        self._digest = new_digest()

    def took(self, k: int, buffer: Buffer) -> None:
        """Chunk ``k`` came (nothing to keep)."""

    def chunk(self) -> xxhash.xxh3_128:
        """Where the next chunk's bytes go: the running digest."""
        return self._digest

    def wrote(self, k: int, digest: xxhash.xxh3_128) -> str | None:
        """Chunk ``k`` is written (nothing to check until the end)."""
        return None

    def copy_digest(self) -> str:
        return self._digest.hexdigest()

    def source_digest(self) -> str | None:
        """Not this node's to tell: the root's reader digests the source."""
        return None


class SignedCopy:
    """The readers' digests of the chunks that came, and this node's of those it wrote."""

    def __init__(self, framing: Signed) -> None:
        self.framing = framing
        self.count = framing.chunk_count() or 0
        self._theirs = ChunkDigests(self.count)
        self._mine = ChunkDigests(self.count)
        self._taken = 0

    def took(self, k: int, buffer: Buffer) -> None:
        """Chunk ``k`` came, in ``buffer``: keep its reader's digest."""
        self._theirs.put(k, self.framing.signature(buffer, k))
        self._taken += 1

    def chunk(self) -> xxhash.xxh3_128:
        """Where the next chunk's bytes go: a digest of its own."""
        return new_digest()

    def wrote(self, k: int, digest: xxhash.xxh3_128) -> str | None:
        """This node wrote chunk ``k`` (``digest`` of it): why the copy fails, or ``None``."""
        mine = digest.digest()
        self._mine.put(k, mine)
        theirs = self._theirs.get(k)
        if theirs == bytes(len(theirs)):
            return f"chunk {k} could not be read by the node that reads it"
        if mine != theirs:
            return f"chunk {k} arrived damaged: it differs from what its reader read"
        return None

    def copy_digest(self) -> str:
        """This node's copy's digest (meaningful once every chunk was written cleanly)."""
        return self._mine.hexdigest()

    def source_digest(self) -> str | None:
        """The source's digest, from the readers' digests, once every chunk came."""
        return self._theirs.hexdigest() if self._taken == self.count else None


#: What a writer digests with.
Digests = StreamDigest | SignedCopy
