"""bench/streams.py --small: every row of the streams benchmark runs and its copies
verify on every host (the goals are not checked: a CI machine is no cluster and
``--small`` does not enforce them); the cluster it built is gone after.  Needs root,
iproute2 and util-linux; skipped with the reason elsewhere.
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

EXPECTED = ["text", "zstd", "noise", "auto", "pipe", "stream", "text-half", "zstd-half"]


def test_small_run_has_every_row_verified(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "streams.py"), "--small", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    results = json.loads((tmp_path / "streams-small.json").read_text())
    rows = {row["id"]: row for row in results["rows"]}
    assert sorted(rows) == sorted(EXPECTED)
    for name, row in rows.items():
        assert row["ok"], f"{name}: {row['notes']}"
        assert isinstance(row["measured"], float) and math.isfinite(row["measured"]), name
    assert "zstd:3" in rows["zstd"]["notes"], "--compress zstd ran compressed"
    assert "zstd" not in rows["auto"]["notes"], "auto left random bytes alone"
    assert not [n for n in system.netns_names() if n.startswith("streamsmall-")], "cluster gone"
