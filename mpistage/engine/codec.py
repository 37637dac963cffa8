"""Codecs: how a chunk's bytes travel (``--compress``).

The root encodes each chunk once, in its reader thread (zstandard and lz4 release the
GIL, so the MPI thread keeps sending meanwhile); the nodes forward the encoded bytes
unchanged and decode only for their own write (:mod:`mpistage.engine.frames` carries each
chunk's encoded and raw lengths).  Digests are always of the raw bytes, so a chunk
corrupted on the way, encoded or not, is caught the same way.

A chunk that does not shrink travels as it is (its frame says so): compressing
incompressible data costs the compression time, never more bytes on the wire.

Each codec object is used by one thread; the engine makes one for the root's reader and
one for each node's writer (:func:`make`).  ``zstandard`` and ``lz4`` are imported only
by a run that compresses (the ``compress`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import UsageError
from .buffers import Buffer

NONE = "none"
AUTO = "auto"
#: zstd's level when none is given: its own default, ~3.5x on text at hundreds of MB/s.
ZSTD_DEFAULT_LEVEL = 3
ZSTD_LEVELS = range(-7, 23)  # negative levels are zstd's fast modes
#: What ``auto`` weighs against sending the bytes as they are.
AUTO_CANDIDATES = ("lz4", "zstd:1", "zstd:3")


class Codec(Protocol):
    """Turns a chunk into what travels, and back."""

    name: str

    def encode(self, raw: Buffer) -> Buffer | bytes:
        """On the root, after reading: the bytes to send for ``raw``."""

    def decode(self, encoded: Buffer, raw_length: int) -> Buffer | bytes:
        """On every node, before writing: the ``raw_length`` source bytes that
        ``encoded`` stands for.

        Raises:
            ValueError: ``encoded`` is not a valid encoding of that many bytes.
        """


class Identity:
    """Chunks travel as they are (no copy)."""

    name = NONE

    def encode(self, raw: Buffer) -> Buffer | bytes:
        return raw

    def decode(self, encoded: Buffer, raw_length: int) -> Buffer | bytes:
        return encoded


class Zstd:
    """Zstandard at ``level``, one frame per chunk (it records the chunk's length)."""

    def __init__(self, level: int = ZSTD_DEFAULT_LEVEL) -> None:
        import zstandard

        self.name = f"zstd:{level}"
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError

    def encode(self, raw: Buffer) -> bytes:
        return self._compressor.compress(raw)

    def decode(self, encoded: Buffer, raw_length: int) -> bytes:
        try:
            out = self._decompressor.decompress(encoded, max_output_size=raw_length)
        except self._error as exc:
            raise ValueError(f"zstd: {exc}") from None
        if len(out) != raw_length:
            raise ValueError(f"zstd: {len(out)} bytes decoded, {raw_length} expected")
        return out


class Lz4:
    """LZ4's block format: the fastest to encode and decode, a lower ratio than zstd."""

    name = "lz4"

    def __init__(self) -> None:
        import lz4.block

        self._block = lz4.block

    def encode(self, raw: Buffer) -> bytes:
        return self._block.compress(raw, store_size=False)

    def decode(self, encoded: Buffer, raw_length: int) -> bytes:
        try:
            out = self._block.decompress(encoded, uncompressed_size=raw_length)
        except self._block.LZ4BlockError as exc:
            raise ValueError(f"lz4: {exc}") from None
        if len(out) != raw_length:
            raise ValueError(f"lz4: {len(out)} bytes decoded, {raw_length} expected")
        return out


IDENTITY: Codec = Identity()


def check(name: str) -> str:
    """``name`` in its canonical form (``zstd`` is ``zstd:3``), if it names a codec,
    ``auto`` or ``none``.

    Raises:
        UsageError: an unknown codec, a zstd level out of range, or the codec's library
            is not installed.
    """
    kind, _, level = name.partition(":")
    if name in (NONE, AUTO):
        return name
    if kind == "lz4" and not level:
        _require("lz4.block", "lz4")
        return "lz4"
    if kind == "zstd":
        try:
            number = int(level) if level else ZSTD_DEFAULT_LEVEL
        except ValueError:
            number = None
        if number is None or number not in ZSTD_LEVELS:
            raise UsageError(f"invalid zstd level {level!r}: expected "
                             f"{ZSTD_LEVELS.start} to {ZSTD_LEVELS.stop - 1}")
        _require("zstandard", "zstandard")
        return f"zstd:{number}"
    raise UsageError(f"invalid --compress {name!r}: expected none, zstd[:LEVEL], lz4 or auto")


def _require(module: str, package: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"compression with {package} needs the {package!r} package "
                         "(pip install 'mpistage[compress]')") from None


def make(name: str) -> Codec:
    """A fresh codec for one thread (``name`` as :func:`check` returns it)."""
    if name == NONE:
        return IDENTITY
    if name == "lz4":
        return Lz4()
    if name.startswith("zstd:"):
        return Zstd(int(name.partition(":")[2]))
    raise ValueError(f"no codec {name!r}")


@dataclass(frozen=True)
class CodecCost:
    """What a codec does to this source, measured on a sample (for the cost model).

    Attributes:
        name: the codec.
        ratio: bytes on the wire per source byte (a chunk that would grow travels as it
            is, so at most 1).
        encode_rate: source bytes per second the root encodes (with all its
            ``encode_threads``).
        decode_rate: source bytes per second a node decodes (one thread).
        encode_threads: the root's encoder threads (their CPU is ``threads / rate``
            seconds per byte, which ranks sharing cores pay for).
    """

    name: str
    ratio: float
    encode_rate: float
    decode_rate: float
    encode_threads: int = 1


def measure(name: str, samples: Sequence[bytes]) -> CodecCost:
    """Ratio and speeds of codec ``name`` on ``samples`` (pieces of the source)."""
    codec = make(name)
    raw = encoded = 0
    encoding = decoding = 0.0
    for sample in samples:
        started = time.perf_counter()
        packed = codec.encode(memoryview(sample))
        encoding += time.perf_counter() - started
        started = time.perf_counter()
        codec.decode(memoryview(packed), len(sample))
        decoding += time.perf_counter() - started
        raw += len(sample)
        encoded += min(len(packed), len(sample))
    if not raw:
        return CodecCost(name, 1.0, float("inf"), float("inf"))
    return CodecCost(name, encoded / raw, raw / max(encoding, 1e-9), raw / max(decoding, 1e-9))


def candidates(requested: str) -> tuple[str, ...]:
    """The codecs the model chooses among for ``--compress requested`` (``none`` is
    always one: sending as is)."""
    if requested == AUTO:
        available = []
        for name in AUTO_CANDIDATES:
            try:
                available.append(check(name))
            except UsageError:
                pass  # its library is not installed: auto goes without it
        return (NONE, *available)
    return (requested,)
