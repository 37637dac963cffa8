"""Byte sizes and durations for people: parse ``8M``, print ``256.0 MiB``."""

from __future__ import annotations

import re

from .errors import UsageError

_MULTIPLIERS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse a byte count with an optional binary suffix.

    ``"4096"``, ``"64K"``, ``"8M"``, ``"8MiB"``, ``"1G"`` are accepted; suffixes are powers
    of 1024 (chunk sizes are about buffers, and buffers are counted in KiB, not kB).

    Raises:
        UsageError: the text is not a whole number with an optional K/M/G/T suffix.
    """
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(
            f"invalid size {text!r}: expected a whole number with an optional K, M, G or T "
            "suffix (powers of 1024), e.g. 8M"
        )
    number, suffix = match.groups()
    return int(number) * _MULTIPLIERS[suffix.upper()]


def format_bytes(count: float) -> str:
    """``268435456`` → ``"256.0 MiB"``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_rate(count: float, seconds: float) -> str:
    """Throughput as ``"123.4 MiB/s"``; ``"-"`` when no time was measured."""
    if seconds <= 0:
        return "-"
    return f"{format_bytes(count / seconds)}/s"


def format_seconds(seconds: float) -> str:
    """``0.0123`` → ``"12.3 ms"``, ``75`` → ``"75.0 s"``."""
    if seconds < 0.5e-6:
        return "0 s" if seconds <= 0 else "<1 us"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"
