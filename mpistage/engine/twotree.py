"""Two-tree broadcast: two complementary binary trees, each carrying half of the chunks.

A pipelined binary tree reaches the last of N nodes in O(log N) hops, where a chain
takes N − 1, but each of its interior nodes sends every chunk twice: half a chain's
bandwidth.  Sanders, Speck and Träff ("Two-tree algorithms for full bandwidth
broadcast, reduction and scan", Parallel Computing 35, 2009) keep the depth and win the
bandwidth back with two binary trees over the same nodes in which no node is interior
in both: even chunks go down tree 0, odd chunks down tree 1, the root sending them
alternately to the two trees' tops.  An interior node of one tree sends each of that
tree's chunks (half of them) to two children and is a leaf of the other; so every node
sends as many bytes as it receives, ``S`` in all, and the time approaches
``S/B + (2·log2 N + 1)`` hops, the bound plus a fill that grows with log N, not N.

Our pair, on the N − 1 non-root nodes (relative ranks 1 … n, n = N − 1): tree 0 lays
them out as a binary heap in order (position p has children 2p + 1 and 2p + 2; rank
v at position v − 1), tree 1 in reverse order (rank v at position n − v).  A heap's
interior positions are those below ⌊n/2⌋, so a node interior in tree 0 has a rank
below n/2 + 1 and one interior in tree 1 a rank above it: never both (tested for every
N up to thousands in ``tests/test_twotree.py``).  The paper's in-order trees with a
mirrored or shifted twin give the same property; the heap keeps the shape functions
one line each.

A node receives from two parents, so the engine asks the schedule for chunk ``k``'s
parent and children (:meth:`TwoTreeSchedule.post_receive` and ``post_forward`` take
``k``); each child still gets its chunks in order because a parent sends them in order
and the child posts its receives in order, one per parent and chunk.  The engine
forwards each chunk the moment it arrives (``forwards_as_received``), not in chunk
order: in order, a node would hold tree 0's chunk k until tree 1's chunk k − 1 came,
which waits on tree 0 elsewhere, and the two trees would step together at the pace of
their depths (2·log2 N hops per chunk, :mod:`mpistage.model.simulate` shows it).  Chunks that
arrive ahead wait in buffers to be written in order, so the schedule asks for more of
them (:meth:`TwoTreeSchedule.buffers_needed`; ``--memory`` must hold them).
"""

from __future__ import annotations

from functools import cache

from mpi4py import MPI

from .buffers import Buffer
from .forward import Forward
from .schedules import ChainSchedule, Schedule, TreeSchedule, _check

#: The two trees.
TREES = (0, 1)


def _position(vrank: int, nodes: int, tree: int) -> int:
    """Where non-root ``vrank`` sits in ``tree``'s heap of the ``nodes - 1`` others."""
    return vrank - 1 if tree == 0 else nodes - 1 - vrank


def _vrank(position: int, nodes: int, tree: int) -> int:
    return position + 1 if tree == 0 else nodes - 1 - position


