"""What the lost-node tests share: telling MPICH's fatal transport error apart, and the
promises that hold even when the launcher then killed every rank."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from mpistage.cluster import EmulatedCluster
from mpistage.sinks.file import TEMP_SUFFIX


def aborted_by_mpich(output: str) -> bool:
    """Whether MPICH aborted a rank on a fatal transport error (``Fatal error in …
    OFI poll failed``) and the launcher then killed the job."""
    return ("OFI poll failed" in output and "Fatal error in" in output
            and "YOUR APPLICATION TERMINATED" in output)


def aborted_hosts(output: str) -> set[int]:
    """The hosts whose rank MPICH aborted on a fatal transport error (``Abort(…) on node
    H … OFI poll failed``), whether or not the launcher then killed the job."""
    if "OFI poll failed" not in output:
        return set()
    return {int(h) for h in re.findall(r"Abort\(\d+\) on node (\d+) ", output)}


def launcher_failed(output: str) -> bool:
    """Whether hydra itself broke down after a kill and ended the job: the killed rank's
    proxy failed to forward a PMI response to it (``unable to forward PMI response``,
    ``Bad file descriptor``), exited, and ``mpiexec`` then failed its own assertion
    (``process manager error waiting for completion``; status 255, every rank killed)."""
    return "[mpiexec@" in output and "process manager error waiting for completion" in output


def temps_left_are_removed_next_run(cluster: EmulatedCluster, src: Path) -> None:
    """After a launcher killed every rank (no process can clean up after SIGKILL): every
    temp file left on a host is one the next run's pre-flight removes."""
    for host in range(cluster.hosts):
        cluster.run(host, [sys.executable, "-c", "import sys; from mpistage.sinks.file import "
                           "remove_stale_temps; remove_stale_temps(sys.argv[1])",
                           f"{cluster.scratch}/{src.name}"], check=True)
        temps = [p for p in os.listdir(cluster.scratch_dir(host)) if p.endswith(TEMP_SUFFIX)]
        assert not temps, f"temp file the next run keeps on host {host}: {temps}"
