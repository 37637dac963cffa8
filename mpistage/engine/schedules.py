"""Each algorithm as a schedule: from whom do I receive a chunk, to whom do I forward it.

The shapes are pure functions of a *relative* rank (``0`` is the root), so they can be
tested without MPI.  The :class:`Schedule` classes bind a shape to a communicator and
post the non-blocking MPI calls; one pipeline engine (:mod:`mpistage.engine.pipeline`) runs all
of them chunk by chunk.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from functools import cache

from mpi4py import MPI

from . import bcast_model
from .buffers import Buffer
from .forward import Forward

#: Tag of every data message; MPI keeps messages between two ranks in order, so one tag
#: and posting receives in chunk order is enough to match chunk k with chunk k.
DATA_TAG = 7001


# -- shapes on relative ranks -------------------------------------------------------------

def chain_parent(vrank: int, size: int) -> int | None:
    """Predecessor of ``vrank`` in the chain 0 → 1 → … → size-1."""
    _check(vrank, size)
    return vrank - 1 if vrank > 0 else None


def chain_children(vrank: int, size: int) -> list[int]:
    _check(vrank, size)
    return [vrank + 1] if vrank + 1 < size else []


def binomial_parent(vrank: int, size: int) -> int | None:
    """Parent in a binomial tree: ``vrank`` with its lowest set bit cleared."""
    _check(vrank, size)
    return vrank & (vrank - 1) if vrank > 0 else None


def binomial_children(vrank: int, size: int) -> list[int]:
    """Children in a binomial tree, largest subtree first (it has the longest way to go)."""
    _check(vrank, size)
    limit = vrank & -vrank if vrank > 0 else 1 << max(size - 1, 0).bit_length()
    children = []
    step = limit >> 1
    while step:
        if vrank + step < size:
            children.append(vrank + step)
        step >>= 1
    return children


def kary_parent(vrank: int, size: int, arity: int = 2) -> int | None:
    """Parent in a complete ``arity``-ary tree laid out level by level."""
    _check(vrank, size)
    return (vrank - 1) // arity if vrank > 0 else None


def kary_children(vrank: int, size: int, arity: int = 2) -> list[int]:
    _check(vrank, size)
    first = vrank * arity + 1
    return list(range(first, min(first + arity, size)))


def kary_height(size: int, arity: int = 2) -> int:
    """Hops from the root to the deepest node of the ``arity``-ary tree of ``size`` nodes."""
    height, last, width = 0, 0, 1
    while last < size - 1:
        width *= arity
        last += width
        height += 1
    return height


def flat_parent(vrank: int, size: int) -> int | None:
    """Flat tree: the root sends to everyone itself."""
    _check(vrank, size)
    return 0 if vrank > 0 else None


def flat_children(vrank: int, size: int) -> list[int]:
    _check(vrank, size)
    return list(range(1, size)) if vrank == 0 else []


def fill_hops(parent: Callable[[int, int], int | None],
              children: Callable[[int, int], list[int]], nodes: int) -> int:
    """Hops until the first chunk reaches every node.  A node sends to its children one
    after another (:class:`Forward`), so its i-th child has the chunk i + 1 hops after
    it: in a binomial tree, largest subtree first, that is log2(N) hops in all."""
    arrival = [0] * nodes
    for vrank in range(1, nodes):  # parents have smaller relative ranks in these trees
        up = parent(vrank, nodes)
        assert up is not None
        arrival[vrank] = arrival[up] + children(up, nodes).index(vrank) + 1
    return max(arrival)


def _check(vrank: int, size: int) -> None:
    if not 0 <= vrank < size:
        raise ValueError(f"relative rank {vrank} outside 0..{size - 1}")


# -- schedules bound to a communicator ----------------------------------------------------


class Schedule(ABC):
    """How one leader takes part in broadcasting a chunk over ``comm`` from ``root``.

    Each subclass is one algorithm, registered in :data:`mpistage.engine.algorithms.SCHEDULES`
    under its ``name``; the CLI's choices and help, ``auto``'s candidates and the cost
    model all come from that registry, so a new schedule is one file and one line there.

    Attributes:
        name: the algorithm's name (``--algorithm NAME``).
        help: one line for ``--help``.
        point_to_point: its messages are the ones it posts itself, so the model's shape
            (:meth:`TreeSchedule.shape`) describes it; otherwise the model treats it as
            MPI's own collective.
    """

    name: str = ""
    help: str = ""
    point_to_point: bool = True
    #: Trees its chunks alternate among (chunk ``k`` goes down tree ``k % trees``).
    trees: int = 1
    #: Its busiest rank is the root, which sends the most and receives nothing (the
    #: model's CPU term: that rank handles ``f`` message ends per chunk, not ``f + 1``).
    root_busiest: bool = False
    #: A node's chunks come from several parents, each in order, and go to children
    #: that get them from this node only: the engine forwards each chunk the moment it
    #: arrives, ahead of earlier ones still on their way (:mod:`mpistage.engine.twotree`).
    forwards_as_received: bool = False
    #: Tag of its data messages (a re-formed run has its own: :mod:`mpistage.engine.recovery`).
    tag: int = DATA_TAG
    #: Every node reads its own share of the source (a file every node mounts) rather
    #: than the root all of it (:mod:`mpistage.engine.ring`).
    every_node_reads: bool = False
    #: A node handles its chunks in file order (else each is written at its offset).
    in_file_order: bool = True
    #: Chunks a node's source may read ahead of the engine (``None``: as many as there
    #: are free buffers; a node that also receives must keep buffers for that).
    read_ahead: int | None = None
    #: How much faster than the others ``auto`` needs it to be predicted (a part of their
    #: time), where it gives something up.
    auto_margin: float = 0.0

    def __init__(self, comm: MPI.Comm, root: int) -> None:
        self.comm = comm
        self.root = root
        self.is_root = comm.rank == root

    @abstractmethod
    def post_receive(self, buf: Buffer, k: int) -> MPI.Request:
        """Start receiving chunk ``k`` into ``buf`` (never called on the root; chunks
        in order)."""

    @abstractmethod
    def post_forward(self, buf: Buffer, k: int) -> Forward:
        """Start passing on chunk ``k``, now complete in ``buf``."""

    def parent_for(self, k: int) -> int | None:
        """The rank chunk ``k`` comes from (``None``: the root, or a collective's)."""
        return None

    def order(self, first: int, count: int | None) -> Iterator[int]:
        """The chunks this node handles, from ``first``, in the order it handles them
        (``count`` ``None``: a stream's, until its last frame): in file order."""
        return itertools.count(first) if count is None else iter(range(first, count))

    def reads(self, k: int) -> bool:
        """Whether this node reads chunk ``k`` from the source itself: the root reads
        every chunk."""
        return self.is_root

    @classmethod
    def readers(cls, nodes: int) -> int:
        """Nodes that read the source at once (the cost model's read term)."""
        return 1

    def senders(self) -> tuple[int, ...]:
        """The ranks this node receives chunks from (every schedule's chunks alternate
        between at most two parents)."""
        return tuple(dict.fromkeys(p for p in (self.parent_for(0), self.parent_for(1))
                                   if p is not None))

    def message_bytes(self, chunk: int) -> int:
        """The largest message MPI moves at once for a chunk of ``chunk`` bytes.  For a
        collective (not :attr:`point_to_point`) the next one is begun only when this rank
        wakes, so its waits must wake well within a message's time
        (:func:`mpistage.engine.waits.longest_pause`)."""
        return chunk

    def min_depth(self) -> int:
        """Buffers the engine needs at least on this communicator (:meth:`buffers_needed`)."""
        return self.buffers_needed(self.comm.size)

    @classmethod
    def buffers_needed(cls, nodes: int) -> int:
        """Chunk buffers a node needs at least, to ``nodes`` nodes (more than
        ``--depth``'s default where chunks arrive out of order and wait for earlier
        ones to be written); ``--memory`` must hold them."""
        return 2

    @classmethod
    def shape(cls, nodes: int, arity: int = 2) -> tuple[int, int]:
        """``(fan_out, fill)`` for the cost model (point-to-point schedules): the
        chunks the busiest sender sends per chunk, and the hops before the first
        chunk reaches the last node."""
        raise NotImplementedError(f"{cls.name} is not a point-to-point schedule")

    @classmethod
    def children_in(cls, vrank: int, size: int, arity: int, tree: int) -> list[int]:
        """``vrank``'s children in tree ``tree`` (of :attr:`trees`): the shape
        :mod:`mpistage.model.simulate` plays, relative ranks."""
        return cls.children_of(vrank, size, arity)  # type: ignore[attr-defined]

    @classmethod
    def reformed_shape(cls) -> type[TreeSchedule]:
        """The shape survivors of a lost node go on in (:mod:`mpistage.engine.recovery`)."""
        raise NotImplementedError(f"{cls.name} cannot be re-formed")

    def describe(self) -> str:
        return self.name


class TreeSchedule(Schedule):
    """A point-to-point schedule given by a parent and children per relative rank."""

    def __init__(self, comm: MPI.Comm, root: int, arity: int = 2) -> None:
        super().__init__(comm, root)
        self.arity = arity
        size = comm.size
        vrank = (comm.rank - root) % size
        parent = self.parent_of(vrank, size, arity)
        self.parent = None if parent is None else (parent + root) % size
        self.children = [(c + root) % size for c in self.children_of(vrank, size, arity)]

    @staticmethod
    @abstractmethod
    def parent_of(vrank: int, size: int, arity: int) -> int | None: ...

    @staticmethod
    @abstractmethod
    def children_of(vrank: int, size: int, arity: int) -> list[int]: ...

    @classmethod
    @cache
    def shape(cls, nodes: int, arity: int = 2) -> tuple[int, int]:
        """``(fan_out, fill)`` for the cost model: the busiest sender's children, and
        the hops before the first chunk reaches the last node."""
        if nodes <= 1:
            return 0, 0
        fan_out = max(len(cls.children_of(v, nodes, arity)) for v in range(nodes))
        fill = fill_hops(lambda v, n: cls.parent_of(v, n, arity),
                         lambda v, n: cls.children_of(v, n, arity), nodes)
        return fan_out, fill

    def parent_for(self, k: int) -> int | None:
        return self.parent

    @classmethod
    def reformed_shape(cls) -> type[TreeSchedule]:
        return cls

    def post_receive(self, buf: Buffer, k: int) -> MPI.Request:
        assert self.parent is not None, "the root receives nothing"
        return self.comm.Irecv(buf, source=self.parent, tag=self.tag)

    def post_forward(self, buf: Buffer, k: int) -> Forward:
        return Forward([lambda child=child: self.comm.Isend(buf, dest=child, tag=self.tag)
                        for child in self.children], peers=self.children)


class ChainSchedule(TreeSchedule):
    """Pipelined chain (Ka, dolly): every leader receives from one and sends to one."""

    name = "chain"
    help = "pipelined chain, best for large files (default)"

    @staticmethod
    def parent_of(vrank: int, size: int, arity: int) -> int | None:
        return chain_parent(vrank, size)

    @staticmethod
    def children_of(vrank: int, size: int, arity: int) -> list[int]:
        return chain_children(vrank, size)


class BinomialSchedule(TreeSchedule):
    """Pipelined binomial tree: log2(N) rounds, good for small files."""

    name = "binomial"
    help = "pipelined binomial tree, best for small files"

    @staticmethod
    def parent_of(vrank: int, size: int, arity: int) -> int | None:
        return binomial_parent(vrank, size)

    @staticmethod
    def children_of(vrank: int, size: int, arity: int) -> list[int]:
        return binomial_children(vrank, size)

    root_busiest = True


class KaryTreeSchedule(TreeSchedule):
    """Pipelined k-ary tree (Ka's n-ary tree); ``arity`` children per interior node."""

    name = "tree"
    help = "pipelined k-ary tree (--arity)"

    @staticmethod
    def parent_of(vrank: int, size: int, arity: int) -> int | None:
        return kary_parent(vrank, size, arity)

    @staticmethod
    def children_of(vrank: int, size: int, arity: int) -> list[int]:
        return kary_children(vrank, size, arity)


class FlatSchedule(TreeSchedule):
    """The root sends every chunk to every node itself: the naive baseline."""

    name = "flat"
    help = "the root sends to every node"

    @staticmethod
    def parent_of(vrank: int, size: int, arity: int) -> int | None:
        return flat_parent(vrank, size)

    @staticmethod
    def children_of(vrank: int, size: int, arity: int) -> list[int]:
        return flat_children(vrank, size)

    root_busiest = True


class BcastSchedule(Schedule):
    """MPI's own broadcast of each chunk (``MPI_Ibcast``): the baseline to beat.

    The non-blocking form lets the same engine keep several chunks in flight; which
    algorithm runs underneath is the MPI library's choice.
    """

    name = "bcast"
    help = ("MPI's own broadcast per chunk (baseline; it cannot go on without a lost node, "
            "so auto never picks it for one file)")
    point_to_point = False

    def __init__(self, comm: MPI.Comm, root: int, arity: int = 2) -> None:
        super().__init__(comm, root)

    def post_receive(self, buf: Buffer, k: int) -> MPI.Request:
        return self.comm.Ibcast(buf, root=self.root)

    def post_forward(self, buf: Buffer, k: int) -> Forward:
        return Forward([lambda: self.comm.Ibcast(buf, root=self.root)] if self.is_root else [],
                       one_in_flight=False)

    @classmethod
    def children_in(cls, vrank: int, size: int, arity: int, tree: int) -> list[int]:
        """A chunk too small to scatter goes down MPICH's binomial tree
        (:mod:`mpistage.engine.bcast_model`)."""
        return binomial_children(vrank, size)

    def message_bytes(self, chunk: int) -> int:
        """MPICH's scatter + allgather moves a chunk in pieces of chunk/N, each begun
        only when the ranks it joins call MPI (:mod:`mpistage.engine.bcast_model`)."""
        if bcast_model.algorithm(chunk, self.comm.size) == "binomial":
            return chunk
        return -(-chunk // self.comm.size)
