"""Shared fixtures.

Under ``mpiexec -n N python -m pytest --only-mpi`` every rank runs the whole session
(``tests/run.sh`` shows rank 0's output and keeps the others' in log files);
``--junitxml`` paths containing ``RANK`` get the rank filled in.  MPI tests assert
across ranks, so a failure on any rank fails on rank 0 too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _world_rank() -> int:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    rank = _world_rank()
    xmlpath = getattr(config.option, "xmlpath", None)
    if xmlpath and "RANK" in xmlpath:
        config.option.xmlpath = xmlpath.replace("RANK", str(rank))


def collective_assert(comm, condition: bool, message: str = "") -> None:  # type: ignore[no-untyped-def]
    """Assert ``condition`` on every rank; fails on every rank if it fails on any."""
    failures = [(r, message) for r, (ok, message) in enumerate(comm.allgather((bool(condition), message))) if not ok]
    assert not failures, f"failed on ranks: {failures}"


@pytest.fixture
def assert_all() -> Callable[..., None]:
    from mpi4py import MPI

    return lambda condition, message="": collective_assert(MPI.COMM_WORLD, condition, message)


@pytest.fixture
def make_file() -> Callable[[Path, int, int], Path]:
    """``make_file(path, size, seed)``: a file of reproducible random bytes."""

    def make(path: Path, size: int, seed: int = 0) -> Path:
        import numpy as np

        data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
        path.write_bytes(data.tobytes())
        return path

    return make
