"""Which argument differs from rank 0's (mpistage.staging.agreement), without MPI."""

from __future__ import annotations

import io
from pathlib import Path

from mpistage.staging.agreement import STREAM, canonical, first_difference


def fingerprint(**arguments):  # type: ignore[no-untyped-def]
    return [(name, canonical(value)) for name, value in arguments.items()]


def test_paths_compare_as_strings_and_sequences_as_tuples() -> None:
    assert canonical(Path("/a/b")) == "/a/b"
    assert canonical([Path("/a"), "b"]) == ("/a", "b")
    assert canonical(io.BytesIO(b"x")) == STREAM


def test_the_first_difference_is_found_and_agreement_is_the_length() -> None:
    zero = fingerprint(source="/in", dest="/out/n0/", timeout=30.0)
    assert first_difference(zero, zero) == 3
    assert first_difference(fingerprint(source="/in", dest="/out/n1/", timeout=31.0), zero) == 1
    assert first_difference(fingerprint(source=Path("/in"), dest="/out/n0/", timeout=30), zero) == 3


def test_a_streams_source_is_the_roots_alone() -> None:
    zero = fingerprint(source=io.BytesIO(b"data"), dest="/out")
    assert first_difference(fingerprint(source=None, dest="/out"), zero) == 2
    assert first_difference(fingerprint(source="/other", dest="/out"), zero) == 2
    stdin = fingerprint(source="-", dest="/out")
    assert first_difference(fingerprint(source=None, dest="/out"), stdin) == 2
    files = fingerprint(source="/in", dest="/out")
    assert first_difference(fingerprint(source="/elsewhere", dest="/out"), files) == 0
    # a file's path on the root and None elsewhere would raise on some ranks only: named
    assert first_difference(fingerprint(source=None, dest="/out"), files) == 0


def test_a_command_as_source_agrees_across_processes() -> None:
    """--from-cmd: every rank builds its own FromCommand (repr differs by address)."""
    import subprocess
    import sys
    script = ("from mpistage.staging.agreement import canonical\n"
              "from mpistage.sources.streams import FromCommand\n"
              "print(repr(canonical(FromCommand('cat x'))))\n")
    seen = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}
    assert seen == {repr(STREAM) + "\n"}
