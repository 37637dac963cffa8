"""What every ``mpistage`` command line shares: a parser that speaks on rank 0 only."""

from __future__ import annotations

import argparse

from ..errors import UsageError


class RankZeroParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting (so every rank ends
    alike, with one line from rank 0) and prints help and errors on rank 0 only."""

    def __init__(self, *args, rank: int = 0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.rank = rank

    def error(self, message: str):  # type: ignore[no-untyped-def]
        raise UsageError(message)

    def _print_message(self, message: str, file=None) -> None:  # type: ignore[no-untyped-def]
        if self.rank == 0:
            super()._print_message(message, file)
