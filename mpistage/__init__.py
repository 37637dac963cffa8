"""mpistage: stage one file from one rank to node-local storage on every node.

Rank ``root`` reads the source once; one leader rank per node receives it through a
pipelined, chunked collective (a chain, a binomial tree, or MPI's own broadcast) and
writes it to a temporary file that is renamed into place only once its xxh3-128 digest
matches the source.  Every phase is timed so that each run can be held against the Ka
cost model.

    >>> from mpi4py import MPI
    >>> import mpistage
    >>> report = mpistage.stage("input.dat", "/scratch", comm=MPI.COMM_WORLD)
    >>> report.ok
    True
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .decide import Prediction
from .errors import MpistageError, Stalled, UsageError
from .model import Parameters
from .options import ALGORITHMS
from .report import NodeResult, RankRecord, StageReport
from .stage import explain, stage

if TYPE_CHECKING:
    from .calibration import Calibration, calibrate


def __getattr__(name: str) -> Any:
    """``calibrate`` and ``Calibration`` on first use: calibrating needs numpy, which a
    run that only stages a file never imports (PEP 562)."""
    if name in ("calibrate", "Calibration"):
        from . import calibration

        return getattr(calibration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ALGORITHMS",
    "Calibration",
    "MpistageError",
    "NodeResult",
    "Parameters",
    "Prediction",
    "RankRecord",
    "StageReport",
    "Stalled",
    "UsageError",
    "calibrate",
    "explain",
    "stage",
    "__version__",
]
