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

from ._version import __version__
from .calibrate import Calibration, calibrate
from .decide import Prediction
from .errors import MpistageError, Stalled, UsageError
from .model import Parameters
from .options import ALGORITHMS
from .report import NodeResult, RankRecord, StageReport
from .stage import explain, stage

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
