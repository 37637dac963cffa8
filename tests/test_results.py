import math
from pathlib import Path

import numpy as np

from mpistage.staging.results import ResultStore, run_key

CONFIG = {"rate": "100mbit", "nodes": 8, "size": 64 << 20, "method": "mpistage",
          "algorithm": "chain", "chunk": 1 << 20, "arity": 2, "repeat": 0}
RANKS = [{"rank": 0, "node": 0, "leader": True, "phases": {"read": 0.5, "transfer": 6.1}},
         {"rank": 1, "node": 1, "leader": True, "phases": {"write": 0.2, "transfer": 6.3}}]


def test_round_trip_resume_and_merge(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    with ResultStore(path) as store:
        assert not store.has(CONFIG)
        key = store.append(CONFIG, {"seconds": 6.3, "predicted": 6.0, "ok": True,
                                    "error": None}, RANKS)
        assert key == run_key(CONFIG) and store.has(CONFIG)
    with ResultStore(path, "r") as store:
        (run,) = list(store.runs())
        assert {k: run[k] for k in CONFIG} == CONFIG
        assert (run["seconds"], run["predicted"], run["ok"], run["error"]) == (6.3, 6.0, True, "")
        phases = store.phases(key)
        assert list(phases["rank"]) == [0, 1] and phases["transfer"][1] == 6.3
        assert math.isnan(phases["write"][0]) and phases["leader"].all()
    other = tmp_path / "b.h5"
    with ResultStore(other) as store:
        store.append({**CONFIG, "nodes": 16}, {"seconds": 6.5})
        store.append(CONFIG, {"seconds": 99.0})  # same run measured elsewhere: not copied over
    with ResultStore(path) as store:
        assert store.merge(other) == 1
        assert store.merge(other) == 0
        runs = {r["nodes"]: r["seconds"] for r in store.runs()}
    assert runs == {8: 6.3, 16: 6.5}


def test_append_replaces_the_same_configuration(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "c.h5") as store:
        store.append(CONFIG, {"seconds": 1.0})
        store.append(CONFIG, {"seconds": 2.0}, RANKS)
        assert [r["seconds"] for r in store.runs()] == [2.0]
        assert np.asarray(store.phases(run_key(CONFIG))).shape == (2,)
