"""bench/ka.py: the Ka paper's numbers as transcribed, its model as a limit of ours, and
the script's output (run in-process on the committed sweep, into a temporary directory)."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mpistage.model import Parameters, predict

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "bench" / "results" / "sweep-3x.h5"


def _load_ka():  # type: ignore[no-untyped-def]
    """bench/ is not a package: load the script as a module."""
    spec = importlib.util.spec_from_file_location("bench_ka", ROOT / "bench" / "ka.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ka = _load_ka()
B = ka.KA_BANDWIDTH


def test_transcribed_numbers_are_what_the_paper_says() -> None:
    # §3c: "d=0.1 seconds thus d x N ... is about 20 seconds for 200 nodes"
    assert ka.KA_D * 200 == pytest.approx(ka.KA_CHAIN_SETUP_200)
    # §2d: 225 nodes; 100 Mbit/s NICs, 1 Gbit/s switch interface, 3.8 Gbit/s per switch
    assert (ka.KA_NODES, ka.KA_NIC_BITS, ka.KA_SWITCH_PORT_BITS) == (225, 100e6, 1e9)
    assert ka.KA_SWITCH_AGGREGATE_BITS == 3.8e9
    # §2d: 3 GB on 225 nodes in < 15 min; 2 GB on 100 nodes in < 10 min
    assert [(i.nodes, i.size, i.seconds) for i in ka.KA_INSTALLS] == [
        (225, 3e9, 900.0), (100, 2e9, 600.0)]
    # §3a: launcher < 0.5 s for 200 nodes; §3c: 10-25 % over one copy; §3b: 16 and 201 nodes
    assert ka.KA_LAUNCH_200 == 0.5
    assert ka.KA_CHAIN_OVERHEAD == (0.10, 0.25)
    assert ka.KA_FIGURE_NODES == (16, 201)


def test_ka_formulas_are_each_other_where_the_paper_says() -> None:
    d, L = ka.KA_D, 8.0
    # "In the case of a chain, we take n=1 and then k=N"
    for nodes in (2, 16, 201):
        assert ka.ka_tree(d, L, nodes, arity=1) == pytest.approx(ka.ka_chain(d, L, nodes))
    # "If n=2, then we have a binary tree with N=2^k-1 nodes"
    for levels in range(1, 9):
        assert ka.ka_levels(2**levels - 1, 2) == levels
    assert ka.ka_levels(16, 2) == 5 and ka.ka_levels(201, 2) == 8
    assert ka.ka_steps(16) == 4 and ka.ka_steps(201) == 8
    assert ka.ka_p2p(d, L) == d + L


@pytest.mark.parametrize("algorithm,formula", [
    ("chain", lambda d, L, n: ka.ka_chain(d, L, n)),
    ("tree", lambda d, L, n: ka.ka_tree(d, L, n, 2)),
    ("binomial", lambda d, L, n: ka.ka_binomial(d, L, n)),
])
@pytest.mark.parametrize("nodes", [4, 16, 201])
@pytest.mark.parametrize("size", [1e6, 64e6, 3e9])
def test_our_model_with_kas_parameters_reproduces_kas_lines(
        algorithm: str, formula: Callable[[float, float, int], float], nodes: int,
        size: float) -> None:
    """Ka's set-up as our start-up, α = 0, a byte-stream-sized chunk: Ka's formula plus
    our fill, a few kilobytes' worth, so within 1 % from 1 MB up."""
    ours = ka.ours_as_ka(algorithm, size, nodes, ka.KA_D, B)
    assert ours == pytest.approx(formula(ka.KA_D, size / B, nodes), rel=0.01)


@pytest.mark.parametrize("nodes", [16, 201])
def test_kas_mixed_chain_is_our_chain_with_the_launcher_as_startup(nodes: int) -> None:
    size = 100e6
    params = Parameters(latency=0.0, bandwidth=B, startup=ka.KA_LAUNCH_200)
    ours = predict("chain", int(size), nodes, 4096, params)
    assert ours == pytest.approx(ka.ka_mixed(ka.KA_LAUNCH_200, size / B, 0.0, nodes), rel=0.01)


