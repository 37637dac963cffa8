"""The options of one run, as one frozen object, checked once.

:func:`mpistage.stage` takes its options as keyword arguments (the Python API); it packs
them into a :class:`StageOptions`, checks them on every rank (so all ranks raise together
without talking) and passes that one object down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .algorithms import SCHEDULES
from .decide import AUTO
from .errors import UsageError
from .model import Parameters
from .pipeline import DEFAULT_DEPTH, DEFAULT_TIMEOUT
from .plan import check_chunk_size, check_depth, check_timeout

ALGORITHMS: tuple[str, ...] = tuple(SCHEDULES)
DEFAULT_CHUNK = 4 << 20


@dataclass(frozen=True)
class StageOptions:
    """How to stage; the fields are :func:`mpistage.stage`'s keyword arguments."""

    algorithm: str = "chain"
    chunk_size: int | str = DEFAULT_CHUNK
    root: int = 0
    ranks_as_nodes: bool = False
    arity: int = 2
    calibration: Parameters | str | os.PathLike[str] | None = None
    fsync: bool = False
    verify: bool = False
    depth: int = DEFAULT_DEPTH
    timeout: float = DEFAULT_TIMEOUT
    mkdir: bool = False
    skip_bad_nodes: bool = False
    quick: bool = False
    remove_first: bool = False
    no_clobber: bool = False

    @property
    def auto_algorithm(self) -> bool:
        return self.algorithm == AUTO

    @property
    def auto_chunk(self) -> bool:
        return self.chunk_size == AUTO

    def check(self, ranks: int) -> None:
        """Raise :class:`UsageError` unless every option is usable with ``ranks`` ranks."""
        if self.algorithm not in SCHEDULES and self.algorithm != AUTO:
            raise UsageError(f"invalid algorithm {self.algorithm!r}: expected one of "
                             f"{', '.join(ALGORITHMS)} or auto")
        if self.chunk_size != AUTO:
            if not isinstance(self.chunk_size, int):
                raise UsageError(f"invalid chunk size {self.chunk_size!r}: expected bytes or auto")
            check_chunk_size(self.chunk_size)
        if self.arity < 2:
            raise UsageError(f"invalid arity {self.arity}: expected 2 or more children per node")
        if not 0 <= self.root < ranks:
            raise UsageError(f"invalid root {self.root}: expected a rank from 0 to {ranks - 1}")
        check_depth(self.depth)
        check_timeout(self.timeout)

    def load_calibration(self) -> Parameters | None:
        """The calibration's parameters (read on the root only)."""
        calibration = self.calibration
        if calibration is None or isinstance(calibration, Parameters):
            return calibration
        try:
            return Parameters.load(calibration)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"cannot use calibration {os.fspath(calibration)!r}: {exc}") from None
