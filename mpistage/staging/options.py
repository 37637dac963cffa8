"""The options of one run, as one frozen object, checked once.

:func:`mpistage.stage` takes its options as keyword arguments (the Python API); it packs
them into a :class:`StageOptions`, checks them on every rank (so all ranks raise together
without talking) and passes that one object down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..engine.algorithms import SCHEDULES
from ..engine.pipeline import DEFAULT_DEPTH, DEFAULT_TIMEOUT
from ..errors import UsageError
from ..model import Parameters
from ..model.decide import AUTO
from ..plan import MIN_DEPTH, check_chunk_size, check_depth, check_timeout
from ..units import format_bytes

ALGORITHMS: tuple[str, ...] = tuple(SCHEDULES)
#: ``--read-by``: the root reads the source, every node reads a share of it (a file all
#: of them mount), or the model decides.
READ_BY = (AUTO, "root", "all")
#: The chunk when the model is not asked (no node needs the file).
DEFAULT_CHUNK = 4 << 20
#: Chunk buffer memory per node leader: depth × chunk stays within it.  64 MiB keeps a
#: rank's peak RSS near 100 MB; past 16 MiB chunks (64 MiB / the default depth of 4) the
#: model sees no gain on any link we know.
DEFAULT_MEMORY = 64 << 20
#: Smallest budget: two buffers of the smallest chunk ``auto`` picks.
MIN_MEMORY = 128 << 10
#: A calibration file used when none is given (a site may set it for its cluster).
CALIBRATION_ENV = "MPISTAGE_CALIBRATION"


@dataclass(frozen=True)
class StageOptions:
    """How to stage; the fields are :func:`mpistage.stage`'s keyword arguments."""

    algorithm: str = AUTO
    chunk_size: int | str = AUTO
    root: int = 0
    ranks_as_nodes: bool = False
    arity: int = 2
    calibration: Parameters | str | os.PathLike[str] | None = None
    fsync: bool = False
    verify: bool = False
    depth: int = DEFAULT_DEPTH
    memory: int = DEFAULT_MEMORY
    timeout: float = DEFAULT_TIMEOUT
    mkdir: bool = False
    skip_bad_nodes: bool = False
    quick: bool = False
    remove_first: bool = False
    no_clobber: bool = False
    shared_dest: bool = False
    delete: bool = False
    skip_special: bool = False
    compress: str = "none"
    pipe: str | None = None
    expect_size: int | None = None
    stream: bool = False
    read_by: str = AUTO

    @property
    def auto_algorithm(self) -> bool:
        return self.algorithm == AUTO

    @property
    def auto_chunk(self) -> bool:
        return self.chunk_size == AUTO

    @property
    def every_node_reads(self) -> bool:
        """``--read-by all``, or an algorithm in which every node reads a share."""
        return self.read_by == "all" or (self.algorithm in SCHEDULES
                                         and SCHEDULES[self.algorithm].every_node_reads)

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
        if not isinstance(self.memory, int) or self.memory < MIN_MEMORY:
            raise UsageError(f"invalid memory budget {self.memory!r}: expected at least "
                             f"{format_bytes(MIN_MEMORY)}")
        self._check_streams()
        self._check_read_by()
        if self.chunk_size != AUTO and MIN_DEPTH * int(self.chunk_size) > self.memory:
            raise UsageError(
                f"chunk size {format_bytes(int(self.chunk_size))} needs {MIN_DEPTH} buffers, "
                f"more than the memory budget of {format_bytes(self.memory)}: use a smaller "
                "chunk or a larger --memory")

    def _check_streams(self) -> None:
        """Streams, pipes and compression: what they cannot go with."""
        broadcast = self.algorithm in SCHEDULES and not SCHEDULES[self.algorithm].point_to_point
        if broadcast and self.compress != "none":
            raise UsageError(f"--compress needs a point-to-point algorithm, not "
                             f"{self.algorithm}: MPI's broadcast needs every chunk's length "
                             "on every rank in advance")
        if broadcast and self.stream:
            raise UsageError(f"standard input needs a point-to-point algorithm, not "
                             f"{self.algorithm}: MPI's broadcast needs the number of chunks "
                             "on every rank in advance")
        if self.expect_size is not None and not self.stream:
            raise UsageError("--expect-size goes with - (standard input) as SRC")
        if self.expect_size is not None and self.expect_size < 0:
            raise UsageError(f"invalid --expect-size {self.expect_size}")
        if self.pipe is not None:
            meaningless = [name for name, value in (
                ("--verify", self.verify), ("--fsync", self.fsync),
                ("--remove-first", self.remove_first), ("--no-clobber", self.no_clobber),
                ("--quick", self.quick), ("--mkdir", self.mkdir), ("--delete", self.delete),
                ("--shared-dest", self.shared_dest))
                if value]
            if meaningless:
                raise UsageError(f"{', '.join(meaningless)} mean nothing with --pipe "
                                 "(no file is written)")

    def _check_read_by(self) -> None:
        """``--read-by``: what every node reading a share cannot go with."""
        if self.read_by not in READ_BY:
            raise UsageError(f"invalid --read-by {self.read_by!r}: expected "
                             f"{', '.join(READ_BY)}")
        ring = [name for name, cls in SCHEDULES.items() if cls.every_node_reads]
        if self.read_by == "all" and not self.auto_algorithm and self.algorithm not in ring:
            raise UsageError(f"--read-by all has every node read a share, which the "
                             f"{'/'.join(ring)} schedule sends: not {self.algorithm}")
        if self.read_by == "root" and self.algorithm in ring:
            raise UsageError(f"{self.algorithm} has every node read a share of the source: "
                             "not with --read-by root")
        if self.every_node_reads:
            for what, given in (("standard input", self.stream), ("--pipe", self.pipe),
                                ("--compress", self.compress != "none")):
                if given:
                    raise UsageError(f"every node reading a share of the source "
                                     f"(--read-by all) does not go with {what}")

    @property
    def max_auto_chunk(self) -> int:
        """The largest chunk ``auto`` may pick: ``depth`` of them fit the memory budget."""
        return self.memory // self.depth

    def buffers(self, chunk_size: int) -> int:
        """Chunk buffers per leader: ``depth``, fewer where ``depth × chunk`` would
        exceed the memory budget (never fewer than two: one in flight, one filling)."""
        return max(MIN_DEPTH, min(self.depth, self.memory // max(chunk_size, 1)))

    def load_calibration(self) -> Parameters | None:
        """The calibration's parameters (read on the root only): the one given, else the
        file named by ``$MPISTAGE_CALIBRATION``, else ``None`` (measure the link)."""
        calibration = self.calibration
        if calibration is None:
            calibration = os.environ.get(CALIBRATION_ENV) or None
        if calibration is None or isinstance(calibration, Parameters):
            return calibration
        try:
            return Parameters.load(calibration)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"cannot use calibration {os.fspath(calibration)!r}: {exc}") from None
