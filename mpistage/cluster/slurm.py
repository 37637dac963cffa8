"""A real Slurm on the emulated hosts: munge, slurmctld on the head, one slurmd per host.

Everything lives in the cluster's state directory (``/run/mpistage-cluster/NAME/slurm``):
the configuration (bound over ``/etc/slurm`` on every emulated host, so client commands
run there find it with no environment), a private munge key and socket, spool and log
directories per node, and the daemons' pid files.  :func:`stop` ends the daemons; the
cluster's teardown removes the directory with the rest.

Each slurmd runs through the cluster's ``enter`` script, that is in its host's network,
UTS and mount namespaces, so every node has its own host name, address and ``/scratch``.
(``ip netns exec`` would remount ``/sys``, hiding the cgroup tree slurmd 22.05 needs.)
munged runs in the machine's own namespaces: its unix socket is a file, reachable from
every host.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .hosts import Hosts

log = logging.getLogger("mpistage.cluster.slurm")

#: Debian packages that provide these (installed by ``.ci/run``).
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "salloc", "squeue", "scancel", "sinfo", "scontrol", "sbcast")
PARTITION = "main"
#: Logical CPUs each emulated node offers, so several ranks per node can be allocated on
#: a machine with fewer cores (``SlurmdParameters=config_overrides`` lets slurmd accept it).
CPUS_PER_NODE = 4
START_TIMEOUT = 60.0


class SlurmError(RuntimeError):
    """Slurm cannot be started or used on the emulated cluster."""


@dataclass(frozen=True)
class SlurmSettings:
    """What a site would put in slurm.conf for mpistage, chosen at bring-up.

    Attributes:
        prolog: script every node runs as root when a job is allocated to it
            (``PrologFlags=Alloc``), e.g. ``jobscripts/prolog.sh``.
        epilog: script every node runs as root when a job ends there.
        kill_wait: seconds between SIGTERM and SIGKILL when a job is cancelled or runs
            out of time (Slurm's default is 30).
    """

    prolog: str | None = None
    epilog: str | None = None
    kill_wait: int = 30


def missing_tools() -> list[str]:
    """Slurm and munge programs not on this machine."""
    return [tool for tool in (*DAEMONS, *CLIENTS) if shutil.which(tool) is None]


def slurm_dir(cluster: Hosts) -> Path:
    return cluster.state_dir / "slurm"


def etc_dir(cluster: Hosts) -> Path:
    """Bound over ``/etc/slurm`` on every emulated host."""
    return slurm_dir(cluster) / "etc"


def munge_socket(cluster: Hosts) -> Path:
    return slurm_dir(cluster) / "munge" / "munge.socket"


def write_config(cluster: Hosts, settings: SlurmSettings) -> Path:
    """Write slurm.conf (and an empty cgroup.conf) for ``cluster``; returns slurm.conf."""
    base = slurm_dir(cluster)
    etc = etc_dir(cluster)
    etc.mkdir(parents=True, exist_ok=True)
    for name in cluster.hostnames:
        (base / "nodes" / name / "spool").mkdir(parents=True, exist_ok=True)
    (base / "ctld").mkdir(exist_ok=True)
    head = cluster.hostnames[0]
    lines = [
        f"ClusterName={cluster.name}",
        f"SlurmctldHost={head}({cluster.address(0)})",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"AuthInfo=socket={munge_socket(cluster)}",
        f"StateSaveLocation={base / 'ctld'}",
        f"SlurmctldPidFile={base / 'ctld' / 'slurmctld.pid'}",
        f"SlurmctldLogFile={base / 'ctld' / 'slurmctld.log'}",
        f"SlurmdSpoolDir={base / 'nodes' / '%n' / 'spool'}",
        f"SlurmdPidFile={base / 'nodes' / '%n' / 'slurmd.pid'}",
        f"SlurmdLogFile={base / 'nodes' / '%n' / 'slurmd.log'}",
        "SlurmdParameters=config_overrides",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "ReturnToService=2",
        "MpiDefault=none",
        # Node-local temporary files (the pmix plugin's per-step directories among them):
        # /tmp is one directory shared by every emulated host, /dev/shm is each host's own.
        "TmpFS=/dev/shm",
        f"KillWait={settings.kill_wait}",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "MinJobAge=30",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    if settings.prolog:
        lines += [f"Prolog={settings.prolog}", "PrologFlags=Alloc"]
    if settings.epilog:
        lines.append(f"Epilog={settings.epilog}")
    for i, name in enumerate(cluster.hostnames):
        lines.append(f"NodeName={name} NodeAddr={cluster.address(i)} CPUs={CPUS_PER_NODE} "
                     "State=UNKNOWN")
    lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    conf = etc / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    (etc / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")
    return conf


def start(cluster: Hosts, settings: SlurmSettings = SlurmSettings()) -> None:
    """Start munged, slurmctld and every slurmd; return once every node is idle.

    Raises:
        SlurmError: a program is missing or a daemon did not come up; the message
            carries the end of its log.
    """
    missing = missing_tools()
    if missing:
        raise SlurmError(f"missing {', '.join(missing)}: on Debian, apt-get install "
                         f"{' '.join(PACKAGES)}")
    write_config(cluster, settings)
    _start_munge(cluster)
    base = slurm_dir(cluster)
    _spawn(cluster.command(0, ["slurmctld", "-D", "-i"]), base / "ctld" / "slurmctld.out")
    for name in cluster.hostnames:
        _spawn(cluster.command(name, ["slurmd", "-D", "-N", name]),
               base / "nodes" / name / "slurmd.out")
    wait_until_idle(cluster)


def wait_until_idle(cluster: Hosts, timeout: float = START_TIMEOUT) -> None:
    """Wait until ``sinfo`` shows every node idle."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        run = cluster.run(0, ["sinfo", "--noheader", "--Node", "--format=%N %T"],
                          capture_output=True, text=True, timeout=30)
        states = dict(line.split()[:2] for line in run.stdout.splitlines() if line.strip())
        if len(states) == cluster.hosts and all(s == "idle" for s in states.values()):
            return
        time.sleep(0.5)
    raise SlurmError(f"Slurm nodes not idle after {timeout:g} s: {states or 'no answer'}; "
                     f"{_log_tail(slurm_dir(cluster) / 'ctld' / 'slurmctld.log')}")


