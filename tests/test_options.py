"""The options of a run: defaults, the memory budget and where a calibration comes from."""

from __future__ import annotations

import pytest

from mpistage.errors import UsageError
from mpistage.model import ROOT_READ, Parameters
from mpistage.model.choice import BRACKET, choice_is_settled, choose
from mpistage.staging.options import CALIBRATION_ENV, DEFAULT_MEMORY, StageOptions


def test_defaults_are_the_models_choice_within_the_budget() -> None:
    options = StageOptions()
    assert options.auto_algorithm and options.auto_chunk
    assert options.max_auto_chunk * options.depth <= DEFAULT_MEMORY


@pytest.mark.parametrize("chunk, depth, memory, buffers", [
    (1 << 20, 4, 64 << 20, 4),     # fits
    (16 << 20, 4, 64 << 20, 4),    # exactly fits
    (32 << 20, 4, 64 << 20, 2),    # depth shrinks to what fits
    (1 << 20, 8, 3 << 20, 3),
    (100, 64, 64 << 20, 64),       # tiny chunks: depth as asked
])
def test_buffers_never_exceed_the_budget(chunk: int, depth: int, memory: int, buffers: int) -> None:
    options = StageOptions(chunk_size=chunk, depth=depth, memory=memory)
    options.check(2)
    assert options.buffers(chunk) == buffers
    assert buffers * chunk <= memory


def test_a_chunk_of_which_two_do_not_fit_is_refused() -> None:
    with pytest.raises(UsageError, match="memory budget"):
        StageOptions(chunk_size=40 << 20).check(2)
    with pytest.raises(UsageError, match="invalid memory budget"):
        StageOptions(memory=1000).check(2)


def test_auto_chunks_stay_below_the_cap_whatever_the_link() -> None:
    for params in BRACKET:
        for size in (1, 1 << 20, 1 << 30, 8 << 30):
            choice = choose(size, 16, params, max_chunk=16 << 20)
            assert all(c <= 16 << 20 for c, _ in choice.predictions.values())
    # Without a cap, 8 GiB at 8 nodes over a slow link would take the largest chunk offered.
    slow = BRACKET[0]
    assert choose(8 << 30, 2, slow).chunk_size == 64 << 20
    assert choose(8 << 30, 2, slow, max_chunk=16 << 20).chunk_size == 16 << 20


def test_settled_means_every_bracketed_link_picks_the_same() -> None:
    # One chunk: the schedule with the fewest hops wins on any link...
    assert choice_is_settled(1, 16) and choice_is_settled(60_000, 6)
    ours = ("chain", "binomial", "tree", "twotree", "flat")
    assert choice_is_settled(60_000, 64, algorithms=ours)
    # ... except MPI's own broadcast from 8 ranks on, whose scatter carries fewer bytes on
    # the longest path than our binomial tree and wins where bytes cost more than hops
    assert not choice_is_settled(60_000, 64)
    # A large file's best chunk depends on latency × bandwidth: it must be measured.
    assert not choice_is_settled(64 << 20, 8, max_chunk=16 << 20)
    # Everything fixed by the user: nothing to choose.
    assert choice_is_settled(64 << 20, 8, algorithms=("chain",), chunk_size=1 << 20)
    for size in (1, 1000, 60_000):
        picks = {(c.algorithm, c.chunk_size) for c in
                 (choose(size, 8, p, algorithms=ROOT_READ) for p in BRACKET)}
        assert len(picks) == 1


def test_calibration_comes_from_the_option_then_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    params = Parameters(latency=1e-5, bandwidth=1e9)
    path = tmp_path / "cal.json"
    path.write_text('{"schema": "mpistage.staging.calibration/1", "parameters": '
                    '{"latency": 1e-05, "bandwidth": 1000000000.0}}')
    monkeypatch.delenv(CALIBRATION_ENV, raising=False)
    assert StageOptions().load_calibration() is None
    monkeypatch.setenv(CALIBRATION_ENV, str(path))
    assert StageOptions().load_calibration() == params
    assert StageOptions(calibration=Parameters(latency=1.0, bandwidth=1.0)).load_calibration() \
        == Parameters(latency=1.0, bandwidth=1.0)
    monkeypatch.setenv(CALIBRATION_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="cannot use calibration"):
        StageOptions().load_calibration()
