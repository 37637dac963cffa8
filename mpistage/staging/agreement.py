"""The arguments of a collective call agree on every rank, or no rank goes on.

:func:`mpistage.stage` is collective, and rank 0's (the root's) arguments decide what is
sent, where and how: a DEST given differently on another rank was silently replaced by
rank 0's (``stage(src, f"/tmp/api/n{comm.rank}/", ...)`` put every copy in ``n0/`` and
reported success), and a ``root`` or ``ranks_as_nodes`` that differs would match one
rank's collectives with another's and hang.  So the call's first collective compares
every argument that shapes the run with rank 0's, before any of them is used: rank 0's
fingerprint is broadcast, each rank finds its first difference, and a ``MINLOC``
reduction names the same first difference (lowest argument, then lowest rank) on every
rank, which all raise the same :class:`~mpistage.errors.UsageError`.  Three small
collectives when they differ, two when they agree; nothing of the data is pickled.
They run on the caller's communicator (before its private duplicate exists): being
collectives, they never match the application's point-to-point messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mpi4py import MPI

from ..errors import UsageError
from ..sources.streams import is_stream

#: A source that is a stream (``-``, a command's output, a file object): only the root's
#: counts, so a stream on one rank and ``None`` (or another stream) on another agree.
STREAM = "<stream>"

#: Arguments that may differ: a stream's source is the root's alone (the others may pass
#: ``None``).
_ONLY_THE_ROOTS = {"source"}


def canonical(value: Any) -> Any:
    """A picklable, comparable stand-in for an argument: paths as strings, sequences as
    tuples, file objects as :data:`STREAM`, dataclasses and numbers as they are."""
    if is_stream(value):  # "-", a FromCommand (every rank has its own), a file object
        return STREAM
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    return repr(value)


def first_difference(mine: list[tuple[str, Any]], reference: list[tuple[str, Any]]) -> int:
    """Index of the first argument where ``mine`` differs from ``reference`` (rank 0's);
    ``len(mine)`` when none does."""
    for index, ((name, value), (_, expected)) in enumerate(zip(mine, reference)):
        if name in _ONLY_THE_ROOTS and STREAM in (value, expected):
            continue  # the root's stream, ``None`` (or another stream) elsewhere
        if value != expected:
            return index
    return len(mine)


def check_arguments_agree(comm: MPI.Comm, call: str, arguments: Mapping[str, Any]) -> None:
    """Collective: raise the same :class:`UsageError` on every rank unless every rank
    passed ``arguments`` equal to rank 0's (see the module's docstring)."""
    mine = [(name, canonical(value)) for name, value in arguments.items()]
    reference = comm.bcast(mine if comm.rank == 0 else None, root=0)
    index, rank = comm.allreduce((first_difference(mine, reference), comm.rank), op=MPI.MINLOC)
    if index >= len(mine):
        return
    theirs = comm.bcast(mine[index][1] if comm.rank == rank else None, root=rank)
    name, expected = reference[index]
    hint = (": for a path per node or per rank, write {node}, {host} or {rank} in DEST, "
            "which each rank fills in" if name == "dest" else "")
    raise UsageError(f"{call}() was called with {name}={theirs!r} on rank {rank} but "
                     f"{name}={expected!r} on rank 0; its arguments must be the same on "
                     f"every rank{hint}")
