"""What the emulated cluster's helpers (its Slurm, its TCP probe) need of it: its hosts,
their addresses, a way to run a command on one, and a directory for state.

:class:`~mpistage.cluster.cluster.EmulatedCluster` has all of it; the helpers depend on
this small protocol instead, so they never import the cluster that uses them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class ClusterError(RuntimeError):
    """The emulated cluster cannot be built or used; the message says what to do."""


class Hosts(Protocol):
    """The emulated hosts, as the cluster's helpers see them."""

    name: str
    hosts: int

    @property
    def hostnames(self) -> list[str]: ...

    @property
    def state_dir(self) -> Path: ...

    def address(self, host: int | str) -> str: ...

    def command(self, host: int | str, argv: Sequence[str]) -> list[str]: ...

    def run(self, host: int | str, argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess: ...  # type: ignore[no-untyped-def,type-arg]
