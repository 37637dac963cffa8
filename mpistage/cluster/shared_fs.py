"""A shared file system on the emulated cluster: one storage host serves a directory
over SFTP, and every host mounts it with sshfs at the same path (made by
:mod:`mpistage.cluster.storage`; its settings here).

This kernel has no NFS server, and a parallel file system is out of reach; what matters
for staging is what a node sees of one: the same file at the same path on every node,
read over the network, one client at most at ``C`` bits/s, all of them together at most
at ``A`` (a Lustre client reads ~800 MB/s, 64 of them ~10 GB/s).  So:

* a storage host, network namespace ``NAME-st`` at 198.18.0.250, on the cluster's switch;
  its ``sftp-server`` (OpenSSH's, without ssh: no keys, no daemon) behind ``socat`` on
  TCP port :data:`PORT`, serving ``/run/mpistage-cluster/NAME/export``;
* its link shaped with HTB: one class of rate ``A`` holding one class of rate ``C`` per
  client host (filtered by the client's address), so one host reading gets ``C`` and
  ``N`` hosts at once ``min(N·C, A)`` (:func:`mpistage.cluster.storage.measure_reads`
  checks it);
* on every host, ``sshfs -o directport=PORT`` started in the host's network namespace
  (so its traffic crosses the host's own shaped link) but from the root mount namespace
  (a FUSE mount made inside ``ip netns exec`` or ``unshare`` vanishes with it), at
  ``shared/HOST`` in the state directory; the ``enter`` script binds it over the shared
  path (default ``/shared``) in the host's own mount namespace.  ``direct_io``: every read
  crosses the link, as a first read of a file on Lustre does (no page cache to flatter
  a second run); no attribute cache either (a file rewritten between two runs is seen
  so by every host at once, as a parallel file system's clients see it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .rates import format_link_rate, parse_rate

#: The SFTP server's TCP port on the storage host.
PORT = 7022
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
#: The storage host's address, after the hosts' (1 .. 64).
STORAGE_HOST = 250
TOOLS = {"sshfs": "sshfs", "socat": "socat", SFTP_SERVER: "openssh-sftp-server"}


@dataclass(frozen=True)
class SharedFS:
    """A shared file system's settings: each client's read rate at most ``client_rate``
    bits/s, all together ``total_rate``; every host sees it at ``path``."""

    client_rate: int
    total_rate: int
    path: str = "/shared"

    @classmethod
    def of(cls, client: str | int, total: str | int, path: str = "/shared") -> SharedFS:
        return cls(parse_rate(client), parse_rate(total), path)

    def describe(self) -> str:
        return (f"{self.path}: {format_link_rate(self.client_rate)} per client, "
                f"{format_link_rate(self.total_rate)} in all")
