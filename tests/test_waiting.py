"""Waiting on MPI requests: few wake-ups however long the wait, completions seen soon."""

from __future__ import annotations

import threading
import time

import pytest
from mpi4py import MPI

from mpistage.engine import waiting


def _completes_after(seconds: float) -> MPI.Request:
    """A request that a timer thread completes ``seconds`` from now."""
    request = MPI.Grequest.Start(lambda status: None, lambda: None, lambda completed: None)
    threading.Timer(seconds, request.Complete).start()
    return request


@pytest.fixture()
def wake_ups(monkeypatch):  # type: ignore[no-untyped-def]
    pauses: list[float] = []
    sleep = time.sleep

    def counted(seconds: float) -> None:
        pauses.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(waiting.time, "sleep", counted)
    return pauses


@pytest.mark.parametrize("expected", [0.0, 0.4])
def test_a_long_wait_costs_few_wake_ups_and_is_seen_soon(wake_ups, expected: float) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    assert waiting.poll([_completes_after(0.4)], timeout=5, expected=expected)
    late = time.monotonic() - started - 0.4
    # A 1 ms back-off would wake 400 times; pauses that grow to an eighth of the wait
    # (never above 20 ms) some fifty, and about 0.4 s / 20 ms when the wait was expected.
    assert len(wake_ups) <= (22 if expected else 60), wake_ups
    assert late < 0.4 / 8 + 0.03 and max(wake_ups) <= 0.02 + 1e-9


def test_a_quick_completion_is_seen_at_once_and_a_timeout_is_kept(wake_ups) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    assert waiting.poll([_completes_after(0.002)], timeout=5)
    assert time.monotonic() - started < 0.02
    started = time.monotonic()
    never = MPI.Grequest.Start(lambda status: None, lambda: None, lambda completed: None)
    assert not waiting.poll([never], timeout=0.3, expected=10.0)
    assert 0.3 <= time.monotonic() - started < 0.35
    never.Complete()
    never.Wait()


def test_pace_follows_recent_waits() -> None:
    pace = waiting.Pace()
    pace.add(0.1)
    assert pace.expected == 0.1
    for _ in range(20):
        pace.add(0.02)
    assert pace.expected == pytest.approx(0.02, rel=0.05)
