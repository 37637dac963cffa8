import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpistage.errors import UsageError
from mpistage.units import format_bytes, format_rate, format_seconds, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [("0", 0), ("4096", 4096), ("64K", 64 << 10), ("8M", 8 << 20), ("8m", 8 << 20),
     ("8MiB", 8 << 20), ("8MB", 8 << 20), ("1G", 1 << 30), ("3T", 3 << 40), (" 2 M ", 2 << 20)],
)
def test_parse_size_accepts_binary_suffixes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "-1", "1.5M", "8Q", "8 MB extra", "0x10"])
def test_parse_size_rejects_with_a_hint(text: str) -> None:
    with pytest.raises(UsageError, match="K, M, G or T"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from(["", "K", "M", "G", "T"]))
def test_parse_size_round_trips(number: int, suffix: str) -> None:
    assert parse_size(f"{number}{suffix}") == number * {"": 1, "K": 1 << 10, "M": 1 << 20,
                                                          "G": 1 << 30, "T": 1 << 40}[suffix]


def test_formatting_for_people() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(256 << 20) == "256.0 MiB"
    assert format_bytes(5 << 40) == "5.0 TiB"
    assert format_rate(100 << 20, 2.0) == "50.0 MiB/s"
    assert format_rate(1, 0) == "-"
    assert format_seconds(0.0123) == "12.3 ms"
    assert format_seconds(75) == "75.00 s"
    assert format_seconds(5e-6) == "5 us"
