"""bench/message_cost.py: the fit of MPI's per-message CPU and its table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import message_cost  # noqa: E402


def test_the_fit_recovers_the_cost_per_message_and_per_byte() -> None:
    o, rho = 30e-6, 2e9
    cpu = {str(c): (message_cost.SIZE / c) * o + message_cost.SIZE / rho
           for c in message_cost.CHUNKS}
    overhead, rate = message_cost.fit(cpu)
    assert overhead == pytest.approx(o) and rate == pytest.approx(rho)


def test_a_run_that_stalled_at_the_larger_size_gets_no_fit_in_the_table() -> None:
    small, large = (str(c) for c in message_cost.CHUNKS)
    row = {"transport": "ch4:ucx, UCX_TLS=tcp", "where": "2 hosts", "error": None,
           "seconds": {small: 0.56, large: 19.8},
           "cpu": {"sender": {small: 0.04, large: 0.4}, "receiver": {small: 0.08, large: 0.17}},
           "fit": {"sender": {"overhead": 0.0, "rate": 1.7e8},
                   "receiver": {"overhead": 0.0, "rate": 3.9e8}}}
    good = {**row, "transport": "ch4:ofi", "seconds": {small: 0.559, large: 0.56},
            "fit": {"sender": {"overhead": 28e-6, "rate": 1.96e9},
                    "receiver": {"overhead": 40e-6, "rate": 2.06e9}}}
    lines = message_cost.table([{"mpi": "mpich-5.0.2", "rows": [row, good]}])
    stalled = next(line for line in lines if "UCX_TLS" in line)
    assert "1.0 MiB messages stalled: 0.56 s at 64.0 KiB against 19.80 s at 1.0 MiB" in stalled
    assert "us" not in stalled
    fitted = next(line for line in lines if "ch4:ofi" in line)
    assert "| 28 us | 40 us | 1.96 GB/s | 2.06 GB/s |" in fitted


def test_the_relays_output_is_read_with_every_ranks_cpu() -> None:
    assert message_cost.parse("0.559\ncpu 0.063 0.074\n") == (0.559, [0.063, 0.074])
