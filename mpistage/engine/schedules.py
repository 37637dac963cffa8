"""Each algorithm as a schedule: from whom do I receive a chunk, to whom do I forward it.

The shapes are pure functions of a *relative* rank (``0`` is the root), so they can be
tested without MPI.  The :class:`Schedule` classes bind a shape to a communicator and
post the non-blocking MPI calls; one pipeline engine (:mod:`mpistage.engine.pipeline`) runs all
of them chunk by chunk.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import cache

from mpi4py import MPI

from . import bcast_model
from .buffers import Buffer

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

class Forward:
    """The sends that pass one chunk on, posted one after another.

    A tree schedule sends a chunk to its children in turn, largest subtree first (the
    order ``children_of`` gives): that child, with the longest way to go, has the chunk
    a whole fan-out of hops sooner than if every child shared the link at once, and the
    trees finish together.  The link is as busy either way, so throughput is the same.

    Each child must get the chunks in order (receives are matched in the order they
    were posted), so a chunk's send to a child is posted only after every chunk before
    posted its own, and each child has **one send in flight**
    (:data:`mpistage.engine.pipeline.SENDS_IN_FLIGHT`; the engine passes the children a chunk
    may not be sent to yet as :meth:`advance`'s ``blocked``; per child, not per position,
    because a schedule's children may differ from chunk to chunk, as in
    :mod:`mpistage.engine.twotree`).  One leaves the link idle until this rank wakes and posts
    the next send (its waits are bounded for that: :func:`mpistage.engine.pipeline.longest_pause`;
    a chain to 8 hosts at 100 Mbit/s in 256 KiB chunks is 4-8 % over point-to-point);
    more is unsafe: with MPICH's TCP transport, a send posted to a process that
    died behind one still in flight blocks inside ``MPI_Isend`` until
    :func:`mpistage.mpi_library.limit_send_retries`'s limit (and for ever without it),
    where a node must notice the stall and go on without the child
    (:mod:`mpistage.engine.recovery`).  A collective (``one_in_flight=False``)
    may be posted as soon as the chunk before posted its own.
    """

    #: The peer of a post that names none (a collective: they are ordered among themselves).
    COLLECTIVE = None
    #: Seconds a send may keep failing to be posted before its peer counts as gone: MPICH
    #: gives up posting after :data:`mpistage.mpi_library.SEND_RETRIES` tries, which on
    #: a machine with more ranks than cores can pass while the peer is only busy.
    POST_GRACE = 2.0

    def __init__(self, posts: Sequence[Callable[[], MPI.Request]],
                 one_in_flight: bool = True, peers: Sequence[int] = (),
                 together: bool = False) -> None:
        """
        Args:
            peers: the rank each post sends to, in order (to keep each peer's chunks in
                order, and to name the one a stalled or failed send was for); none
                given: every post is :data:`COLLECTIVE`.
            together: post the sends to every child at once rather than one after
                another, so that they share this node's link: where a child's link is
                shared with another parent (twotree), a send to it runs at half speed,
                and one after another this node's link would idle meanwhile.
        """
        self._posts = deque(posts)
        self.posted = 0
        self.one_in_flight = one_in_flight
        self.together = together
        self.peers: list[int | None] = list(peers) or [self.COLLECTIVE] * len(self._posts)
        self.requests: list[MPI.Request] = []
        self._in_flight: list[int | None] = []  # the peers of ``requests``

    @property
    def waiting_on(self) -> int | None:
        """The peer of a send in flight (or of the one whose posting failed)."""
        if self._failed:
            return self.peers[self.posted]
        return self._in_flight[0] if self._in_flight else None

    _failed = 0
    _failing_since = 0.0

    @property
    def done(self) -> bool:
        """Every send was posted and is complete (as of the last :meth:`advance`)."""
        return not self.requests and not self._posts

    @property
    def unposted(self) -> set[int | None]:
        """The peers this chunk is yet to be sent to: a later chunk may not be, before."""
        return set(self.peers[self.posted:])

    @property
    def in_flight(self) -> list[int | None]:
        """The peers whose send of this chunk is posted and not complete (a
        collective's do not count: they need not complete in order)."""
        return self._in_flight if self.one_in_flight else []

    def advance(self, blocked: set[int | None] | frozenset[int | None] = frozenset()) -> bool:
        """Post the next send if the current one is complete (or at once, ``together``)
        and its peer is not in ``blocked`` (the peers an earlier chunk's send to is not
        complete, or ahead of it: :attr:`unposted`, :attr:`in_flight`); :attr:`done`."""
        while True:
            self._retire()
            if ((self.requests and not self.together) or not self._posts
                    or self.peers[self.posted] in blocked):
                break  # the send before, or that peer's send of the chunk before, is out
            try:
                request = self._posts[0]()
            except MPI.Exception:
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                if now - self._failing_since < self.POST_GRACE:
                    break  # try again at the next advance
                self._failed = 1  # its peer is gone (see above): :attr:`waiting_on`
                raise
            self._failing_since = 0.0
            self.requests.append(request)
            self._in_flight.append(self.peers[self.posted])
            self._posts.popleft()
            self.posted += 1
        return self.done

    def _retire(self) -> None:
        """Let go of the sends that completed."""
        if not self.requests:
            return
        if len(self.requests) == 1:
            if self.requests[0].Test():
                self.requests, self._in_flight = [], []
            return
        pending = [(r, p) for r, p in zip(self.requests, self._in_flight) if not r.Test()]
        self.requests = [r for r, _ in pending]
        self._in_flight = [p for _, p in pending]


class HeldBack:
    """The peers the next chunk's sends may not go to yet, gathered chunk by chunk,
    oldest first (:meth:`add` each chunk's :class:`Forward` once it had its turn): an
    earlier chunk is still to be sent to them (each peer gets the chunks in order), or
    ``window`` sends to them are in flight already.

    One pass over the chunks in flight, at every wake-up of the engine's waits: a set
    built afresh for each chunk from all those before it was a third of the transfer
    loop's Python samples on a relaying rank (py-spy; a chain at 64 KiB chunks, 8 hosts)."""

    __slots__ = ("window", "peers", "_in_flight")

    def __init__(self, window: int) -> None:
        self.window = window
        self.peers: set[int | None] = set()
        self._in_flight: dict[int | None, int] = {}

    def add(self, forward: Forward) -> None:
        if forward.done:
            return
        self.peers.update(forward.peers[forward.posted:])
        for peer in forward.in_flight:
            sends = self._in_flight.get(peer, 0) + 1
            self._in_flight[peer] = sends
            if sends >= self.window:
                self.peers.add(peer)


def held_back(earlier: Iterable[Forward], window: int) -> set[int | None]:
    """The peers the next chunk's sends may not go to yet, after the ``earlier`` chunks
    (:class:`HeldBack`)."""
    held = HeldBack(window)
    for forward in earlier:
        held.add(forward)
    return held.peers


def suspects(forwards: Iterable[Forward], children: Sequence[int],
             failed: Forward | None = None) -> list[int]:
    """The children a node that stalled while sending names to the root.

    The root counts lost only the silent, but it sends no call to a node a stall names
    (a send to a dead process blocks inside MPI) and names it in the lost node's line
    (:mod:`mpistage.engine.recovery`), so the list must not name a child that is merely
    slower: when one send *failed*
    (``failed``: its posting or its request returned an error), that send's child alone,
    though sends to others are in flight (with one send in flight per child, the next
    child's send of an earlier chunk usually is); when sends stood still for the timeout,
    every child with one in flight; with none in flight, every child.
    """
    if failed is not None and failed.waiting_on is not None:
        return [failed.waiting_on]
    in_flight = {f.waiting_on for f in forwards if f.waiting_on is not None}
    return sorted(in_flight) or list(children)


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
    #: A node's chunks come from several parents, each in order, and go to children
    #: that get them from this node only: the engine forwards each chunk the moment it
    #: arrives, ahead of earlier ones still on their way (:mod:`mpistage.engine.twotree`).
    forwards_as_received: bool = False
    #: Tag of its data messages (a re-formed run has its own: :mod:`mpistage.engine.recovery`).
    tag: int = DATA_TAG

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

    def senders(self) -> tuple[int, ...]:
        """The ranks this node receives chunks from (every schedule's chunks alternate
        between at most two parents)."""
        return tuple(dict.fromkeys(p for p in (self.parent_for(0), self.parent_for(1))
                                   if p is not None))

    def message_bytes(self, chunk: int) -> int:
        """The largest message MPI moves at once for a chunk of ``chunk`` bytes.  For a
        collective (not :attr:`point_to_point`) the next one is begun only when this rank
        wakes, so its waits must wake well within a message's time
        (:func:`mpistage.engine.pipeline.longest_pause`)."""
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

    def message_bytes(self, chunk: int) -> int:
        """MPICH's scatter + allgather moves a chunk in pieces of chunk/N, each begun
        only when the ranks it joins call MPI (:mod:`mpistage.engine.bcast_model`)."""
        if bcast_model.algorithm(chunk, self.comm.size) == "binomial":
            return chunk
        return -(-chunk // self.comm.size)
