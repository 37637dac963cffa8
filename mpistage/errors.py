"""One family of exceptions, each a thin subclass of a built-in.

The CLI turns them into one line on rank 0 and an exit code; anything else is a bug and
aborts the job (so that no rank is left waiting for a peer that died).
"""

from __future__ import annotations


class MpistageError(Exception):
    """Base class of every error mpistage raises on purpose."""

    exit_code = 1


class UsageError(MpistageError, ValueError):
    """Bad input: a missing source, a bad destination, an invalid option value."""

    exit_code = 2


class Stalled(MpistageError, TimeoutError):
    """A transfer made no progress within the timeout, or lost a peer.

    After this, MPI communication with some ranks may be impossible: the CLI reports
    what it knows and aborts the job rather than risk a hang in ``MPI_Finalize``.
    """

    exit_code = 1


class RootLost(Stalled):
    """No word from the transfer's root: the source is gone, no survivor can finish
    (:mod:`mpistage.engine.recovery`)."""


class RoundEnded(Stalled):
    """This node's part in a transfer round was ended from outside: the root called the
    round off because a node stalled or fell silent (:mod:`mpistage.engine.rollcall`).

    Attributes:
        suspects: the nodes (ranks of the round's communicator) that fell silent.
    """

    def __init__(self, message: str, suspects: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.suspects = suspects


class ReportLost(Stalled):
    """The run is over and rank 0 has its report, but it did not reach this rank (a rank
    died after it reported): nothing is left to wait for."""


class CommandFailed(ValueError):
    """A ``--pipe`` command did not exit 0; the message says how it ended, whole."""
