"""Passing one chunk on: the sends to a node's children, posted in turn, one in flight per
child (:class:`Forward`); which children the next chunk may not go to yet
(:class:`HeldBack`); and whom a stalled sender names to the root (:func:`suspects`).

Apart from :mod:`mpistage.engine.schedules`, which says *to whom* a chunk goes; this
module says *how* the sends are posted, the part a lost child makes delicate.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from mpi4py import MPI


class Forward:
    """The sends that pass one chunk on, posted one after another.

    A tree schedule sends a chunk to its children in turn, largest subtree first (the
    order ``children_of`` gives): that child, with the longest way to go, has the chunk
    a whole fan-out of hops sooner than if every child shared the link at once, and the
    trees finish together.  The link is as busy either way, so throughput is the same.

    Each child must get the chunks in order (receives are matched in the order they
    were posted), so a chunk's send to a child is posted only after every chunk before
    posted its own, and each child has **one send in flight**
    (:data:`mpistage.engine.outbox.SENDS_IN_FLIGHT`; the engine passes the children a chunk
    may not be sent to yet as :meth:`advance`'s ``blocked``; per child, not per position,
    because a schedule's children may differ from chunk to chunk, as in
    :mod:`mpistage.engine.twotree`).  One leaves the link idle until this rank wakes and posts
    the next send (its waits are bounded for that: :func:`mpistage.engine.waits.longest_pause`;
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
