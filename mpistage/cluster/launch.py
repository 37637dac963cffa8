"""MPI on the emulated cluster: this Python's ``mpiexec``, launched from the head host
with the cluster's ``launcher`` standing in for ssh, and the environment that makes
its traffic cross the shaped links."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import mpi_library
from .hosts import ClusterError
from .layout import Layout

#: Environment that makes the PyPI MPICH wheel talk TCP between hosts (so traffic crosses
#: the shaped links); :func:`mpistage.mpi_library.launch_environment` adds the settings for
#: oversubscribed ranks (more ranks than cores) and, for Open MPI, running as root.
MPI_ENV = {
    "MPIR_CVAR_CH4_NETMOD": "ofi",
    "FI_PROVIDER": "tcp",
}


def mpiexec_command(
    cluster: Layout, argv: Sequence[str], *, ppn: int = 1, hosts: Sequence[int | str] | None = None,
    mpiexec: str | None = None, keep_going: bool = False,
) -> list[str]:
    """The command line that runs ``argv`` under MPI on the cluster, launched from the
    head host (host 0) so the launcher's daemons (hydra's proxies, Open MPI's prted)
    connect back over the emulated network; its ``launcher`` stands in for ssh."""
    names = [cluster.host(h) for h in (hosts if hosts is not None else range(cluster.hosts))]
    mpiexec = mpiexec or find_mpiexec()
    if mpi_library.family() == "openmpi":
        # PRRTE's ssh agent, the hosts with their slots, and every byte (the runtime's
        # own wire-up included) over eth0, the emulated link.
        launch = [mpiexec, "--prtemca", "plm_ssh_agent", str(cluster.launcher),
                  "--prtemca", "oob_tcp_if_include", "eth0",
                  "--mca", "btl", "self,sm,tcp", "--mca", "btl_tcp_if_include", "eth0",
                  "--host", ",".join(f"{name}:{ppn}" for name in names)]
    else:
        launch = [mpiexec, "-launcher", "ssh", "-launcher-exec", str(cluster.launcher),
                  "-hosts", ",".join(names)]
    if keep_going:  # the others go on when one rank dies (mpistage.engine.recovery)
        launch += mpi_library.keep_going_options()
    return cluster.command(0, [*launch, *mpi_library.ranks_per_node_options(ppn),
                            "-n", str(ppn * len(names)), *argv])


def find_mpiexec() -> str:
    """``mpiexec`` of this Python's MPI (see :func:`mpistage.mpi_library.find_mpiexec`)."""
    found = mpi_library.find_mpiexec()
    if found is None:
        raise ClusterError("no mpiexec: pip install 'mpistage[mpich]' provides one")
    return found


def mpi_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus :data:`MPI_ENV` (explicit settings win)."""
    env = {**os.environ}
    for key, value in {**MPI_ENV, **mpi_library.launch_environment(as_root=True)}.items():
        env.setdefault(key, value)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env
