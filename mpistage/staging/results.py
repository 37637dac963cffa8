"""Benchmark results in HDF5: one group per run, appended as it finishes.

Layout of a results file::

    /runs/<key>            one group per run; <key> names its configuration
        attrs              configuration (rate, nodes, size, method, algorithm, chunk,
                           arity, repeat) and outcome (seconds, elapsed, predicted, ok,
                           when, and any extra scalars)
        phases             per-rank phase timings (structured: rank, node, leader, and
                           one float per phase, NaN where a rank skipped the phase)

A sweep that stops can be resumed (runs whose key exists are skipped) and two files can
be merged (:meth:`ResultStore.merge`).  h5py is used from the main thread only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from .report import PHASES

CONFIG_KEYS = ("rate", "nodes", "size", "method", "algorithm", "chunk", "arity", "repeat")


def run_key(config: Mapping[str, Any]) -> str:
    """A stable name for a run's configuration, e.g. ``100mbit-n8-s67108864-mpistage-chain-c1048576-k2-r0``."""
    return (f"{config['rate']}-n{config['nodes']}-s{config['size']}-{config['method']}"
            f"-{config.get('algorithm') or 'none'}-c{config.get('chunk') or 0}"
            f"-k{config.get('arity') or 2}-r{config.get('repeat', 0)}")


def _phase_table(ranks: list[Mapping[str, Any]]) -> np.ndarray:
    dtype = [("rank", "i4"), ("node", "i4"), ("leader", "?")] + [(p, "f8") for p in PHASES]
    table = np.zeros(len(ranks), dtype=dtype)
    for row, rank in zip(table, ranks):
        row["rank"], row["node"], row["leader"] = rank["rank"], rank["node"], rank["leader"]
        for phase in PHASES:
            row[phase] = rank.get("phases", {}).get(phase, math.nan)
    return table


class ResultStore:
    """An HDF5 results file, opened for appending; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "a") -> None:
        self.path = os.fspath(path)
        self._file = h5py.File(self.path, mode)
        self._runs = self._file.require_group("runs") if mode != "r" else self._file["runs"]

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._file.id.valid:
            self._file.close()

    def has(self, config: Mapping[str, Any]) -> bool:
        return run_key(config) in self._runs

    def append(self, config: Mapping[str, Any], outcome: Mapping[str, Any],
               ranks: list[Mapping[str, Any]] | None = None) -> str:
        """Record one run (replacing an earlier record of the same configuration)."""
        key = run_key(config)
        if key in self._runs:
            del self._runs[key]
        group = self._runs.create_group(key)
        for name, value in {**config, **outcome}.items():
            group.attrs[name] = "" if value is None else value
        group.attrs.setdefault("when", time.strftime("%Y-%m-%dT%H:%M:%S"))
        group.create_dataset("phases", data=_phase_table(ranks or []))
        self._file.flush()
        return key

    def runs(self) -> Iterator[dict[str, Any]]:
        """Every run's attributes, as plain Python values."""
        for key in sorted(self._runs):
            attrs = {k: (v.item() if isinstance(v, np.generic) else v)
                     for k, v in self._runs[key].attrs.items()}
            yield {"key": key, **attrs}

    def phases(self, key: str) -> np.ndarray:
        return self._runs[key]["phases"][()]

    def merge(self, other: str | os.PathLike[str]) -> int:
        """Copy the runs of ``other`` that this file lacks; returns how many."""
        copied = 0
        with h5py.File(other, "r") as source:
            for key in source.get("runs", {}):
                if key not in self._runs:
                    source.copy(source["runs"][key], self._runs, name=key)
                    copied += 1
        self._file.flush()
        return copied
