"""Bring an emulated cluster up, run commands on it, and tear it down.

Everything the cluster creates carries its name as a prefix, so :func:`teardown` can
remove exactly that and nothing else:

* network namespaces ``NAME-sw`` (the switch, with bridge ``br0``) and ``NAME-h0`` …
  (the hosts, each with ``eth0`` at 198.18.0.<i+1>/24);
* the state directory ``/run/mpistage-cluster/NAME/`` with the ``hosts`` file, the
  ``enter`` and ``launcher`` scripts and two tmpfs per host, mounted at ``scratch/HOST``
  and ``shm/HOST`` (the host's own ``/dev/shm``, as a real node has);
* the scratch mount point (``/scratch``) if it did not exist before;
* with ``shared_fs``, a storage host ``NAME-st`` serving ``export/`` over SFTP and
  every host's sshfs mount of it under ``shared/`` (:mod:`mpistage.cluster.shared_fs`);
* with ``slurm``, a Slurm of its own (see :mod:`mpistage.cluster.slurm`): munged,
  slurmctld on host 0, one slurmd per host, configuration under ``slurm/``.

A command runs "on" a host through ``enter HOST CMD…`` (:mod:`mpistage.cluster.build`).
The cluster's names are :mod:`mpistage.cluster.layout`'s; MPI on it,
:mod:`mpistage.cluster.launch`.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import slurm as slurm_daemons
from . import storage
from .build import add_host, create_state, shape
from .hosts import ClusterError
from .launch import mpi_environment, mpiexec_command
from .layout import HostSpec, Layout
from .rates import format_link_rate
from .shared_fs import SharedFS
from .slurm import SlurmSettings
from .system import STATE_ROOT, check_prerequisites, ip, netns_names, run_command, teardown

log = logging.getLogger("mpistage.cluster")


@dataclass
class EmulatedCluster(Layout):
    """N hosts on this machine (:class:`~mpistage.cluster.layout.Layout`'s arguments);
    use as a context manager, or :meth:`up` / :meth:`down`."""

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
            shared_fs=SharedFS(**record["shared_fs"]) if record.get("shared_fs") else None,
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
            create_state(self)
            ip("netns", "add", self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for i, host in enumerate(self.hostnames):
                add_host(self, i, host)
            if self.shared_fs is not None:
                storage.start(self, self.shared_fs)
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

    # -- shaping and faults ---------------------------------------------------------------

    def set_rate(self, host: int | str, rate: str | int, *, replace: bool = True) -> None:
        """Shape ``host``'s link to ``rate`` in both directions (``tc tbf``)."""
        shape(self, host, rate, replace=replace)

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

    def mpiexec_command(
        self, argv: Sequence[str], *, ppn: int = 1, hosts: Sequence[int | str] | None = None,
        mpiexec: str | None = None, keep_going: bool = False,
    ) -> list[str]:
        """:func:`mpistage.cluster.launch.mpiexec_command` on this cluster."""
        return mpiexec_command(self, argv, ppn=ppn, hosts=hosts, mpiexec=mpiexec,
                               keep_going=keep_going)

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
