"""bench/limits.py --small: every row of the limits benchmark runs and yields numbers.

The goals themselves are not checked here (a CI machine is no cluster and ``--small``
does not enforce them); what is checked is that every row ran, every mpistage run's
copies verified, and that the clusters it built are gone.  Needs root, iproute2 and
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

FIXED = ("chain-64K", "chain-256K", "chain-1M", "chain-4M", "chain-16M", "twotree-1M",
         "binomial-4M")
CLUSTER_ROWS = ("p2p", "relay", "bcast", "default", *FIXED, "auto", "best")
EXPECTED = (
    [f"c8.{r}" for r in CLUSTER_ROWS]
    + ["c8.whole", "c8.startup", "cpu", "cpu.mpi", "cpu.write"]
    + [f"c16.{r}" for r in CLUSTER_ROWS] + [f"c8g.{r}" for r in CLUSTER_ROWS]
    + ["shm", "shm.best", "rss.auto", "rss.default", "tiny", "import"]
)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_small_run_has_every_row_with_numbers(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "limits.py"), "--small", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    results = json.loads((tmp_path / "limits.json").read_text())
    rows = {row["id"]: row for row in results["rows"]}
    assert sorted(rows) == sorted(EXPECTED)
    for name, row in rows.items():
        assert row["ok"], f"{name}: {row['notes']}"
        assert is_number(row["measured"]), f"{name}: measured {row['measured']!r}"
        if row["goal"] is not None:
            assert isinstance(row["met"], bool), name
            if row["goal"]["kind"] != "max":
                assert is_number(row["reference"]) and is_number(row["ratio"]), name
        assert all(is_number(v) for v in row["runs"]), f"{name}: runs {row['runs']!r}"
    for name in EXPECTED:
        if name.split(".")[-1] in ("default", *FIXED, "auto", "whole"):
            assert "copies verified 1/1 runs" in rows[name]["notes"], name
    for name in ("c8.best", "c16.best", "c8g.best", "shm.best"):
        assert "fixed choices, fastest first: chain-" in rows[name]["notes"] or \
            "fixed choices, fastest first: twotree" in rows[name]["notes"] or \
            "fixed choices, fastest first: binomial" in rows[name]["notes"], rows[name]["notes"]
    for name in ("cpu.mpi", "cpu.write"):  # the split that tells MPI's and the kernel's apart
        assert "user + system CPU: mpistage " in rows[name]["notes"], rows[name]["notes"]
    assert "writing its copy to the same scratch" in rows["cpu.write"]["notes"]
    assert rows["cpu.write"]["goal"] is None  # context: the goal is on cpu.mpi
    assert results["failed"] == []
    table = (tmp_path / "limits.md").read_text()
    assert table.count("\n| ") == len(EXPECTED) + 1  # the header and one line per row
    assert run.stdout == table, "the table printed is the one written"
    assert not [n for n in system.netns_names() if n.startswith("limitsmall-")], "clusters gone"
    assert not (system.STATE_ROOT / "limitsmall").exists()
