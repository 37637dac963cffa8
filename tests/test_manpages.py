"""The manual pages in ``man/`` are what ``man/generate.sh`` makes of the commands' own
argument parsers today: an option added or changed without regenerating them fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def without_date(page: str) -> list[str]:
    """The page's lines, the date in its ``.TH`` line left out (it is the day it was made)."""
    return [re.sub(r'^(\.TH \S+ "[^"]*" )"[^"]*"', r'\1""', line) for line in page.splitlines()]


@pytest.mark.parametrize("prog", ["mpistage", "mpistage-sbcast"])
def test_the_committed_manual_page_is_the_parsers(prog: str, tmp_path: Path) -> None:
    script = (ROOT / "man" / "generate.sh").read_text()
    assert f"page {prog} " in script
    copy = tmp_path / "man"
    copy.mkdir()
    (copy / "generate.sh").write_text(script)
    made = subprocess.run(["bash", str(copy / "generate.sh")], cwd=tmp_path, text=True,
                          capture_output=True, env={"PATH": f"{BIN}:/usr/bin:/bin"})
    assert made.returncode == 0, made.stderr
    fresh = (copy / f"{prog}.1").read_text()
    committed = (ROOT / "man" / f"{prog}.1").read_text()
    assert without_date(committed) == without_date(fresh), \
        f"man/{prog}.1 is out of step with its parser: run bash man/generate.sh"
    assert r"\-\-timeout" in fresh and ".SH OPTIONS" in fresh
