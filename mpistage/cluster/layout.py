"""What an emulated cluster is made of, by name: hosts and their addresses, links and
their rates, scratch and shm directories, the namespaces and the state directory.

Nothing here creates anything (:mod:`mpistage.cluster.build` does); every name carries
the cluster's as a prefix, so :func:`mpistage.cluster.system.teardown` removes exactly
what one cluster made.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .hosts import ClusterError
from .rates import parse_rate
from .shared_fs import SharedFS
from .slurm import SlurmSettings
from .system import NAME_RE, STATE_ROOT

SUBNET = "198.18.0"  # inside 198.18.0.0/15, the RFC 2544 benchmarking range
MAX_HOSTS = 64


@dataclass(frozen=True)
class HostSpec:
    """Per-host overrides: a slower link (a straggler) or a small scratch (disk full)."""

    rate: int | None = None
    scratch_size: str | None = None


@dataclass
class Layout:
    """An emulated cluster's shape and names (hosts, links, scratch, namespaces, state
    directory), checked on creation; :class:`mpistage.cluster.cluster.EmulatedCluster`
    brings it up.

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
        shared_fs: also a storage host whose directory every host mounts
            (:mod:`mpistage.cluster.shared_fs`); ``None``: none.
    """

    hosts: int = 8
    rate: str | int = "1gbit"
    name: str = "mpistage"
    scratch: str = "/scratch"
    scratch_size: str | None = None
    overrides: Mapping[int, HostSpec] = field(default_factory=dict)
    slurm: SlurmSettings | None = None
    shared_fs: SharedFS | None = None

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

    @property
    def storage(self) -> str:
        """The storage host's network namespace (with a shared file system)."""
        return f"{self.name}-st"

    @property
    def export_dir(self) -> Path:
        """What the shared file system serves, as seen from outside the cluster."""
        return self.state_dir / "export"

    def shared_mount(self, host: int | str) -> Path:
        """``host``'s mount of the shared file system, as seen from outside the cluster."""
        return self.state_dir / "shared" / self.host(host)

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

    # -- running commands -----------------------------------------------------------------

    def command(self, host: int | str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run on ``host``."""
        return [str(self.enter_script), self.host(host), *argv]

    def run(self, host: int | str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def,type-arg]
        """Run ``argv`` on ``host`` (``subprocess.run`` keyword arguments apply)."""
        return subprocess.run(self.command(host, argv), **kwargs)
