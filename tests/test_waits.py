"""The engine's waits (engine/waits.py): pauses bounded by the links, and a stalled wait
that names the peer it was on."""

from __future__ import annotations

import pytest
from mpi4py import MPI

from mpistage.engine.buffers import PhaseClock
from mpistage.engine.schedules import ChainSchedule
from mpistage.engine.waits import SLEEP_BYTES, Waits, longest_pause, stalled_on
from mpistage.errors import Stalled
from mpistage.plan import Plan


def plan_of(size: int, chunk: int) -> Plan:
    return Plan(source="/x/src", size=size, mode=0o644, mtime_ns=0, chunk_size=chunk,
                algorithm="chain", dest="/d")


def test_a_wait_sleeps_no_longer_than_the_link_takes_for_64_kib_or_a_collectives_eighth() -> None:
    """MPI over TCP moves data only inside MPI calls: pauses are bounded by bytes on the
    link (waits.longest_pause), by the plan's link rate and by the pace of chunks."""
    rate = 100e6 / 8  # 100 Mbit/s
    chunk = 1 << 20
    # Known rate, unknown pace (the first chunk): 64 KiB's time, 5.2 ms.
    assert longest_pause(chunk, chunk, 0.0, rate) == pytest.approx(SLEEP_BYTES / rate)
    # Pace only (the link's rate unknown, taken as 1 Gbit/s): the shorter.
    assert longest_pause(chunk, chunk, 0.084, 0.0) == pytest.approx(SLEEP_BYTES / 125e6)
    assert longest_pause(chunk, chunk, 0.004, 0.0) == pytest.approx(0.004 / 16)
    # Both: the shorter.
    assert longest_pause(chunk, chunk, 0.042, rate) == pytest.approx(0.042 / 16)
    # A collective's step of chunk/8 (MPICH's scatter + ring on 8 ranks): an eighth of it.
    assert longest_pause(chunk, chunk // 8, 0.0, rate, collective=True) == pytest.approx(
        chunk / 64 / rate)
    # Small chunks: a collective's, an eighth of a chunk's time; point to point, the pace.
    assert longest_pause(64 << 10, 64 << 10, 0.0004, 0.0, collective=True) == pytest.approx(
        0.00005)
    assert longest_pause(64 << 10, 64 << 10, 0.0004, 0.0) == pytest.approx(0.0004)
    assert longest_pause(64 << 10, 64 << 10, 0.0, rate) == pytest.approx(SLEEP_BYTES / rate)
    assert longest_pause(chunk, chunk, 0.0, 0.0) == pytest.approx(SLEEP_BYTES / 125e6)


class _Chain:
    """A chain's middle node as :func:`stalled_on` sees it: parent 1, child 3."""

    children = [3]

    def parent_for(self, k: int) -> int | None:
        return 1


def test_a_stall_names_the_parent_a_receive_waited_on_and_the_children_a_send_did() -> None:
    name = "node {}".format
    assert stalled_on(_Chain(), name, True, 0, []) == "no data from node 1"
    assert stalled_on(_Chain(), name, False, 0, []) == "node 3 took no data"
    assert stalled_on(_Chain(), name, False, 0, [7]) == "node 7 took no data"


def test_a_wait_without_progress_is_a_stall_that_blames_and_counts_as_waiting() -> None:
    """A receive nothing arrives for: :class:`Stalled` after the timeout, its message
    from ``blame``, the time in the ``wait`` phase, and the receive pace taught."""
    clock = PhaseClock()
    blamed: list[tuple[bool, object]] = []

    def blame(receiving: bool, failed: object) -> str:
        blamed.append((receiving, failed))
        return "no data from node 1"

    wakes: list[int] = []
    waits = Waits(plan_of(1 << 20, 1 << 16), ChainSchedule(MPI.COMM_SELF, 0), clock, 0.2,
                  on_wake=lambda: wakes.append(1), blame=blame)
    request = MPI.COMM_SELF.Irecv(bytearray(8), source=0, tag=99)
    try:
        with pytest.raises(Stalled, match=r"^no data from node 1 for 0.2 s$"):
            waits.wait([request], receiving=True)
    finally:
        request.Cancel()
        request.Wait()
    assert blamed == [(True, None)] and wakes, "it woke, and blamed once"
    assert clock.seconds["wait"] == pytest.approx(0.2, abs=0.1)
    assert waits.receive_pace.expected > 0 and waits.send_pace.expected == 0


def test_a_wait_returns_which_request_arrived() -> None:
    waits = Waits(plan_of(1 << 20, 1 << 16), ChainSchedule(MPI.COMM_SELF, 0), PhaseClock(), 5.0,
                  on_wake=lambda: None, blame=lambda receiving, failed: "nobody")
    data = bytearray(8)
    pending = MPI.COMM_SELF.Irecv(bytearray(8), source=0, tag=1)
    arriving = MPI.COMM_SELF.Irecv(data, source=0, tag=2)
    MPI.COMM_SELF.Send(b"12345678", dest=0, tag=2)
    status = MPI.Status()
    assert waits.wait([pending, arriving], receiving=True, any_of=True, status=status) == 1
    assert status.Get_tag() == 2 and bytes(data) == b"12345678"
    pending.Cancel()
    pending.Wait()
