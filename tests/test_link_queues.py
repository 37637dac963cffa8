"""bench/link_queues.py's summary of sampled link queues (pure: no cluster)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_link_queues", ROOT / "bench" / "link_queues.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_gives_each_busy_link_its_carried_bytes_and_deepest_queue() -> None:
    link_queues = load_module()
    samples = [
        {"up h0": (0, 0), "down h1": (1_000, 0), "up h2": (0, 0)},
        {"up h0": (600_000, 125_000), "down h1": (501_000, 250_000), "up h2": (50, 0)},
        {"up h0": (1_200_000, 0), "down h1": (1_001_000, 50_000), "up h2": (90, 0)},
    ]
    lines = link_queues.summary(samples, rate_bits=100_000_000)
    assert lines[0].split() == ["link", "carried", "max", "backlog", "mean", "max", "wait"]
    # Per host, downlink first; a link that carried under 100 kB (h2's) is left out.
    assert [line.split()[:2] for line in lines[1:]] == [["up", "h0"], ["down", "h1"]]
    assert lines[1].split()[2:] == ["1.2", "MB", "125", "kB", "42", "kB", "10", "ms"]
    assert lines[2].split()[2:] == ["1.0", "MB", "250", "kB", "100", "kB", "20", "ms"]