def twotree_parent(vrank: int, size: int, tree: int) -> int | None:
    """``vrank``'s parent in ``tree`` (0 or 1) of ``size`` nodes, root 0."""
    _check(vrank, size)
    if vrank == 0:
        return None
    position = _position(vrank, size, tree)
    return 0 if position == 0 else _vrank((position - 1) // 2, size, tree)


def twotree_children(vrank: int, size: int, tree: int) -> list[int]:
    """``vrank``'s children in ``tree``; the root's is the tree's top."""
    _check(vrank, size)
    if vrank == 0:
        return [_vrank(0, size, tree)] if size > 1 else []
    position = _position(vrank, size, tree)
    return [_vrank(c, size, tree) for c in (2 * position + 1, 2 * position + 2) if c < size - 1]


def tree_of(k: int) -> int:
    """The tree chunk ``k`` goes down."""
    return k % 2


@cache
def twotree_fill(size: int) -> tuple[int, int]:
    """Hops before the first chunk sent down each tree reaches that tree's last node (a
    node sends a chunk to its children in turn, so its second child has it two hops
    after it), the root's hop to the top included."""
    fills = []
    for tree in TREES:
        arrival = [0] * size
        # Heap positions in order: a parent comes before its children.
        for position in range(size - 1):
            vrank = _vrank(position, size, tree)
            parent = twotree_parent(vrank, size, tree)
            assert parent is not None
            arrival[vrank] = (arrival[parent]
                              + twotree_children(parent, size, tree).index(vrank) + 1)
        fills.append(max(arrival))
    return fills[0], fills[1]


class TwoTreeSchedule(Schedule):
    """Two complementary pipelined binary trees, even chunks down one, odd down the
    other (see the module's doc): a chain's bandwidth with a tree's depth."""

    name = "twotree"
    help = "two complementary binary trees, half the chunks each: a chain's bandwidth, a tree's depth"
    forwards_as_received = True
    trees = len(TREES)
    #: Each node takes two flows at once on its downlink, which queue, and neither the
    #: model nor the simulator charges that: twotree measured 10-17 % over the model at
    #: 4-16 hosts on 100 Mbit/s, within 5 % on 1 Gbit/s (``docs/model.md``), and at 16
    #: hosts, 16 MiB, predicted 3 % ahead of the chain, it took 1.91 s against the
    #: chain's 1.54.  So ``auto`` takes it only where it wins by more than its error on
    #: the fast links: where the chain's fill of N − 1 hops weighs (1024 nodes, 1 GiB at
    #: 10 Gbit/s: 14 %; 4096 nodes, 10 GiB: 9 %; 1024 nodes, 10 GiB: 3 %, the chain).
    auto_margin = 0.05

    def __init__(self, comm: MPI.Comm, root: int, arity: int = 2) -> None:
        super().__init__(comm, root)
        size = comm.size
        vrank = (comm.rank - root) % size
        parents = [twotree_parent(vrank, size, tree) for tree in TREES]
        self.parents = [None if p is None else (p + root) % size for p in parents]
        self.tree_children = [[(c + root) % size for c in twotree_children(vrank, size, tree)]
                              for tree in TREES]
        #: Every child of either tree (named when a send stalls).
        self.children = list(dict.fromkeys(self.tree_children[0] + self.tree_children[1]))

    def parent_for(self, k: int) -> int | None:
        return self.parents[tree_of(k)]

    @classmethod
    def reformed_shape(cls) -> type[TreeSchedule]:
        """After a lost node the survivors go on as a chain (:mod:`mpistage.engine.recovery`):
        two trees re-formed would each have to be told which chunks every node lacks of
        the other's, and the rest of the file is what is left to send, at a chain's
        bandwidth."""
        return ChainSchedule

    @classmethod
    def buffers_needed(cls, nodes: int) -> int:
        """A node may sit two hops deeper in one tree than in the other for every level
        of the heaps, so one tree's chunks arrive up to the fill ahead of the other's;
        they wait in buffers to be written in order, and the receives for the other
        tree's chunks must still be posted: the fill plus a few buffers."""
        return max(twotree_fill(nodes)) + 3

    def post_receive(self, buf: Buffer, k: int) -> MPI.Request:
        parent = self.parents[tree_of(k)]
        assert parent is not None, "the root receives nothing"
        return self.comm.Irecv(buf, source=parent, tag=self.tag)

    def post_forward(self, buf: Buffer, k: int) -> Forward:
        children = self.tree_children[tree_of(k)]
        return Forward([lambda child=child: self.comm.Isend(buf, dest=child, tag=self.tag)
                        for child in children], peers=children, together=True)

    @classmethod
    def children_in(cls, vrank: int, size: int, arity: int, tree: int) -> list[int]:
        return twotree_children(vrank, size, tree)

    @classmethod
    def shape(cls, nodes: int, arity: int = 2) -> tuple[int, int]:
        """``(fan_out, fill)`` for the cost model: every node sends one chunk per chunk
        it receives (two of every other one), so the pipeline steps at one hop per
        chunk; the last chunk goes down its tree behind the one before, so the fill is
        the deeper tree's."""
        if nodes <= 1:
            return 0, 0
        return 1, max(twotree_fill(nodes))
