"""An emulated cluster on one machine: hosts as network namespaces behind one switch.

Each host gets its own network namespace with one shaped link (``tc tbf``, both
directions) to a bridge in a switch namespace, an address in 198.18.0.0/15 (the RFC 2544
benchmarking range, so no traffic can leave the machine), its own host name and its own
private scratch directory at the same path on every host (a mount namespace per launched
command).  ``mpiexec`` from the PyPI MPICH wheel runs across the hosts through an
ssh-like launcher, with MPICH's TCP transport, so MPI traffic crosses the shaped links.

    with EmulatedCluster(hosts=8, rate="100mbit") as cluster:
        cluster.mpiexec(["mpistage", "input.dat", "/scratch"])

Needs root, ``ip``/``tc`` (iproute2) and ``nsenter``/``unshare`` (util-linux).
"""

from .cluster import EmulatedCluster
from .hosts import ClusterError
from .layout import HostSpec
from .rates import parse_rate
from .system import teardown

__all__ = ["ClusterError", "EmulatedCluster", "HostSpec", "parse_rate", "teardown"]
