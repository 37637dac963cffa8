"""What one pipeline message holds: a chunk's bytes alone, or a frame.

A file of known size sent as it is needs nothing but the bytes: every rank knows chunk
k's length from the plan (:class:`Bare`, the hot path, unchanged).  A stream of unknown
length, or compressed chunks whose lengths only the root knows, travel as *frames*
(:class:`Framed`): a 24-byte header (bytes that follow, the chunk's source bytes, flags)
then the payload.  A receiver posts a buffer of the largest frame and reads the header;
the flag :data:`LAST` ends a stream.  Where every node reads a share of the source
(:class:`Signed`), each chunk carries its reader's digest, so the nodes it reaches check
their copies against the reader's bytes, not against a relay's.

Buffer layout under framing: the header at offset 0, the payload after it.  The source
reads straight into the payload's place; encoded, the codec's output then replaces the
bytes it was made from (the root's own writer decodes it again, as every node does).
"""

from __future__ import annotations

import struct

from ..digest import new_digest
from ..plan import Plan
from .buffers import Buffer
from .codec import Codec

HEADER = struct.Struct("<qqq")  # payload bytes, source bytes, flags
LAST = 1     # no chunk follows this one
ENCODED = 2  # the payload is the codec's output (else the source bytes as they are)


class Bare:
    """Messages are the chunks' bytes, lengths from the plan (a file, not compressed)."""

    framed = False
    signed = False

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.capacity = max(1, min(plan.chunk_size, plan.size))

    def chunk_count(self) -> int | None:
        """Chunks in the transfer, or ``None`` when only the last frame will tell."""
        return self.plan.nchunks

    def read_space(self, buffer: Buffer, k: int) -> Buffer:
        """Where the source puts chunk ``k``'s bytes."""
        return buffer[: self.plan.chunk_length(k)]

    def seal(self, buffer: Buffer, k: int, got: int, last: bool, codec: Codec,
             unread: bool = False) -> None:
        """The source read ``got`` bytes of chunk ``k`` into :meth:`read_space` (or,
        ``unread``, failed to: the root's outcome tells every node): make the message
        (nothing to do: it is the bytes)."""

    def receive_space(self, buffer: Buffer, k: int) -> Buffer:
        """Where a node receives chunk ``k``."""
        return buffer[: self.plan.chunk_length(k)]

    def message(self, buffer: Buffer, k: int) -> Buffer:
        """Chunk ``k``'s message, as it arrived or was sealed, to forward."""
        return buffer[: self.plan.chunk_length(k)]

    def whole(self, buffer: Buffer, k: int, count: int) -> bool:
        """Whether the ``count`` bytes that arrived in ``buffer`` are chunk ``k``'s whole
        message: MPI completes a receive with a shorter message without an error, and
        MPICH's TCP transport does so when the sender is killed in the middle of one."""
        return count == self.plan.chunk_length(k)

    def raw_length(self, buffer: Buffer, k: int) -> int:
        return self.plan.chunk_length(k)

    def is_last(self, buffer: Buffer, k: int) -> bool:
        return k == self.plan.nchunks - 1

    def payload(self, buffer: Buffer, k: int) -> tuple[Buffer, bool]:
        """Chunk ``k``'s payload and whether it is encoded."""
        return buffer[: self.plan.chunk_length(k)], False


