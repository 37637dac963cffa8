"""Bring an emulated cluster up, run commands on it, and tear it down.

Everything the cluster creates carries its name as a prefix, so :func:`teardown` can
remove exactly that and nothing else:

* network namespaces ``NAME-sw`` (the switch, with bridge ``br0``) and ``NAME-h0`` …
  (the hosts, each with ``eth0`` at 198.18.0.<i+1>/24);
* the state directory ``/run/mpistage-cluster/NAME/`` with the ``hosts`` file, the
  ``enter`` and ``launcher`` scripts and two tmpfs per host, mounted at ``scratch/HOST``
  and ``shm/HOST`` (the host's own ``/dev/shm``, as a real node has);
* the scratch mount point (``/scratch``) if it did not exist before;
* with ``slurm``, a Slurm of its own (see :mod:`mpistage.cluster.slurm`): munged,
  slurmctld on host 0, one slurmd per host, configuration under ``slurm/``.

A command runs "on" a host through ``enter HOST CMD…``: ``nsenter`` into the host's
network namespace, then ``unshare`` a mount and UTS namespace in which the host name is
set, the cluster's ``hosts`` file is bound over ``/etc/hosts``, the host's scratch is
bound over the scratch path, its shm over ``/dev/shm`` and, with Slurm, the cluster's configuration over ``/etc/slurm``.  (``ip netns exec`` is not used: it remounts ``/sys``.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType

from .. import mpi_library
from . import slurm as slurm_daemons
from .hosts import ClusterError
from .slurm import SlurmSettings
from .system import NAME_RE, STATE_ROOT, check_prerequisites, ip, netns_names, run_command, teardown

log = logging.getLogger("mpistage.cluster")

SUBNET = "198.18.0"  # inside 198.18.0.0/15, the RFC 2544 benchmarking range
MAX_HOSTS = 64

#: Environment that makes the PyPI MPICH wheel talk TCP between hosts (so traffic crosses
#: the shaped links); :func:`mpistage.mpi_library.launch_environment` adds the settings for
#: oversubscribed ranks (more ranks than cores) and, for Open MPI, running as root.
MPI_ENV = {
    "MPIR_CVAR_CH4_NETMOD": "ofi",
    "FI_PROVIDER": "tcp",
}

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:bit|bps|b)?\s*$", re.IGNORECASE)


def parse_rate(text: str | int) -> int:
    """Link rate in bit/s: ``"100mbit"``, ``"1gbit"``, ``"500kbit"``, ``"1g"``, ``10**8``."""
    if isinstance(text, int):
        return text
    match = _RATE_RE.match(text)
    if not match:
        raise ValueError(f"invalid rate {text!r}: expected e.g. 100mbit, 1gbit, 500kbit")
    number, unit = match.groups()
    return int(float(number) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[unit.lower()])


def format_link_rate(bits: int) -> str:
    """A link's rate in bits/s as tc writes it: ``100000000`` → ``"100mbit"`` (not to be
    confused with :func:`mpistage.units.format_rate`, a throughput in bytes/s)."""
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= scale and bits % scale == 0:
            return f"{bits // scale}{unit}"
    return f"{bits}bit"


@dataclass(frozen=True)
class HostSpec:
    """Per-host overrides: a slower link (a straggler) or a small scratch (disk full)."""

    rate: int | None = None
    scratch_size: str | None = None


@dataclass
class EmulatedCluster:
    """N hosts on this machine; use as a context manager, or :meth:`up` / :meth:`down`.

    Args:
        hosts: number of hosts (2 to 64; the Ka figures use 8 and 16).
        rate: link rate of every host, both directions (``"100mbit"`` matches the Ka
            paper's nodes; default ``"1gbit"``).
        name: prefix of everything created; clusters with different names coexist.
        scratch: path at which every host sees its own private scratch directory.
        scratch_size: size of every host's scratch tmpfs (default: tmpfs default, half
            of RAM, allocated only as used).
        overrides: per-host :class:`HostSpec`, by host index.
        slurm: also start a Slurm (munge, slurmctld, one slurmd per host, one partition
            holding every host) with these settings; ``None``: no Slurm.
    """

    hosts: int = 8
    rate: str | int = "1gbit"
    name: str = "mpistage"
    scratch: str = "/scratch"
    scratch_size: str | None = None
    overrides: Mapping[int, HostSpec] = field(default_factory=dict)
    slurm: SlurmSettings | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ClusterError(f"invalid cluster name {self.name!r}: expected [a-z][a-z0-9]{{0,11}}")
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise ClusterError(f"invalid host count {self.hosts}: expected 1 to {MAX_HOSTS}")
        for index in self.overrides:
            if not 0 <= index < self.hosts:
                raise ClusterError(f"override for host {index}, but hosts are 0..{self.hosts - 1}")
        self.rate_bits = parse_rate(self.rate)

    # -- names and places -----------------------------------------------------------------

    @property
    def hostnames(self) -> list[str]:
        return [f"{self.name}-h{i}" for i in range(self.hosts)]

    @property
    def switch(self) -> str:
        return f"{self.name}-sw"

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def enter_script(self) -> Path:
        return self.state_dir / "enter"

    @property
    def launcher(self) -> Path:
        return self.state_dir / "launcher"

    def host(self, host: int | str) -> str:
        """Host name of ``host`` (an index or a name)."""
        if isinstance(host, int):
            if not 0 <= host < self.hosts:
                raise ClusterError(f"no host {host}: hosts are 0..{self.hosts - 1}")
            return self.hostnames[host]
        if host not in self.hostnames:
            raise ClusterError(f"no host {host!r}: hosts are {', '.join(self.hostnames)}")
        return host

    def index(self, host: int | str) -> int:
        return self.hostnames.index(self.host(host))

    def address(self, host: int | str) -> str:
        return f"{SUBNET}.{self.index(host) + 1}"

    def scratch_dir(self, host: int | str) -> Path:
        """The host's private scratch, as seen from outside the cluster."""
        return self.state_dir / "scratch" / self.host(host)

    def shm_dir(self, host: int | str) -> Path:
        """The host's private ``/dev/shm``, as seen from outside the cluster."""
        return self.state_dir / "shm" / self.host(host)

    def rate_of(self, host: int | str) -> int:
        spec = self.overrides.get(self.index(host))
        return spec.rate if spec is not None and spec.rate is not None else self.rate_bits

    @classmethod
    def attach(cls, name: str = "mpistage") -> EmulatedCluster:
        """The cluster ``name`` that an earlier :meth:`up` (maybe another process) made."""
        record_path = STATE_ROOT / name / "state.json"
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            raise ClusterError(
                f"no cluster named {name!r} is up: 'python -m mpistage.cluster up' makes one"
            ) from None
        return cls(
            hosts=record["hosts"], rate=record["rate"], name=name, scratch=record["scratch"],
            scratch_size=record["scratch_size"],
            overrides={int(i): HostSpec(r, s) for i, (r, s) in record["overrides"].items()},
            slurm=SlurmSettings(**record["slurm"]) if record.get("slurm") else None,
        )

    # -- life cycle -----------------------------------------------------------------------

    def up(self) -> EmulatedCluster:
        """Create everything; on any failure, remove what was created and raise."""
        check_prerequisites()
        if self.switch in netns_names() or self.state_dir.exists():
            raise ClusterError(
                f"a cluster named {self.name!r} already exists: "
                f"'python -m mpistage.cluster down --name {self.name}' removes it"
            )
        try:
            self._create_state()
            ip("netns", "add", self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for i, host in enumerate(self.hostnames):
                self._add_host(i, host)
            if self.slurm is not None:
                slurm_daemons.start(self, self.slurm)
        except BaseException:
            teardown(self.name)
            raise
        log.info("cluster %s up: %d hosts at %s", self.name, self.hosts, format_link_rate(self.rate_bits))
        return self

    def down(self) -> list[str]:
        """Remove everything this cluster created (idempotent); returns what went."""
        return teardown(self.name)

    def __enter__(self) -> EmulatedCluster:
        return self.up()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def _create_state(self) -> None:
        state = self.state_dir
        (state / "scratch").mkdir(parents=True)
        (state / "shm").mkdir()
        created_mountpoint = False
        if not os.path.isdir(self.scratch):
            os.makedirs(self.scratch)
            created_mountpoint = True
        (state / "state.json").write_text(json.dumps({
            "name": self.name, "hosts": self.hosts, "rate": self.rate_bits,
            "scratch": self.scratch, "scratch_size": self.scratch_size,
            "overrides": {i: [o.rate, o.scratch_size] for i, o in self.overrides.items()},
            "created_mountpoint": created_mountpoint,
            "slurm": None if self.slurm is None else asdict(self.slurm),
        }))
        head = self.address(0)
        lines = ["127.0.0.1 localhost", f"{head} {socket.gethostname()}"]
        lines += [f"{self.address(i)} {h}" for i, h in enumerate(self.hostnames)]
        (state / "hosts").write_text("\n".join(lines) + "\n")
        _write_script(self.enter_script, ENTER_SCRIPT.format(
            hosts=shlex.quote(str(state / "hosts")),
            scratch_root=shlex.quote(str(state / "scratch")),
            shm_root=shlex.quote(str(state / "shm")),
            scratch=shlex.quote(self.scratch),
            slurm_etc=shlex.quote(str(slurm_daemons.etc_dir(self))),
        ))
        _write_script(self.launcher, LAUNCHER_SCRIPT.format(enter=shlex.quote(str(self.enter_script))))

    def _add_host(self, i: int, host: str) -> None:
        port = f"h{i}"
        ip("netns", "add", host)
        ip("link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", port,
            "netns", self.switch)
        ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip("-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        ip("-n", host, "link", "set", "lo", "up")
        ip("-n", host, "link", "set", "eth0", "up")
        self.set_rate(i, self.rate_of(i), replace=False)
        spec = self.overrides.get(i)
        size = spec.scratch_size if spec is not None and spec.scratch_size else self.scratch_size
        directory = self.scratch_dir(i)
        directory.mkdir()
        options = "mode=1777" + (f",size={size}" if size else "")
        run_command(["mount", "-t", "tmpfs", "-o", options, f"{self.name}-scratch", str(directory)])
        shm = self.shm_dir(i)
        shm.mkdir()
        run_command(["mount", "-t", "tmpfs", "-o", "mode=1777", f"{self.name}-shm", str(shm)])

    # -- shaping and faults ---------------------------------------------------------------

    def set_rate(self, host: int | str, rate: str | int, *, replace: bool = True) -> None:
        """Shape ``host``'s link to ``rate`` in both directions (``tc tbf``)."""
        bits = parse_rate(rate)
        i = self.index(host)
        burst = bucket_bytes(bits)
        verb = "replace" if replace else "add"
        for netns, dev in ((self.host(i), "eth0"), (self.switch, f"h{i}")):
            run_command(["tc", "-n", netns, "qdisc", verb, "dev", dev, "root", "tbf",
                  "rate", f"{bits}bit", "burst", str(burst), "latency", "100ms"])

    def resize_scratch(self, host: int | str, size: str) -> None:
        """Give ``host``'s scratch a new size limit (free space on a full disk)."""
        run_command(["mount", "-o", f"remount,size={size}", str(self.scratch_dir(host))])

    def pids(self, host: int | str) -> list[int]:
        """Processes running on ``host`` (in its network namespace)."""
        listing = run_command(["ip", "netns", "pids", self.host(host)], check=False).stdout
        return [int(p) for p in listing.split()]

    def mpistage_pid(self, host: int | str) -> int | None:
        """The mpistage rank on ``host`` (``python -m mpistage``, not the launcher's
        daemon, whose command line names the cluster's directory too), if one runs."""
        for pid in self.pids(host):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0")
            except FileNotFoundError:
                continue
            if argv[1:3] == ["-m", "mpistage"]:
                return pid
        return None

    def set_link(self, host: int | str, up: bool) -> None:
        """Take ``host``'s link down (no carrier, packets dropped) or bring it back."""
        ip("-n", self.switch, "link", "set", f"h{self.index(host)}", "up" if up else "down")

    # -- running commands -----------------------------------------------------------------

    def command(self, host: int | str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run on ``host``."""
        return [str(self.enter_script), self.host(host), *argv]

    def run(self, host: int | str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def,type-arg]
        """Run ``argv`` on ``host`` (``subprocess.run`` keyword arguments apply)."""
        return subprocess.run(self.command(host, argv), **kwargs)

    def mpiexec_command(
        self, argv: Sequence[str], *, ppn: int = 1, hosts: Sequence[int | str] | None = None,
        mpiexec: str | None = None, keep_going: bool = False,
    ) -> list[str]:
        """The command line that runs ``argv`` under MPI on the cluster, launched from the
        head host (host 0) so the launcher's daemons (hydra's proxies, Open MPI's prted)
        connect back over the emulated network; :attr:`launcher` stands in for ssh."""
        names = [self.host(h) for h in (hosts if hosts is not None else range(self.hosts))]
        mpiexec = mpiexec or find_mpiexec()
        if mpi_library.family() == "openmpi":
            # PRRTE's ssh agent, the hosts with their slots, and every byte (the runtime's
            # own wire-up included) over eth0, the emulated link.
            launch = [mpiexec, "--prtemca", "plm_ssh_agent", str(self.launcher),
                      "--prtemca", "oob_tcp_if_include", "eth0",
                      "--mca", "btl", "self,sm,tcp", "--mca", "btl_tcp_if_include", "eth0",
                      "--host", ",".join(f"{name}:{ppn}" for name in names)]
        else:
            launch = [mpiexec, "-launcher", "ssh", "-launcher-exec", str(self.launcher),
                      "-hosts", ",".join(names)]
        if keep_going:  # the others go on when one rank dies (mpistage.engine.recovery)
            launch += mpi_library.keep_going_options()
        return self.command(0, [*launch, *mpi_library.ranks_per_node_options(ppn),
                                "-n", str(ppn * len(names)), *argv])

    def mpiexec(
        self, argv: Sequence[str], *, ppn: int = 1, hosts: Sequence[int | str] | None = None,
        env: Mapping[str, str] | None = None, **kwargs,  # type: ignore[no-untyped-def]
    ) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        """Run ``argv`` on every host (or ``hosts``) with ``ppn`` ranks per host."""
        return subprocess.run(
            self.mpiexec_command(argv, ppn=ppn, hosts=hosts),
            env=mpi_environment(env), **kwargs,
        )

    def probe(self, sender: int | str = 0, receiver: int | str = 1, seconds: float = 2.0) -> float:
        """Measured TCP throughput (bit/s) from ``sender`` to ``receiver``."""
        from .probe import measure

        return measure(self, sender, receiver, seconds)


# -- scripts written into the state directory ---------------------------------------------

ENTER_SCRIPT = """#!/bin/sh
# Run a command on an emulated host: its network namespace, its host name, its hosts
# file and its private scratch. Written by mpistage.cluster.   Usage: enter HOST CMD...
host=$1; shift
exec nsenter --net="/run/netns/$host" unshare --mount --uts --propagation private \\
    sh -c 'hostname "$1" && mount --bind {hosts} /etc/hosts &&
           mount --bind {scratch_root}/"$1" {scratch} && mount --bind {shm_root}/"$1" /dev/shm &&
           {{ [ ! -d {slurm_etc} ] || mount --bind {slurm_etc} /etc/slurm; }} &&
           shift && exec "$@"' sh "$host" "$@"
"""

LAUNCHER_SCRIPT = """#!/bin/sh
# ssh stand-in for MPICH's hydra: LAUNCHER [ssh options] HOST COMMAND...
# Like ssh, runs COMMAND (its words joined) through a shell on HOST.
while [ $# -gt 0 ]; do
    case "$1" in
        -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1; shift
exec {enter} "$host" sh -c "$*"
"""


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


# -- MPI on the cluster -------------------------------------------------------------------

def find_mpiexec() -> str:
    """``mpiexec`` of this Python's MPI (see :func:`mpistage.mpi_library.find_mpiexec`)."""
    found = mpi_library.find_mpiexec()
    if found is None:
        raise ClusterError("no mpiexec: pip install 'mpistage[mpich]' provides one")
    return found


def bucket_bytes(bits: int) -> int:
    """The token bucket of a link shaped to ``bits`` per second: what it lets through
    at full speed after a pause (a 1 MiB copy at 1 Gbit/s takes 5-7 ms, not 8.4).  tbf
    needs at least one timer tick's worth of bytes (HZ 250) and one full-size (GSO)
    packet; 64 KiB is enough up to ~130 Mbit/s."""
    return max(64 << 10, bits // 8 // 250)


def mpi_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus :data:`MPI_ENV` (explicit settings win)."""
    env = {**os.environ}
    for key, value in {**MPI_ENV, **mpi_library.launch_environment(as_root=True)}.items():
        env.setdefault(key, value)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env
