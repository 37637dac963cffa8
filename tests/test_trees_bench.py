"""bench/trees.py --small: every row of the trees benchmark runs, and every copy verifies.

The goals are not checked here (a CI machine is no cluster and ``--small`` does not
enforce them); what is checked is that each row ran and its copies verified file by
file on every host, and that the cluster it built is gone.  Needs root, iproute2 and
util-linux, like the emulated-cluster tests; skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpistage.cluster import system

ROOT = Path(__file__).resolve().parent.parent
MISSING = [t for t in system.TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(MISSING),
        reason="needs root and iproute2/util-linux (network and mount namespaces)"
        + (f"; missing {', '.join(MISSING)}" if MISSING else ""),
    ),
]

EXPECTED = ["small.file", "small", "small.tar", "small.rerun", "mixed.file", "mixed", "local"]


def test_small_run_has_every_row_verified(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trees.py"), "--small", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    results = json.loads((tmp_path / "trees.json").read_text())
    rows = {row["id"]: row for row in results["rows"]}
    assert sorted(rows) == sorted(EXPECTED)
    for name, row in rows.items():
        assert row["ok"], f"{name}: {row['notes']}"
        assert isinstance(row["measured"], float) and math.isfinite(row["measured"]), name
        assert row["notes"].startswith("verified 1/1 runs"), f"{name}: {row['notes']}"
    assert "files sent: 0" in rows["small.rerun"]["notes"], "a re-run sends nothing"
    assert results["failed"] == []
    assert run.stdout.strip() == (tmp_path / "trees.md").read_text().strip()
    assert not [n for n in system.netns_names() if n.startswith("treesmall-")], "cluster gone"