class Framed:
    """Each message is a header and a payload (a stream, or compressed chunks)."""

    framed = True
    signed = False

    def __init__(self, plan: Plan, encoded: bool) -> None:
        self.plan = plan
        self.encoded = encoded
        chunk = plan.chunk_size if plan.stream else max(1, min(plan.chunk_size, plan.size))
        self.capacity = HEADER.size + chunk

    def chunk_count(self) -> int | None:
        return None if self.plan.stream else self.plan.nchunks

    def _chunk(self, k: int) -> int:
        return self.plan.chunk_size if self.plan.stream else self.plan.chunk_length(k)

    def read_space(self, buffer: Buffer, k: int) -> Buffer:
        return buffer[HEADER.size: HEADER.size + self._chunk(k)]

    def seal(self, buffer: Buffer, k: int, got: int, last: bool, codec: Codec,
             unread: bool = False) -> None:
        """Write the header; encoded, replace the bytes read by the codec's output
        where it is shorter (else they travel as they are).  Thread-safe for distinct
        buffers, so chunks may be encoded in parallel."""
        flags = LAST if last else 0
        payload = got
        if self.encoded and got:
            packed = codec.encode(buffer[HEADER.size: HEADER.size + got])
            if len(packed) < got:
                flags |= ENCODED
                payload = len(packed)
                buffer[HEADER.size: HEADER.size + payload] = packed
        HEADER.pack_into(buffer, 0, payload, got, flags)

    def receive_space(self, buffer: Buffer, k: int) -> Buffer:
        return buffer[: self.capacity]

    def _header(self, buffer: Buffer) -> tuple[int, int, int]:
        payload, raw, flags = HEADER.unpack_from(buffer, 0)
        if not 0 <= payload <= self.capacity - HEADER.size or raw < 0:
            raise ValueError(f"a frame's header is damaged ({payload} bytes, {raw} raw)")
        return payload, raw, flags

    def message(self, buffer: Buffer, k: int) -> Buffer:
        return buffer[: HEADER.size + self._header(buffer)[0]]

    def whole(self, buffer: Buffer, k: int, count: int) -> bool:
        try:
            return count >= HEADER.size and count == len(self.message(buffer, k))
        except ValueError:
            return False

    def raw_length(self, buffer: Buffer, k: int) -> int:
        return self._header(buffer)[1]

    def is_last(self, buffer: Buffer, k: int) -> bool:
        return bool(self._header(buffer)[2] & LAST)

    def payload(self, buffer: Buffer, k: int) -> tuple[Buffer, bool]:
        payload, _, flags = self._header(buffer)
        return buffer[HEADER.size: HEADER.size + payload], bool(flags & ENCODED)


class Signed(Bare):
    """A chunk followed by its reader's xxh3-128 (:data:`SIGNATURE` bytes): where every
    node reads a share of the source, no single reader digests it all, so each chunk
    carries the digest its reader took of it, every node checks what it writes against
    it, and the source's digest is that of the readers' digests in chunk order
    (:class:`mpistage.digest.ChunkDigests`).  A chunk its reader could not read carries
    zeros, which no chunk's digest is: every node refuses it."""

    signed = True

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.capacity += SIGNATURE

    def seal(self, buffer: Buffer, k: int, got: int, last: bool, codec: Codec,
             unread: bool = False) -> None:
        length = self.plan.chunk_length(k)
        digest = new_digest()
        digest.update(buffer[:length])
        buffer[length: length + SIGNATURE] = bytes(SIGNATURE) if unread else digest.digest()

    def receive_space(self, buffer: Buffer, k: int) -> Buffer:
        return buffer[: self.plan.chunk_length(k) + SIGNATURE]

    def message(self, buffer: Buffer, k: int) -> Buffer:
        return buffer[: self.plan.chunk_length(k) + SIGNATURE]

    def whole(self, buffer: Buffer, k: int, count: int) -> bool:
        return count == self.plan.chunk_length(k) + SIGNATURE

    def signature(self, buffer: Buffer, k: int) -> bytes:
        """The digest chunk ``k``'s reader took of it (zeros: it could not read it)."""
        length = self.plan.chunk_length(k)
        return bytes(buffer[length: length + SIGNATURE])


#: Bytes of a chunk's signature: its xxh3-128.
SIGNATURE = 16

Framing = Bare | Framed | Signed


def framing_for(plan: Plan) -> Framing:
    """Frames where a message's length is not the plan's to tell: a stream, or a codec;
    signed chunks where every node reads a share of the source."""
    if plan.read_by == "all":
        return Signed(plan)
    if plan.stream or plan.codec != "none":
        return Framed(plan, encoded=plan.codec != "none")
    return Bare(plan)


def decode(framing: Framing, codec: Codec, buffer: Buffer, k: int) -> Buffer | bytes:
    """Chunk ``k``'s source bytes, decoded where they travelled encoded.

    Raises:
        ValueError: the frame or its encoding is damaged.
    """
    payload, encoded = framing.payload(buffer, k)
    if not encoded:
        return payload
    return codec.decode(payload, framing.raw_length(buffer, k))