def test_large_files_cost_fan_out_times_one_copy_in_both_models() -> None:
    """Binomial k×, binary 2×, chain 1× one copy as L grows: the agreement the report
    leans on.  Ours pays α on each chunk, which one whole-file copy does not: the
    fan-out times ``1 + α·B/c`` (1.9 % for 64 KiB at 100 Mbit/s, α = 100 µs)."""
    size = 64e9
    per_chunk = 1 + ka.KA_D_PRIME * B / ka.OUR_CHUNK
    for nodes in (8, 16):
        L = size / B
        assert ka.ka_binomial(ka.KA_D, L, nodes) / L == pytest.approx(ka.ka_steps(nodes), rel=1e-3)
        assert ka.ka_tree(ka.KA_D, L, nodes) / L == pytest.approx(2.0, rel=1e-3)
        assert ka.ours_on_ka_ratio("binomial", size, nodes) == pytest.approx(
            ka.ka_steps(nodes) * per_chunk, rel=1e-3)
        assert ka.ours_on_ka_ratio("tree", size, nodes) == pytest.approx(2 * per_chunk, rel=1e-3)
        assert ka.ours_on_ka_ratio("chain", size, nodes) == pytest.approx(per_chunk, rel=1e-3)


def test_crossover_moves_down_by_the_ratio_of_hop_costs() -> None:
    """Ka's binary tree beats its chain below ~9 MB at 16 nodes and ~230 MB at 201 (d =
    0.1 s); ours (a 64 KiB chunk per hop) an order of magnitude lower, still growing
    with N."""
    ka16 = ka.crossover(lambda s: ka.ka_tree(ka.KA_D, s / B, 16),
                        lambda s: ka.ka_chain(ka.KA_D, s / B, 16))
    ka201 = ka.crossover(lambda s: ka.ka_tree(ka.KA_D, s / B, 201),
                         lambda s: ka.ka_chain(ka.KA_D, s / B, 201))
    # (d(k-1) + L)·2 = d(N-1) + L  ⇔  L = d(N-1) - 2d(k-1)
    assert ka16 == pytest.approx((ka.KA_D * 15 - 2 * ka.KA_D * 4) * B, rel=1e-6)
    assert ka201 == pytest.approx((ka.KA_D * 200 - 2 * ka.KA_D * 7) * B, rel=1e-6)
    ours16 = ka.crossover(lambda s: ka.ours_on_ka("tree", s, 16),
                          lambda s: ka.ours_on_ka("chain", s, 16))
    ours201 = ka.crossover(lambda s: ka.ours_on_ka("tree", s, 201),
                           lambda s: ka.ours_on_ka("chain", s, 201))
    assert ours16 is not None and ours201 is not None
    assert ours16 < ka16 / 5 and ours201 < ka201 / 5 and ours16 < ours201


def test_crossover_none_when_order_never_changes() -> None:
    assert ka.crossover(lambda s: s, lambda s: 2 * s) is None


@pytest.mark.skipif(not SWEEP.exists(), reason="no committed sweep")
def test_script_writes_its_plots_and_text(tmp_path: Path) -> None:
    start = time.monotonic()
    written = ka.write_all(tmp_path, SWEEP)
    assert time.monotonic() - start < 30
    names = {p.name for p in written}
    assert names == {"ka-sizes.png", "ka-nodes.png", "ka-ratio.png", "ka.md"}
    for path in written:
        assert path.parent == tmp_path and path.stat().st_size > 1000
    text = (tmp_path / "ka.md").read_text(encoding="utf-8")
    for name in ("ka-sizes.png", "ka-nodes.png", "ka-ratio.png"):
        assert f"]({name})" in text  # relative links, next to the text
    assert "nan" not in text.lower().replace("nano", "")
    # inputs cited relative to the repository, never by this machine's absolute path
    assert str(ROOT.parent) not in text and "../shared/seeds/" in text
    for heading in ("**Chain.**", "**Binary tree.**", "**Binomial.**", "**Multicast.**"):
        assert heading in text


@pytest.mark.skipif(not SWEEP.exists(), reason="no committed sweep")
def test_measured_ratios_are_read_against_the_p2p_run() -> None:
    runs = ka.load_sweep(SWEEP)
    ratios = ka.measured_ratios(runs)
    p2p = {r["size"]: r["seconds"] for r in runs if r["method"] == "p2p"}
    assert p2p and "chain" in ratios
    for (nodes, size), (ratio, chunk) in ratios["chain"].items():
        best = min(r["seconds"] for r in runs if r["method"] == "mpistage"
                   and r["algorithm"] == "chain" and r["nodes"] == nodes and r["size"] == size)
        assert ratio == pytest.approx(best / p2p[size])
    numbers = ka.comparison(runs, ka.fitted(runs))
    assert not any(math.isnan(v) for v in numbers.values())


def test_main_reports_a_missing_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["ka.py", "--out", str(tmp_path),
                                      "--results", str(tmp_path / "missing.h5")])
    assert ka.main() == 1
    assert "bench/ka.py:" in capsys.readouterr().err
