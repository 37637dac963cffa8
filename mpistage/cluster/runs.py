"""Running mpistage itself on the emulated cluster and reading its report (the trial
run of ``python -m mpistage.cluster try`` and the sweep in ``bench/sweep.py`` share it)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cluster import EmulatedCluster


def stage_with_report(
    cluster: EmulatedCluster, src: Path, options: Sequence[str], *,
    hosts: Sequence[int] | None = None, env: Mapping[str, str] | None = None,
    timeout: float = 1800,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """``mpistage -q --report … OPTIONS SRC SCRATCH`` on the cluster's hosts (or
    ``hosts``); the finished run, and its JSON report (``None`` if none was written)."""
    with tempfile.TemporaryDirectory(prefix="mpistage-run-") as tmp:
        report_path = Path(tmp) / "report.json"
        run = cluster.mpiexec(
            [sys.executable, "-m", "mpistage", "-q", "--report", str(report_path), *options,
             str(src), cluster.scratch],
            hosts=list(hosts) if hosts is not None else None, env=dict(env or {}),
            capture_output=True, text=True, timeout=timeout,
        )
        report = json.loads(report_path.read_text()) if report_path.exists() else None
    return run, report
