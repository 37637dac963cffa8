"""The minimal MPI relay (mpistage.cluster.mpirelay), the floor bench/limits.py sets
mpistage's CPU against, under ``mpiexec -n 2`` and ``-n 4``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import pytest
from mpi4py import MPI

from mpistage.cluster.mpirelay import relay

pytestmark = pytest.mark.mpi(min_size=2)

SIZE = (1 << 20) + 5  # a short last chunk too


def test_each_receiving_rank_writes_every_byte_it_relays(
        assert_all: Callable[..., None]) -> None:
    comm = MPI.COMM_WORLD
    with tempfile.TemporaryFile() as copy:
        seconds = relay(comm, SIZE, 64 << 10, copy.fileno() if comm.rank > 0 else None)
        written = os.fstat(copy.fileno()).st_size
    expected = SIZE if comm.rank > 0 else 0
    assert_all(written == expected and seconds > 0,
               f"rank {comm.rank} wrote {written} bytes, expected {expected}")


def test_without_a_file_it_only_moves_bytes(assert_all: Callable[..., None]) -> None:
    comm = MPI.COMM_WORLD
    seconds = relay(comm, SIZE, 256 << 10)
    assert_all(seconds == comm.bcast(seconds) and seconds > 0, f"rank {comm.rank}: {seconds}")
