"""Running mpistage itself on the emulated cluster and reading its report (the trial
run of ``python -m mpistage.cluster try`` and the sweep in ``bench/sweep.py`` share it),
and the point-to-point copy the benchmarks hold it against."""

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


def mpistage_command(report: Path, options: Sequence[str], src: Path, dest: str) -> list[str]:
    """``python -m mpistage -q --report REPORT OPTIONS SRC DEST``, as a user runs it."""
    return [sys.executable, "-m", "mpistage", "-q", "--report", str(report), *options,
            str(src), dest]


def read_report(path: Path) -> dict[str, Any] | None:
    """A run's JSON report, ``None`` if it wrote none."""
    return json.loads(path.read_text()) if path.exists() else None


def stage_with_report(
    cluster: EmulatedCluster, src: Path, options: Sequence[str], *,
    hosts: Sequence[int] | None = None, env: Mapping[str, str] | None = None,
    timeout: float = 1800, prefix: Sequence[str] = (),
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """``mpistage -q --report … OPTIONS SRC SCRATCH`` on the cluster's hosts (or
    ``hosts``), each rank started under ``prefix`` (a measuring wrapper); the finished
    run, and its JSON report (``None`` if none was written)."""
    with tempfile.TemporaryDirectory(prefix="mpistage-run-") as tmp:
        report_path = Path(tmp) / "report.json"
        run = cluster.mpiexec(
            [*prefix, *mpistage_command(report_path, options, src, cluster.scratch)],
            hosts=list(hosts) if hosts is not None else None, env=dict(env or {}),
            capture_output=True, text=True, timeout=timeout,
        )
        report = read_report(report_path)
    return run, report


def point_to_point(cluster: EmulatedCluster, size: int) -> float:
    """Seconds of one MPI point-to-point copy of ``size`` bytes from host 0 to host 1
    (:mod:`mpistage.cluster.p2p`): the bound of moving the file once."""
    run = cluster.mpiexec([sys.executable, "-m", "mpistage.cluster.p2p", str(size)],
                          hosts=[0, 1], capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"point-to-point run failed: {run.stderr.strip()}")
    return float(run.stdout.split()[-1])
