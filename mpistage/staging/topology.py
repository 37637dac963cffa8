"""Who is a node leader, in which order the nodes stand, and which leader is the root.

Ranks are grouped by node with ``MPI_COMM_TYPE_SHARED`` (ranks that can share memory
share a node-local disk too).  One leader per node receives and writes; on the root's
node the root itself leads, so the source is never sent over the network to its own
node.  Nodes are ordered by host name (naturally: ``cn2`` before ``cn10``), then lowest
world rank, so that the order (and so the chain) is the same on every run with the same allocation.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from mpi4py import MPI


def host_sort_key(host: str) -> tuple[object, ...]:
    """Natural order of host names: ``cn2`` before ``cn10`` (usually rack order too)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", host))


@dataclass(frozen=True)
class NodeInfo:
    """One node as every rank sees it."""

    index: int
    host: str
    leader: int  # world rank of the node's leader
    ranks: tuple[int, ...]  # world ranks on this node


@dataclass
class Topology:
    """The node structure of a communicator, built collectively by :meth:`build`.

    Attributes:
        comm: the communicator every rank takes part in.
        leaders: the leaders' communicator, ranked in node order; ``None`` on non-leaders.
        nodes: every node, in node order.
        node: this rank's node.
        root: world rank that reads the source.
    """

    comm: MPI.Comm
    leaders: MPI.Comm | None
    nodes: tuple[NodeInfo, ...]
    node: NodeInfo
    root: int

    @property
    def is_leader(self) -> bool:
        return self.comm.rank == self.node.leader

    @property
    def root_node(self) -> int:
        """Index of the root's node, which is also the root's rank in ``leaders``."""
        for info in self.nodes:
            if self.root in info.ranks:
                return info.index
        raise AssertionError("the root belongs to no node")

    @classmethod
    def build(cls, comm: MPI.Comm, root: int = 0, ranks_as_nodes: bool = False) -> Topology:
        """Group the ranks of ``comm`` into nodes (collective over ``comm``).

        Args:
            comm: communicator of every rank taking part.
            root: rank of ``comm`` that reads the source; it leads its node.
            ranks_as_nodes: count every rank as its own node, so one machine can stand in
                for many (tests, demos).
        """
        if ranks_as_nodes:
            local = comm.Split(comm.rank, 0)
        else:
            local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
        try:
            members = tuple(sorted(local.allgather(comm.rank)))
        finally:
            local.Free()
        leader = root if root in members else members[0]
        host = os.uname().nodename  # gethostname(), without importing socket
        mine_announced = (host, members[0], leader, members) if comm.rank == leader else None
        announced = [a for a in comm.allgather(mine_announced) if a is not None]
        announced.sort(key=lambda a: (host_sort_key(a[0]), a[1]))
        nodes = tuple(
            NodeInfo(index=i, host=h, leader=ldr, ranks=rks)
            for i, (h, _, ldr, rks) in enumerate(announced)
        )
        mine = next(n for n in nodes if comm.rank in n.ranks)
        is_leader = comm.rank == mine.leader
        leaders = comm.Split(0 if is_leader else MPI.UNDEFINED, key=mine.index)
        return cls(
            comm=comm,
            leaders=leaders if is_leader else None,
            nodes=nodes,
            node=mine,
            root=root,
        )

    def free(self) -> None:
        """Release the leaders' communicator (idempotent)."""
        if self.leaders is not None and self.leaders != MPI.COMM_NULL:
            self.leaders.Free()
        self.leaders = None
