"""bench/report.py on a synthetic sweep whose truth is known."""

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from mpistage.model import Parameters, bound, predict
from mpistage.staging.results import ResultStore

ROOT = Path(__file__).resolve().parent.parent
TRUTH = Parameters(latency=300e-6, bandwidth=11.5e6)


def synthetic_sweep(results: Path, off: dict[str, float] | None = None,
                    repeats: int = 1) -> None:
    """A sweep whose runs take what the model predicts with TRUTH (times ``off[algorithm]``,
    on the 4-node runs only), each configuration ``repeats`` times (one repeat 3× slower,
    which the median must ignore)."""
    off = off or {}
    with ResultStore(results) as store:
        for size in (1 << 20, 16 << 20, 64 << 20):
            store.append({"rate": "100mbit", "nodes": 2, "size": size, "method": "p2p",
                          "algorithm": "send", "chunk": size, "arity": 2, "repeat": 0},
                         {"seconds": size / TRUTH.bandwidth, "ok": True})
            for nodes in (2, 4, 8):
                times = {}
                for algorithm in ("chain", "binomial", "tree", "flat", "bcast"):
                    seconds = times[algorithm] = predict(algorithm, size, nodes, 1 << 20, TRUTH)
                    if nodes == 4:
                        seconds *= off.get(algorithm, 1.0)
                    for repeat in range(repeats):
                        slow = 3.0 if repeat == 1 else 1.0
                        store.append({"rate": "100mbit", "nodes": nodes, "size": size,
                                      "method": "mpistage", "algorithm": algorithm,
                                      "chunk": 1 << 20, "arity": 2, "repeat": repeat},
                                     {"seconds": seconds * slow, "ok": True,
                                      "predicted": seconds * 1.1,
                                      "chosen_algorithm": algorithm, "chosen_chunk": 1 << 20})
                pick = min(times, key=times.__getitem__)  # auto picks what the truth says
                store.append({"rate": "100mbit", "nodes": nodes, "size": size,
                              "method": "mpistage", "algorithm": "auto", "chunk": 0, "arity": 2,
                              "repeat": 0},
                             {"seconds": times[pick], "ok": True, "chosen_algorithm": pick,
                              "chosen_chunk": 1 << 20})


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_report_fits_tabulates_and_plots(tmp_path: Path) -> None:
    results = tmp_path / "sweep.h5"
    synthetic_sweep(results)
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--results",
                          str(results), "--plots", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "α = 300 us, B = 92.0 Mbit/s" in text, "the joint fit recovers the truth"
    assert "| chain | 9 | 0 % | 0 % | 0 | - | 10 % | 10 % |" in text
    assert "picked the algorithm that measured fastest in" in text
    assert "Chain to 8 hosts, 64 MiB:" in text and "against one point-to-point transfer" in text
    for name in ("model-100mbit-size.png", "model-100mbit-nodes.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 1000, name


#: A link and a CPU where the crowded runs (16 ranks on 2 cores) are CPU-bound.
CPU_TRUTH = Parameters(latency=300e-6, bandwidth=11.5e6, read_bandwidth=1.5e9,
                       write_bandwidth=1.5e9, overhead=400e-6, cpu_rate=0.15e9)


def cpu_sweep(results: Path, off: dict[str, float] | None = None, repeats: int = 4,
              truth: Parameters = CPU_TRUTH, nodes_list: tuple[int, ...] = (2, 4, 8, 16),
              record_cpu: bool = True) -> None:
    """A sweep of runs that take what the model with CPU terms predicts (every emulated
    host on one 2-core machine: ranks per core = nodes / 2), times ``off[algorithm]`` on
    the 4-node runs; the last of ``repeats`` 3× slower (the judged half's median must
    ignore it); each run records the CPU terms its own model used, as bench/sweep.py does."""
    off = off or {}
    with ResultStore(results) as store:
        for size in (16 << 20, 64 << 20):
            for nodes in nodes_list:
                crowded = replace(truth, share=nodes / 2)
                times = {}
                for algorithm in ("chain", "binomial", "tree", "twotree"):
                    seconds = times[algorithm] = predict(algorithm, size, nodes, 1 << 20, crowded)
                    if nodes == 4:
                        seconds *= off.get(algorithm, 1.0)
                    for repeat in range(repeats):
                        slow = 3.0 if repeat == repeats - 1 and repeats > 2 else 1.0
                        store.append({"rate": "100mbit", "nodes": nodes, "size": size,
                                      "method": "mpistage", "algorithm": algorithm,
                                      "chunk": 1 << 20, "arity": 2, "repeat": repeat},
                                     {"seconds": seconds * slow, "ok": True, "cores": 2,
                                      "quick_latency": truth.latency,
                                      **({"model_overhead": truth.overhead,
                                          "model_cpu_rate": truth.cpu_rate} if record_cpu else {}),
                                      "chosen_algorithm": algorithm, "chosen_chunk": 1 << 20})
                pick = min(times, key=times.__getitem__)  # auto picks what the truth says
                for repeat in range(repeats):
                    store.append({"rate": "100mbit", "nodes": nodes, "size": size,
                                  "method": "mpistage", "algorithm": "auto", "chunk": 0,
                                  "arity": 2, "repeat": repeat},
                                 {"seconds": times[pick], "ok": True, "cores": 2,
                                  "chosen_algorithm": pick, "chosen_chunk": 1 << 20})


def test_check_passes_out_of_sample_with_every_point_counted(tmp_path: Path) -> None:
    results = tmp_path / "sweep.h5"
    cpu_sweep(results)
    assert bound("chain", 64 << 20, 16, 1 << 20, replace(CPU_TRUTH, share=8)) == "CPU", \
        "the sweep holds CPU-bound points"
    run = report("--results", str(results), "--check", "--cores", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "all 10 goals met", run.stdout
    assert "out of sample (fitted to repeat 0, judged on the others)" in run.stdout
    assert "ok: 100mbit chain: max error 0 % (goal ≤ 15 %, 8 points, every one counted)" \
        in run.stdout, "the slow repeat is outvoted, and the CPU-bound points count"


def test_check_fails_and_names_each_missed_goal(tmp_path: Path) -> None:
    results = tmp_path / "sweep.h5"
    cpu_sweep(results, off={"binomial": 1.3})
    run = report("--results", str(results), "--check", "--cores", "2")
    assert run.returncode == 1
    missed = [line for line in run.stdout.splitlines() if line.startswith("MISSED")]
    assert len(missed) == 1 and "100mbit binomial: max error 23 %" in missed[0], run.stdout
    assert run.stdout.splitlines()[-1] == "1 of 10 goals missed"
    assert any(line.startswith("| 100mbit | 4 | 64.0 MiB | binomial") for line in
               run.stdout.splitlines()), "the point outside the goal is listed"


def test_the_cpu_terms_are_the_runs_own_and_without_them_the_crowded_points_fail(
        tmp_path: Path) -> None:
    """The check takes o and the CPU rate the runs' own models used; a sweep that did
    not record them is judged with the defaults (o ~0.1 ms), and where the truth's
    CPU is far costlier its crowded points miss."""
    costly = replace(CPU_TRUTH, overhead=4e-3)
    recorded, unrecorded = tmp_path / "recorded.h5", tmp_path / "unrecorded.h5"
    cpu_sweep(recorded, truth=costly)
    cpu_sweep(unrecorded, truth=costly, record_cpu=False)
    run = report("--results", str(recorded), "--check", "--cores", "2")
    assert run.returncode == 0 and "o 4000 µs" in run.stdout, run.stdout
    run = report("--results", str(unrecorded), "--check", "--cores", "2")
    assert run.returncode == 1 and "MISSED: 100mbit chain: max error" in run.stdout, run.stdout


def test_one_repeat_is_judged_in_sample_and_says_so(tmp_path: Path) -> None:
    results = tmp_path / "sweep.h5"
    cpu_sweep(results, repeats=1, nodes_list=(2, 4))
    run = report("--results", str(results), "--check", "--cores", "2")
    assert "IN SAMPLE (one repeat only)" in run.stdout, run.stdout


def test_too_short_points_are_left_out_and_listed(tmp_path: Path) -> None:
    results = tmp_path / "sweep.h5"
    cpu_sweep(results, nodes_list=(2, 4))
    with ResultStore(results) as store:
        for repeat in range(2):
            store.append({"rate": "100mbit", "nodes": 8, "size": 256 << 10, "method": "mpistage",
                          "algorithm": "tree", "chunk": 1 << 20, "arity": 2, "repeat": repeat},
                         {"seconds": 2 * predict("tree", 256 << 10, 8, 1 << 20, CPU_TRUTH),
                          "ok": True, "cores": 2})
    run = report("--results", str(results), "--check", "--cores", "2")
    assert run.returncode == 0, run.stdout
    assert any(line.startswith("| 100mbit | 8 | 256.0 KiB | tree") and
               line.endswith("| left out: too short |") for line in run.stdout.splitlines())


def test_one_host_runs_are_judged_with_their_probed_rate_and_zstd_by_its_own_predictions(
        tmp_path: Path) -> None:
    """``bench/sweep.py --one-host`` (rate ``shm``: no link set, B near what the runs'
    probes measured, nothing left out as too short) and ``--zstd`` (each run judged on its
    own prediction; the speed-up of compression against the goal)."""
    results = tmp_path / "sweep.h5"
    cpu_sweep(results, nodes_list=(2, 4))
    shm = replace(CPU_TRUTH, latency=30e-6, bandwidth=2.0e9)
    with ResultStore(results) as store:
        for nodes in (2, 4):
            for chunk in (1 << 20, 4 << 20):
                seconds = predict("chain", 1 << 30, nodes, chunk, replace(shm, share=nodes / 2))
                for repeat in range(3):
                    store.append({"rate": "shm", "nodes": nodes, "size": 1 << 30,
                                  "method": "mpistage", "algorithm": "chain", "chunk": chunk,
                                  "arity": 2, "repeat": repeat},
                                 {"seconds": seconds, "ok": True, "cores": 2,
                                  "quick_latency": shm.latency, "quick_bandwidth": 1.7e9,
                                  "model_overhead": shm.overhead, "model_cpu_rate": shm.cpu_rate})
        for method, elapsed, predicted in (("mpistage-text", 6.0, 5.5), ("mpistage-zstd", 2.0, 1.3)):
            for repeat in range(3):
                store.append({"rate": "100mbit", "nodes": 8, "size": 64 << 20, "method": method,
                              "algorithm": "auto", "chunk": 0, "arity": 2, "repeat": repeat},
                             {"seconds": elapsed - 0.5, "elapsed": elapsed, "ok": True,
                              "predicted": predicted})
    run = report("--results", str(results), "--check", "--cores", "2")
    assert "ok: shm chain: median error 0 %" in run.stdout, run.stdout
    assert "ok: mpistage-text: median error of the runs' own predictions 0 %" in run.stdout
    assert "MISSED: mpistage-zstd: median error of the runs' own predictions 13 %" in run.stdout
    assert "ok: --compress zstd 3.00× faster than without" in run.stdout, run.stdout
    assert run.returncode == 1


def test_committed_results_cite_no_path_of_the_machine_that_made_them() -> None:
    """Generated reports name their inputs relative to the repository: an absolute path
    of the development machine (``/work/…``, a home directory) means nothing elsewhere."""
    machine = re.compile(r"(?<![\w.])/(?:work|root|home)/")
    for path in sorted((ROOT / "bench" / "results").rglob("*")):
        if path.suffix in {".md", ".txt", ".json", ".csv"}:
            text = path.read_text(encoding="utf-8")
            assert str(ROOT) not in text, path
            assert not machine.search(text), f"{path}: {machine.search(text)}"