def stop(state_dir: Path) -> list[str]:
    """Stop the daemons of the cluster in ``state_dir`` (idempotent); returns what stopped.

    The slurmds and slurmctld run in the cluster's namespaces (the teardown kills what
    is left there); munged runs outside them, so it is stopped here by its pid file.
    """
    stopped = []
    base = state_dir / "slurm"
    pid_files = sorted(base.glob("nodes/*/slurmd.pid")) + [base / "ctld" / "slurmctld.pid",
                                                          base / "munge" / "munged.pid"]
    for pid_file in pid_files:
        pid = _read_pid(pid_file)
        if pid is not None and _is_daemon(pid):
            _terminate(pid)
            stopped.append(f"{pid_file.stem} (pid {pid})")
    return stopped


def _start_munge(cluster: Hosts) -> None:
    directory = munge_socket(cluster).parent
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    key = directory / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    run = subprocess.run(
        ["munged", "--force", f"--key-file={key}", f"--socket={munge_socket(cluster)}",
         f"--pid-file={directory / 'munged.pid'}", f"--log-file={directory / 'munged.log'}",
         f"--seed-file={directory / 'munged.seed'}"],
        capture_output=True, text=True, timeout=30,
    )
    if run.returncode != 0:
        raise SlurmError(f"munged failed: {run.stderr.strip() or run.returncode}")


def _spawn(argv: list[str], output: Path) -> None:
    """Start a daemon detached from us (``setsid --fork``); it writes its own pid file."""
    with open(output, "ab") as out:
        subprocess.run(["setsid", "--fork", *argv], stdin=subprocess.DEVNULL, stdout=out,
                       stderr=out, check=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_daemon(pid: int) -> bool:
    """Whether ``pid`` (read from one of our pid files) is still one of :data:`DAEMONS`,
    not an unrelated process that inherited the number."""
    try:
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return command in DAEMONS


def _terminate(pid: int, grace: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"no log at {path}"
