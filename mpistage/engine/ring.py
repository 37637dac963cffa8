"""Every node reads its share of a shared source; the shares go round a ring.

Where the source sits on a file system every node mounts (Lustre, GPFS, NFS), one
client's read rate is often far below what the file system serves to many clients at
once; one reader then caps the whole staging at one client's rate.  Here chunk ``k`` is
read by the node ``k mod N`` places after the root (relative rank), and travels round
the ring of the nodes from its reader, each node passing it on to the next, until the
node before its reader has it: every node reads ``1/N`` of the file and receives the
rest from the node before it, and reading overlaps the sends.

The order is the pipelined ring allgather's: the chunks go in *rounds* of ``N``, chunk
``jN + i`` being round ``j``'s share of reader ``i``.  In each round a node first takes
its own chunk (read ahead, during the round before), then receives, from the node before
it, the chunks of the readers before it, nearest first, and passes each on, so that in
step ``s`` of a round node ``v`` sends the chunk of reader ``v − s``, which the node after
it receives in its step ``s + 1``.  A node handling its chunks in file order would
instead wait, at every chunk, for it to come all the way round from its reader: the
ring would step at the pace of its length.  Chunks so come out of file order, and each
is written at its offset (``sink.write_at``).

Each chunk carries its reader's digest (:class:`mpistage.engine.frames.Signed`), since no
node reads every byte: see :class:`mpistage.digest.ChunkDigests`.  A ring cannot go on
without a lost member (each survivor would lack different chunks): such a run ends
with the lost node named and no copy kept.
"""

from __future__ import annotations

from collections.abc import Iterator

from mpi4py import MPI

from .buffers import Buffer
from .forward import Forward
from .schedules import Schedule


def reader_of(k: int, nodes: int) -> int:
    """The relative rank that reads chunk ``k``."""
    return k % nodes


def ring_order(vrank: int, nodes: int, first: int, count: int) -> Iterator[int]:
    """The chunks ``first .. count-1`` in the order relative rank ``vrank`` handles
    them: round by round, its own chunk first, then those of the readers before it,
    nearest first."""
    for base in range(first - first % nodes, count, nodes):
        for step in range(nodes):
            k = base + (vrank - step) % nodes
            if first <= k < count:
                yield k


class RingSchedule(Schedule):
    """Each node reads a share of the source; the shares go round a ring (see the
    module's doc)."""

    name = "ring"
    help = ("every node reads its share of a source all of them mount, the shares go "
            "round a ring (--read-by all)")
    every_node_reads = True
    in_file_order = False
    #: The node's next own chunk is read while the round before goes round; one more
    #: absorbs a slow read.
    read_ahead = 2
    #: A ring cannot go on without a lost node (each survivor lacks other chunks): auto
    #: takes it only where it wins clearly, where one reader binds (8 hosts at 100
    #: Mbit/s, 64 MiB read at 25 Mbit/s per client: 3.05-3.12x faster than the root's
    #: chain); where a client reads about as fast as its link, a few per cent are not
    #: worth that.
    auto_margin = 0.15

    def __init__(self, comm: MPI.Comm, root: int, arity: int = 2) -> None:
        super().__init__(comm, root)
        self.nodes = comm.size
        self.vrank = (comm.rank - root) % self.nodes
        self.left = (comm.rank - 1) % self.nodes
        self.right = (comm.rank + 1) % self.nodes
        self.children = [self.right] if self.nodes > 1 else []

    def order(self, first: int, count: int | None) -> Iterator[int]:
        if count is None:
            raise ValueError("a ring needs the number of chunks: a file, not a stream")
        return ring_order(self.vrank, self.nodes, first, count)

    def reads(self, k: int) -> bool:
        return reader_of(k, self.nodes) == self.vrank

    def parent_for(self, k: int) -> int | None:
        return None if self.reads(k) else self.left

    def post_receive(self, buf: Buffer, k: int) -> MPI.Request:
        return self.comm.Irecv(buf, source=self.left, tag=self.tag)

    def post_forward(self, buf: Buffer, k: int) -> Forward:
        """To the next node, unless it is the chunk's reader (it went all the way)."""
        if self.nodes == 1 or reader_of(k, self.nodes) == (self.vrank + 1) % self.nodes:
            return Forward([], peers=[])
        return Forward([lambda: self.comm.Isend(buf, dest=self.right, tag=self.tag)],
                       peers=[self.right])

    @classmethod
    def buffers_needed(cls, nodes: int) -> int:
        """The chunks read ahead, one being received, one being sent, one being
        written, and one more so that none of them waits on another."""
        return (cls.read_ahead or 0) + 4

    @classmethod
    def shape(cls, nodes: int, arity: int = 2) -> tuple[int, int]:
        """Every node sends one chunk per chunk it receives; the first chunk reaches the
        node before its reader after ``N − 1`` hops.  A node's link carries the ``(N −
        1)/N`` of the chunks others read, and its own share comes from the file system
        over the same link: the whole file, as in a chain (8 emulated hosts at 100
        Mbit/s, 64 MiB read at 25 Mbit/s per client: 6.4-6.9 s of transfer, one
        point-to-point copy 5.6 s; with a file system as fast as the links the ring and
        the root's chain took 7.06 and 7.23 s)."""
        if nodes <= 1:
            return 0, 0
        return 1, nodes - 1

    @classmethod
    def readers(cls, nodes: int) -> int:
        return nodes

    @classmethod
    def children_in(cls, vrank: int, size: int, arity: int, tree: int) -> list[int]:
        """For the simulator: the ring as the chain it is for the root's chunks."""
        return [vrank + 1] if vrank + 1 < size else []
