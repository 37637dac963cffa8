"""Link rates as the emulated cluster's options and ``tc`` write them, and the token
bucket a shaped link gets."""

from __future__ import annotations

import re

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:bit|bps|b)?\s*$", re.IGNORECASE)


def parse_rate(text: str | int) -> int:
    """Link rate in bit/s: ``"100mbit"``, ``"1gbit"``, ``"500kbit"``, ``"1g"``, ``10**8``."""
    if isinstance(text, int):
        return text
    match = _RATE_RE.match(text)
    if not match:
        raise ValueError(f"invalid rate {text!r}: expected e.g. 100mbit, 1gbit, 500kbit")
    number, unit = match.groups()
    return int(float(number) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[unit.lower()])


def format_link_rate(bits: int) -> str:
    """A link's rate in bits/s as tc writes it: ``100000000`` → ``"100mbit"`` (not to be
    confused with :func:`mpistage.units.format_rate`, a throughput in bytes/s)."""
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= scale and bits % scale == 0:
            return f"{bits // scale}{unit}"
    return f"{bits}bit"


def bucket_bytes(bits: int) -> int:
    """The token bucket of a link shaped to ``bits`` per second: what it lets through
    at full speed after a pause (a 1 MiB copy at 1 Gbit/s takes 5-7 ms, not 8.4).  tbf
    needs at least one timer tick's worth of bytes (HZ 250) and one full-size (GSO)
    packet; 64 KiB is enough up to ~130 Mbit/s."""
    return max(64 << 10, bits // 8 // 250)
