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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .calibrate import Calibration, calibrate
    from .decide import Prediction
    from .errors import MpistageError, Stalled, UsageError
    from .model import Parameters
    from .report import NodeResult, RankRecord, StageReport
    from .stage import ALGORITHMS, explain, stage

#: Where each public name lives.  They are imported on first use, because importing
#: mpi4py initializes MPI: ``mpistage-sbcast`` and the emulated cluster, which import
#: parts of this package without being MPI programs, must not become MPI singletons.
_PUBLIC = {
    "Calibration": "calibrate", "calibrate": "calibrate", "Prediction": "decide",
    "MpistageError": "errors", "Stalled": "errors", "UsageError": "errors",
    "Parameters": "model", "NodeResult": "report", "RankRecord": "report",
    "StageReport": "report", "ALGORITHMS": "stage", "explain": "stage", "stage": "stage",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

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
