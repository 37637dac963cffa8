"""The one registry of algorithms: every schedule by name.

The CLI's ``--algorithm`` choices and help, ``auto``'s candidates and the cost model are
all read from :data:`SCHEDULES`; adding an algorithm is one file with its
:class:`~mpistage.engine.schedules.Schedule` subclass and one line here.
"""

from __future__ import annotations

from .ring import RingSchedule
from .schedules import (BcastSchedule, BinomialSchedule, ChainSchedule, FlatSchedule,
                        KaryTreeSchedule, Schedule)
from .twotree import TwoTreeSchedule

#: Every algorithm, by name, in the order ``--help`` lists them.
SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls
    for cls in (
        ChainSchedule,
        BinomialSchedule,
        KaryTreeSchedule,
        TwoTreeSchedule,
        FlatSchedule,
        BcastSchedule,
        RingSchedule,
    )
}


def algorithm_help() -> str:
    """``--algorithm``'s help: every schedule's line, from the registry."""
    return "; ".join(f"{name}: {cls.help}" for name, cls in SCHEDULES.items())
