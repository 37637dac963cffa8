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

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import MpistageError, Stalled, UsageError

if TYPE_CHECKING:
    from .model import Parameters
    from .model.decide import Prediction
    from .staging.calibration import Calibration, calibrate
    from .staging.explain import explain
    from .staging.options import ALGORITHMS
    from .staging.report import NodeResult, RankRecord, StageReport
    from .staging.run import stage

#: Where each public name lives.  They load on first use (PEP 562): importing mpistage,
#: or any of its small modules (units, cluster ...), neither initializes MPI nor imports
#: what a run does not need.
_LAZY = {
    "ALGORITHMS": "staging.options",
    "Calibration": "staging.calibration",
    "NodeResult": "staging.report",
    "Parameters": "model",
    "Prediction": "model.decide",
    "RankRecord": "staging.report",
    "StageReport": "staging.report",
    "calibrate": "staging.calibration",
    "explain": "staging.explain",
    "stage": "staging.run",
}

__all__ = ["MpistageError", "Stalled", "UsageError", "__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value
