"""bench/report.py on a synthetic sweep whose truth is known."""

import subprocess
import sys
from pathlib import Path

from mpistage.model import Parameters, predict
from mpistage.results import ResultStore

ROOT = Path(__file__).resolve().parent.parent
TRUTH = Parameters(latency=300e-6, bandwidth=11.5e6)


def test_report_fits_tabulates_and_plots(tmp_path: Path) -> None:
    results = tmp_path / "sweep.h5"
    with ResultStore(results) as store:
        for size in (1 << 20, 16 << 20, 64 << 20):
            store.append({"rate": "100mbit", "nodes": 2, "size": size, "method": "p2p",
                          "algorithm": "send", "chunk": size, "arity": 2, "repeat": 0},
                         {"seconds": size / TRUTH.bandwidth, "ok": True})
            for nodes in (2, 4, 8):
                for algorithm in ("chain", "binomial", "tree", "flat", "bcast"):
                    seconds = predict(algorithm, size, nodes, 1 << 20, TRUTH)
                    store.append({"rate": "100mbit", "nodes": nodes, "size": size,
                                  "method": "mpistage", "algorithm": algorithm,
                                  "chunk": 1 << 20, "arity": 2, "repeat": 0},
                                 {"seconds": seconds, "ok": True, "predicted": seconds * 1.1,
                                  "chosen_algorithm": algorithm, "chosen_chunk": 1 << 20})
                store.append({"rate": "100mbit", "nodes": nodes, "size": size,
                              "method": "mpistage", "algorithm": "auto", "chunk": 0, "arity": 2,
                              "repeat": 0},
                             {"seconds": predict("chain", size, nodes, 1 << 20, TRUTH),
                              "ok": True, "chosen_algorithm": "chain", "chosen_chunk": 1 << 20})
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--results",
                          str(results), "--plots", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "α = 300 us, B = 92.0 Mbit/s" in text, "the joint fit recovers the truth"
    assert "| chain | 9 | 0 % | 0 % | 10 % | 10 % |" in text
    assert "picked the algorithm that measured fastest in" in text
    assert "Chain to 8 hosts, 64 MiB:" in text and "against one point-to-point transfer" in text
    for name in ("model-100mbit-size.png", "model-100mbit-nodes.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 1000, name
