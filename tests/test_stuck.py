"""The watchdog that ends a rank MPI holds for good (mpistage.engine.stuck): it judges only the
polled region, and only a main thread that stopped coming back."""

from __future__ import annotations

import threading
import time

from mpistage.engine import stuck, waiting


def watched(limit: float, body) -> list[float]:  # type: ignore[no-untyped-def]
    calls: list[float] = []
    fired = threading.Event()

    def on_stuck(seconds: float) -> None:
        calls.append(seconds)
        fired.set()

    with stuck.Watchdog(limit, on_stuck):
        body(fired)
    return calls


def test_a_main_thread_held_in_the_polled_region_is_judged_stuck() -> None:
    def body(fired: threading.Event) -> None:
        with stuck.polled():
            assert fired.wait(5), "the watchdog never fired"
    calls = watched(0.2, body)
    assert len(calls) == 1 and 0.2 <= calls[0] < 2


def test_outside_the_polled_region_nothing_is_judged() -> None:
    calls = watched(0.1, lambda fired: time.sleep(0.6))
    assert calls == []


def test_waits_that_keep_coming_back_are_not_stuck() -> None:
    def body(fired: threading.Event) -> None:
        with stuck.polled():
            end = time.monotonic() + 0.8
            while time.monotonic() < end:
                waiting.tend_background()  # what every poll's wake-up calls
                time.sleep(0.02)
    assert watched(0.2, body) == []


def test_a_poll_counts_as_coming_back() -> None:
    def body(fired: threading.Event) -> None:
        with stuck.polled():
            for _ in range(8):
                waiting.poll([], timeout=1.0)  # returns at once, and says so
                time.sleep(0.05)
    assert watched(0.2, body) == []


def test_the_limit_leaves_room_for_a_send_to_a_dead_peer() -> None:
    assert stuck.limit_for(3) == 8
    assert stuck.limit_for(30) > 30


def test_the_commands_policy_ends_the_process_with_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    script = ("import time\n"
              "from mpistage.engine import stuck\n"
              "with stuck.Watchdog(0.3, stuck.leave(0)), stuck.polled():\n"
              "    time.sleep(30)  # as a rank held inside one MPI call\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=20)
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpistage: transfer failed: rank 0 was held")


def test_a_process_that_was_stopped_is_not_judged_stuck_on_waking(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP stops every thread: on SIGCONT the gap is the whole process's, not one MPI
    call's, and the main thread gets a new chance (a frozen node that wakes goes on as
    mpistage.engine.recovery says).  The stop is played by a clock that jumps 5 s while the
    main thread is, for 0.3 s, not back from a call (the limit is 0.4 s)."""
    import types

    jump = [0.0]
    monkeypatch.setattr(stuck, "time", types.SimpleNamespace(
        monotonic=lambda: time.monotonic() + jump[0]))

    def body(fired: threading.Event) -> None:
        with stuck.polled():
            for step in range(20):
                stuck.alive()
                time.sleep(0.03)
                if step == 10:
                    jump[0] = 5.0  # the process was stopped for 5 s ...
                    time.sleep(0.3)  # ... and the watchdog looks before this call returns
    assert watched(0.4, body) == []


def test_following_a_slow_writer_is_not_being_stuck() -> None:
    """The end of a transfer waits for this node's writes as long as they progress
    (mpistage.engine.liveness.follow): that wait comes back at every look."""
    from mpistage.engine.liveness import follow

    done = [0]

    def writer() -> None:
        for _ in range(16):
            time.sleep(0.05)
            done[0] += 1

    def body(fired: threading.Event) -> None:
        with stuck.polled():
            thread = threading.Thread(target=writer)
            thread.start()
            follow(thread, lambda: done[0], timeout=5.0, heartbeat=lambda p: None,
                   what="writing")
    assert watched(0.3, body) == []
