"""The host machine's side of the emulated cluster: commands, namespaces, mounts, and
taking a cluster down by what exists rather than by a record of what was made."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from . import slurm as slurm_daemons
from .hosts import ClusterError

STATE_ROOT = Path("/run/mpistage-cluster")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
TOOLS = ("ip", "tc", "nsenter", "unshare", "mount", "umount")


def check_prerequisites() -> None:
    """Raise :class:`ClusterError` unless root with iproute2 and util-linux at hand."""
    if os.geteuid() != 0:
        raise ClusterError("the emulated cluster needs root (network and mount namespaces)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise ClusterError(
            f"missing {', '.join(missing)}: on Debian, apt-get install iproute2 util-linux mount"
        )


def run_command(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; with ``check``, raise :class:`ClusterError` with its stderr if it fails."""
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ClusterError(f"{shlex.join(argv)} failed: {result.stderr.strip() or result.returncode}")
    return result


def ip(*args: str) -> None:
    """``ip ARGS`` (iproute2), checked."""
    run_command(["ip", *args])


def netns_names() -> list[str]:
    """The network namespaces that exist now."""
    if shutil.which("ip") is None:
        return []
    listing = run_command(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return [p for p in points if p.startswith(prefix) or p == str(directory)]


def teardown(name: str) -> list[str]:
    """Remove every namespace, mount and file of cluster ``name``; returns what went.

    Idempotent, and safe to call for a cluster that only half came up: it looks for what
    exists rather than trusting a record of what was made.  Processes still running in
    the cluster's namespaces (a hung rank) are killed first.
    """
    if not NAME_RE.match(name):
        raise ClusterError(f"invalid cluster name {name!r}")
    removed: list[str] = []
    prefix = f"{name}-"
    state = STATE_ROOT / name
    removed += [f"daemon {d}" for d in slurm_daemons.stop(state)]
    for netns in netns_names():
        if not netns.startswith(prefix):
            continue
        pids = run_command(["ip", "netns", "pids", netns], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run_command(["ip", "netns", "del", netns], check=False)
        removed.append(f"netns {netns}")
    record: dict[str, object] = {}
    if (state / "state.json").exists():
        try:
            record = json.loads((state / "state.json").read_text())
        except (OSError, ValueError):
            record = {}
    for point in sorted(_mounts_under(state), key=len, reverse=True):
        run_command(["umount", "-l", point], check=False)
        removed.append(f"mount {point}")
    if state.exists():
        shutil.rmtree(state, ignore_errors=True)
        removed.append(f"dir {state}")
    mountpoint = record.get("scratch")
    others = STATE_ROOT.exists() and any(STATE_ROOT.iterdir())
    # Another cluster may be using the same mount point (removing it would detach its
    # hosts' scratch mounts); the last one down removes it.
    if record.get("created_mountpoint") and isinstance(mountpoint, str) and not others:
        try:
            os.rmdir(mountpoint)
            removed.append(f"dir {mountpoint}")
        except OSError:
            pass
    shared = record.get("created_shared_mountpoint")
    if isinstance(shared, str) and not others:  # as the scratch's, the last one down
        try:
            os.rmdir(shared)
            removed.append(f"dir {shared}")
        except OSError:
            pass
    if STATE_ROOT.exists() and not any(STATE_ROOT.iterdir()):
        STATE_ROOT.rmdir()
    return removed


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` clauses (teardown) run."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
