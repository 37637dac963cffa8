"""A chunk's sends to its children (engine/forward.py): posted one child after another,
never two in flight to one child, retried within a grace, and a failure that names its
child alone."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from mpistage.engine.forward import Forward, held_back, suspects
from mpistage.engine.outbox import SENDS_IN_FLIGHT


def _forward(peers: list[int], fail_on: int | None = None) -> Forward:
    def post(peer: int):  # type: ignore[no-untyped-def]
        if peer == fail_on:
            raise MPI.Exception(MPI.ERR_OTHER)
        return MPI.REQUEST_NULL
    return Forward([lambda p=p: post(p) for p in peers], peers=peers)


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Forward, "POST_GRACE", 0.0)


def test_a_send_mpi_refuses_to_post_is_tried_again() -> None:
    """MPICH gives up posting after a number of retries that a busy peer can exhaust:
    within :attr:`Forward.POST_GRACE` the next advance tries again."""
    attempts = []

    def post() -> MPI.Request:
        attempts.append(1)
        if len(attempts) == 1:
            raise MPI.Exception(MPI.ERR_OTHER)
        return MPI.REQUEST_NULL

    forward = Forward([post], peers=[3])
    assert not forward.advance() and forward.waiting_on is None
    assert forward.advance() and len(attempts) == 2


def test_a_failed_send_names_its_child_alone(no_grace: None) -> None:
    """Chunk 4's send to child 3 fails while chunk 3's send to child 4 is in flight:
    only child 3 is named (naming 4 too counted a live node lost, CI seed 793684998)."""
    data = bytearray(4)
    # its send to 3 is done; its send to 4 (a synchronous send to this very process) is out
    in_flight = Forward([lambda: MPI.REQUEST_NULL,
                         lambda: MPI.COMM_SELF.Issend(data, dest=0, tag=4)], peers=[3, 4])
    in_flight.advance()
    assert in_flight.waiting_on == 4
    failing = _forward([3, 4], fail_on=3)
    with pytest.raises(MPI.Exception):
        failing.advance()
    assert failing.waiting_on == 3
    assert suspects([in_flight, failing], [3, 4], failed=failing) == [3]
    # a timeout names every child with a send in flight; none in flight: every child
    assert suspects([in_flight, failing], [3, 4]) == [3, 4]
    assert suspects([], [3, 4]) == [3, 4]
    MPI.COMM_SELF.Recv(bytearray(4), source=0, tag=4)
    assert in_flight.advance() and in_flight.waiting_on is None


def test_sends_together_share_the_link_and_keep_each_child_in_order() -> None:
    """``together``: a chunk's sends to both children are out at once; the next chunk's
    send to a child still waits for that child's send of this one."""
    data = bytearray(4)
    first = Forward([lambda p=p: MPI.COMM_SELF.Issend(data, dest=0, tag=p) for p in (1, 2)],
                    peers=[1, 2], together=True)
    assert not first.advance() and first.in_flight == [1, 2] and first.posted == 2
    second = Forward([lambda p=p: MPI.COMM_SELF.Issend(data, dest=0, tag=10 + p)
                      for p in (1, 2)], peers=[1, 2], together=True)
    assert not second.advance(held_back([first], 1)) and second.posted == 0
    MPI.COMM_SELF.Recv(bytearray(4), source=0, tag=1)  # child 1 took the first chunk
    assert not first.advance() and first.in_flight == [2] and first.waiting_on == 2
    assert not second.advance(held_back([first], 1)) and second.posted == 1, "to 1, not to 2"
    for tag in (2, 11, 12):
        MPI.COMM_SELF.Recv(bytearray(4), source=0, tag=tag)
        first.advance()
        second.advance(held_back([first], 1))
    assert first.done and second.done


def test_a_failed_send_to_the_second_child_names_it(no_grace: None) -> None:
    failing = _forward([3, 4], fail_on=4)
    with pytest.raises(MPI.Exception):
        failing.advance()
    assert failing.posted == 1 and failing.waiting_on == 4
    assert suspects([failing], [3, 4], failed=failing) == [4]


def test_a_child_has_one_send_in_flight() -> None:
    """The next chunk's send to a child waits while one is in flight to it: a send
    posted to a process that died behind one in flight blocks inside MPI (until MPICH's
    retry limit, and again at every retry)."""
    comm = MPI.COMM_SELF
    data = [np.full(4, k, np.uint8) for k in range(2)]
    older = Forward([lambda: comm.Issend(data[0], dest=0, tag=1)], peers=[0])
    newer = Forward([lambda: comm.Issend(data[1], dest=0, tag=1)], peers=[0])
    older.advance()
    assert older.posted == 1 and older.in_flight == [0] and not older.unposted
    assert held_back([older], 2) == set(), "a window of two would let a second one go"
    assert held_back([older], SENDS_IN_FLIGHT) == {0}
    newer.advance(held_back([older], SENDS_IN_FLIGHT))
    assert newer.posted == 0, "waits for the older send to complete"
    got = np.zeros(4, np.uint8)
    comm.Recv(got, source=0, tag=1)
    assert older.advance() and older.in_flight == [] and list(got) == [0] * 4
    newer.advance()
    assert newer.posted == 1
    comm.Recv(got, source=0, tag=1)
    assert newer.advance() and list(got) == [1] * 4
