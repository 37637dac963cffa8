"""The cost model against hand-computed values, the choice, and the fit."""

import math
from dataclasses import replace
from pathlib import Path

import pytest

from mpistage.engine import bcast_model
from mpistage.engine.codec import CodecCost
from mpistage.engine.pipeline import DEFAULT_DEPTH
from mpistage.model import (ASSUMED_CPU_RATE, ENGINE_OVERHEAD, Parameters, _step_terms, bound,
                            ka_terms, predict, shape)
from mpistage.model.choice import chain_optimal_chunk, choose, optimal_chunk
from mpistage.model.cores import last_level_cache, placement_of, share_of
from mpistage.model.cpu_rate import per_end_rate
from mpistage.model.decide import with_cpu
from mpistage.model.fit import Sample, fit
from mpistage.staging.engine_cost import fit_engine

P = Parameters(latency=0.001, bandwidth=1e6, startup=0.5)  # 1 ms per message, 1 MB/s
S, C = 1_000_000, 100_000  # 10 chunks, one hop = 0.001 + 0.1 = 0.101 s


@pytest.mark.parametrize("algorithm, nodes, arity, expected", [
    # I + (m − 1)·f·hop + F·hop
    ("chain", 4, 2, 0.5 + 9 * 0.101 + 3 * 0.101),          # 1.712
    # Children are sent to in turn, largest subtree first: the i-th child has the first
    # chunk i + 1 hops after its parent.
    ("binomial", 8, 2, 0.5 + 9 * 3 * 0.101 + 3 * 0.101),   # fill log2 8 (0→4→6→7)
    ("tree", 8, 2, 0.5 + 9 * 2 * 0.101 + 4 * 0.101),       # fill 2 + 2 (0→2→6)
    ("tree", 13, 3, 0.5 + 9 * 3 * 0.101 + 6 * 0.101),      # fill 3 + 3 (0→3→12)
    ("flat", 4, 2, 0.5 + 9 * 3 * 0.101 + 3 * 0.101),       # 3.53
    # MPICH's Ibcast below 8 ranks: a binomial tree whose sends share the sender's link;
    # the first chunk: 2 hops, 3 chunks' bytes on its path (0 → {1, 2} → 3); then the
    # root's 2 copies per chunk, each a message
    ("bcast", 4, 2, 0.5 + (2 * 0.001 + 3 * 0.1) + 9 * 2 * 0.101),
])
def test_predictions_by_hand(algorithm: str, nodes: int, arity: int, expected: float) -> None:
    assert predict(algorithm, S, nodes, C, P, arity) == pytest.approx(expected)


def test_bcast_is_what_mpich_runs() -> None:
    """MPICH 5.0.2's selection (its tuning JSON): binomial below 8 ranks or 12 KiB,
    scatter + recursive doubling on powers of two below 512 KiB, else scatter + ring."""
    assert [bcast_model.algorithm(c, n) for c, n in [
        (64 << 20, 4), (8 << 10, 16), (256 << 10, 8), (256 << 10, 12), (512 << 10, 16)]] == [
        "binomial", "binomial", "scatter_rd", "scatter_ring", "scatter_ring"]
    # one chunk of 1 MB to 8 ranks, scatter + ring: (3 + 7) messages, 2.5 c on the path
    assert predict("bcast", S, 8, S, P) == pytest.approx(0.5 + 10 * 0.001 + 2.5 * 1.0)
    # a stream steps at the root's bytes: 2·(N−1)/N·c, or ⌈log2 N⌉·c in the tree
    assert bcast_model.step_bytes(1 << 20, 16) == pytest.approx(2 * 15 / 16 * (1 << 20))
    assert bcast_model.step_bytes(1 << 20, 5) == 3 * (1 << 20)
    # in as many messages as the root sends: its scatter's, one per allgather round
    assert [bcast_model.step_messages(c, n) for c, n in [
        (64 << 20, 4), (256 << 10, 8), (256 << 10, 12), (1 << 20, 16)]] == [2, 6, 4 + 11, 4 + 15]
    assert bcast_model.binomial_path(8) == (3, 6)
    assert bcast_model.IN_FLIGHT == DEFAULT_DEPTH


def test_slow_disk_bounds_the_pipeline() -> None:
    slow_read = Parameters(latency=0.001, bandwidth=1e6, read_bandwidth=50_000, startup=0.5)
    # each step takes c/R = 2 s instead of 0.101 s; one more read/write for the first chunk
    assert predict("chain", S, 4, C, slow_read) == pytest.approx(0.5 + 9 * 2 + 3 * 0.101 + 2)
    assert predict("chain", S, 1, C, slow_read) == pytest.approx(0.5 + 10 * 2)


def test_edge_cases() -> None:
    assert predict("chain", 0, 8, C, P) == 0.5
    assert predict("chain", 10, 8, C, P) == pytest.approx(0.5 + 7 * (0.001 + 10 / 1e6))
    with pytest.raises(ValueError, match="unknown algorithm"):
        predict("spiral", S, 4, C, P)
    assert shape("binomial", 5, 2) == (3, 3) and shape("flat", 1) == (0, 0)
    assert [shape("binomial", n)[1] for n in (2, 3, 4, 8, 9, 16, 17)] == [1, 2, 2, 3, 4, 4, 5]
    assert shape("binomial", 16) == (4, 4) and shape("tree", 4) == (2, 2)


def test_the_chain_tends_to_ka_as_chunks_shrink() -> None:
    """Ka's t′ = I + L + d′·(N−1): our chain with small chunks, plus α per chunk."""
    ka = ka_terms(P, S)
    t = predict("chain", S, 16, 1000, P)
    chunks = S // 1000
    assert t == pytest.approx(ka["I"] + ka["L"] + (16 - 2) * (0.001 + 0.001) + chunks * ka["d"])


def test_optimal_chunk_matches_the_closed_form() -> None:
    p = Parameters(latency=50e-6, bandwidth=12e6)
    size, nodes = 64 << 20, 8
    closed = chain_optimal_chunk(size, nodes, p)  # ≈ 0.89 MiB
    best = optimal_chunk("chain", size, nodes, p)
    assert closed / 2 <= best <= closed * 2
    assert predict("chain", size, nodes, best, p) <= predict("chain", size, nodes, 64 << 20, p)


def test_choice_follows_the_regimes() -> None:
    link = Parameters(latency=100e-6, bandwidth=12e6)
    big = choose(64 << 20, 8, link)
    assert set(big.predictions) == {"chain", "binomial", "tree", "twotree", "flat", "bcast"}
    # both at full bandwidth: the two trees' shorter fill (5 hops to 8 nodes, the
    # chain's 7) wins by a hair, a tie (TIE) that goes to the chain, listed first
    assert big.algorithm == "chain"
    assert big.predictions["twotree"][1] < big.predicted < big.predictions["twotree"][1] * 1.01
    assert choose(64 << 20, 1024, link).algorithm == "twotree", "by far at scale"
    assert big.predicted <= min(t for _, t in big.predictions.values()) * 1.03
    two = choose(64 << 20, 2, link, algorithms=("chain", "flat"))
    assert two.algorithm == "chain", "equal predictions: the first listed wins"
    fixed = choose(1 << 20, 8, link, chunk_size=4096)
    assert all(c == 4096 for c, _ in fixed.predictions.values())


def test_fit_recovers_known_parameters_from_synthetic_runs() -> None:
    truth = Parameters(latency=250e-6, bandwidth=11.5e6)
    samples = [Sample(a, size, n, chunk, predict(a, size, n, chunk, truth))
               for a in ("chain", "binomial", "bcast", "flat")
               for size in (1 << 20, 16 << 20, 64 << 20)
               for n in (2, 4, 8)
               for chunk in (256 << 10, 1 << 20)]
    got = fit(samples)
    assert got.latency == pytest.approx(truth.latency, rel=1e-6)
    assert got.bandwidth == pytest.approx(truth.bandwidth, rel=1e-6)
    noisy = [Sample(s.algorithm, s.size, s.nodes, s.chunk, s.seconds * (1.03 if i % 2 else 0.97))
             for i, s in enumerate(samples)]
    assert fit(noisy).bandwidth == pytest.approx(truth.bandwidth, rel=0.05)
    known = fit(noisy, latency=truth.latency)
    assert known.latency == truth.latency
    assert known.bandwidth == pytest.approx(truth.bandwidth, rel=0.03)
    # a few runs 60 % slower than the model (CPU-bound, say): the robust fit shrugs
    outliers = samples + [Sample(s.algorithm, s.size, s.nodes, s.chunk, s.seconds * 1.6)
                          for s in samples[-8:]]
    robust, plain = fit(outliers), fit(outliers, huber=None)
    assert abs(robust.bandwidth / truth.bandwidth - 1) < abs(plain.bandwidth / truth.bandwidth - 1)
    assert robust.bandwidth == pytest.approx(truth.bandwidth, rel=0.05)


def test_fit_needs_enough_runs() -> None:
    with pytest.raises(ValueError, match="at least two"):
        fit([Sample("chain", 1 << 20, 4, 1 << 20, 1.0)])


def test_parameters_round_trip_with_infinities(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    p = Parameters(latency=1e-4, bandwidth=1e8)
    assert p.to_dict()["read_bandwidth"] is None
    assert Parameters.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"schema": "mpistage.staging.calibration/1", "parameters": p.to_dict()}))
    assert Parameters.load(path) == p
    path.write_text("{}")
    with pytest.raises(ValueError, match="not an mpistage calibration"):
        Parameters.load(path)
    assert math.isinf(Parameters(1, 1).read_bandwidth)


def test_link_fit_recovers_a_clean_link_and_never_returns_zero_or_infinity() -> None:
    """fit_link: exact on noiseless samples; on samples where noise hides the size term
    or the start-up term, positive and finite (direct readings, not a fitted 0 or ∞)."""
    from mpistage.staging.calibration import fit_link
    clean = [(s, 20e-6 + s / 1e9) for s in (1, 4096, 65536) for _ in range(2)]
    alpha, bandwidth = fit_link(clean)
    assert alpha == pytest.approx(20e-6) and bandwidth == pytest.approx(1e9)
    flat = [(1, 3e-3), (1, 2e-3), (4096, 1e-3), (4096, 2e-3), (65536, 1e-3), (65536, 1.5e-3)]
    assert fit_link(flat)[1] == pytest.approx(65536 / 1.25e-3)  # fitted 1/B < 0
    steep = [(4096, 1e-4), (4096, 1e-4), (65536, 1e-2), (65536, 1e-2)]
    alpha, bandwidth = fit_link(steep)  # fitted α < 0
    assert alpha == pytest.approx(1e-4) and bandwidth == pytest.approx(61440 / 9.9e-3)


def test_a_tree_pays_its_per_file_cost_only_where_writing_is_the_bottleneck() -> None:
    from dataclasses import replace

    slow_link = Parameters(latency=20e-6, bandwidth=12.5e6, write_bandwidth=1e9, file_cost=50e-6)
    files = 10_240  # 40 MiB in 4 KiB files, each followed by its 16-byte digest
    tree_size = (40 << 20) + 16 * files
    one = predict("chain", 40 << 20, 8, 1 << 20, slow_link)
    tree = predict("chain", tree_size, 8, 1 << 20, slow_link, files=files)
    assert 1.0 < tree / one < 1.03  # the link is the bottleneck: φ hides behind it
    fast_link = replace(slow_link, bandwidth=1.25e10)
    one = predict("chain", 40 << 20, 8, 1 << 20, fast_link)
    tree = predict("chain", tree_size, 8, 1 << 20, fast_link, files=files)
    assert tree - one == pytest.approx(files * 50e-6, rel=0.1)  # now φ is what it costs
    assert predict("chain", tree_size, 8, 1 << 20, replace(fast_link, file_cost=0.0),
                   files=files) < tree


# -- the CPU in the model -----------------------------------------------------------------

#: One host, 2 cores, MPICH's shared memory, as ``mpistage calibrate`` measured it (o
#: 110-160 µs per message end; a rank's copy and digest of a chunk at 1.0-1.5 GB/s, which
#: is two ends' per-byte work: 2.4 GB/s per end).
ONE_HOST = Parameters(latency=40e-6, bandwidth=4.5e9, read_bandwidth=1e9, write_bandwidth=1e9,
                      overhead=110e-6, cpu_rate=2.4e9)


def test_without_cpu_terms_the_model_is_the_wire_only_one() -> None:
    wire = Parameters(latency=100e-6, bandwidth=12.5e6)
    cpu_free = Parameters(latency=100e-6, bandwidth=12.5e6, overhead=0.0, share=4.0)
    for algorithm in ("chain", "binomial", "twotree", "bcast"):
        assert predict(algorithm, 64 << 20, 8, 1 << 16, wire) == predict(
            algorithm, 64 << 20, 8, 1 << 16, cpu_free)


def test_where_the_cpu_binds_small_chunks_cost_what_was_measured() -> None:
    """One host, 2 ranks, 1 GiB (measured: 64 KiB 2.4-3.1 s, 1 MiB 0.85-1.13 s): the
    wire-only model called the two the same; with the CPU, 64 KiB costs ~3× as much and
    the choice is a chunk of a MiB or more."""
    two = replace(ONE_HOST, share=1.0)
    small = predict("chain", 1 << 30, 2, 64 << 10, two)
    large = predict("chain", 1 << 30, 2, 1 << 20, two)
    assert 2.5 < small / large < 4 and 2.3 < small < 3.3 and 0.8 < large < 1.2
    assert bound("chain", 1 << 30, 2, 64 << 10, two) == "CPU"
    assert optimal_chunk("chain", 1 << 30, 2, two) >= 1 << 20


def test_ranks_sharing_cores_pay_for_every_message_end_on_them() -> None:
    """4 ranks on 2 cores: 6 message ends per chunk, and 4 ranks' copies and digests of
    it (two ends' bytes each), over 2 cores: per core 3 ends' o and 4 ends' bytes, where
    a relaying rank on a core of its own pays 2 of each (it receives and sends)."""
    alone, crowded = replace(ONE_HOST, share=0.0), replace(ONE_HOST, share=2.0)
    chunk = 4 << 20
    o, per_byte = ONE_HOST.overhead, chunk / ONE_HOST.cpu_rate
    assert _step_terms("chain", 64 << 20, 4, chunk, crowded, 2, 0, None)["CPU"] == \
        pytest.approx(3 * o + 4 * per_byte)
    assert _step_terms("chain", 64 << 20, 4, chunk, alone, 2, 0, None)["CPU"] == \
        pytest.approx(2 * o + 2 * per_byte)
    assert 2 * o + 2 * per_byte == pytest.approx(2 * ONE_HOST.message_cpu(chunk))
    steps = math.ceil((64 << 20) / chunk) - 1
    gap = predict("chain", 64 << 20, 4, chunk, crowded) - predict("chain", 64 << 20, 4, chunk, alone)
    alone_step = max(2 * o + 2 * per_byte, chunk / ONE_HOST.read_bandwidth)  # it reads at 1 GB/s
    assert gap == pytest.approx(steps * (3 * o + 4 * per_byte - alone_step), rel=1e-6)


def test_a_rank_with_one_message_end_still_copies_and_digests_the_chunk() -> None:
    """One host, 1 GiB to 2 ranks in 1 MiB chunks (measured: each rank 1.3-1.4 CPU-s,
    the whole 1.1-1.5 s): the root reads each chunk and the leaf writes it, each with one
    message end, so each pays two ends' bytes (the probe's end is half a copy through
    fresh pages and digest) and the transfer takes ~1 s, not the 0.6 s of one end."""
    two = replace(ONE_HOST, share=1.0)
    chunk = 1 << 20
    assert ONE_HOST.rank_cpu(1, chunk) == pytest.approx(ONE_HOST.overhead + 2 * chunk / ONE_HOST.cpu_rate)
    assert ONE_HOST.rank_cpu(3, chunk) == pytest.approx(3 * ONE_HOST.message_cpu(chunk))
    assert _step_terms("chain", 1 << 30, 2, chunk, two, 2, 0, None)["CPU"] == \
        pytest.approx(ONE_HOST.rank_cpu(1, chunk))
    assert 0.9 < predict("chain", 1 << 30, 2, chunk, two) < 1.2
    two, many = frozenset({0, 1}), frozenset(range(64))
    assert share_of([("boot-a", two)] * 4) == 2.0
    assert share_of([("boot-a", two)] * 3 + [("boot-b", many)] * 5) == 1.5
    pinned = [("boot-c", frozenset({core})) for core in range(4)]  # MPI binds a core each
    assert share_of(pinned) == 4 / 4
    assert share_of(pinned + [("boot-c", many)]) == 5 / 64


def test_the_last_level_cache_is_the_deepest_sysfs_lists(tmp_path: Path) -> None:
    for index, (level, size) in enumerate([(1, "32K"), (2, "1024K"), (3, "32768K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(f"{level}\n")
        (tmp_path / f"index{index}" / "size").write_text(f"{size}\n")
    assert last_level_cache(tmp_path) == 32 << 20
    assert last_level_cache(tmp_path / "none") is None


def test_an_auto_chunk_keeps_every_ranks_buffers_of_a_machine_in_its_cache() -> None:
    """One host, 2 ranks, depth 4, a 32 MiB L3: 4 MiB (measured fastest there, 16 MiB
    1.26x slower); 4 ranks: 2 MiB; hosts of their own, each with 1 rank: 8 MiB; the
    most crowded machine decides."""
    two, many = frozenset({0, 1}), frozenset(range(64))
    one_host = placement_of([("boot-a", two, 32 << 20)] * 2)
    assert (one_host.share, one_host.crowd, one_host.cache_chunk(4)) == (1.0, 2, 4 << 20)
    assert placement_of([("boot-a", two, 32 << 20)] * 4).cache_chunk(4) == 2 << 20
    hosts = placement_of([(f"boot-{i}", many, 32 << 20) for i in range(8)])
    assert hosts.cache_chunk(4) == 8 << 20
    mixed = placement_of([("boot-a", two, 32 << 20)] * 4 + [("boot-b", many, 8 << 20)])
    assert (mixed.crowd, mixed.cache) == (4, 32 << 20)
    assert placement_of([("boot-a", two, None)] * 2).cache_chunk(4) is None


def test_a_slow_link_stays_link_bound_and_keeps_small_chunks() -> None:
    """8 emulated hosts at 100 Mbit/s on 2 cores (4 ranks per core): a 64 KiB chunk's
    CPU (7 message ends per core) is below its 5 ms on the wire, so the chunk stays small
    (measured best: 64 KiB 5.67 s, 256 KiB 5.81 s, 1 MiB 6.10 s)."""
    link = Parameters(latency=150e-6, bandwidth=11.8e6, read_bandwidth=1e9, write_bandwidth=1e9,
                      overhead=110e-6, cpu_rate=1.2e9, share=4.0)
    assert bound("chain", 64 << 20, 8, 64 << 10, link) == "link"
    assert optimal_chunk("chain", 64 << 20, 8, link) <= 256 << 10


def test_the_engine_fit_finds_its_overhead_and_rate() -> None:
    """A chain of 4 ranks at two chunk sizes: the root and the leaf one message end per
    chunk, the two relays two, and every rank two ends' bytes."""
    overhead, rate, size = 110e-6, 2.4e9, 256 << 20
    runs = [(m, e, m * e * overhead + max(e, 2) * size / rate)
            for m in (4096, 256) for e in (1, 2, 2, 1)]
    fitted = fit_engine(runs, size)
    assert fitted[0] == pytest.approx(overhead) and fitted[1] == pytest.approx(rate)
    assert fit_engine([(16, 1, 0.001), (1, 1, 0.002)], 1 << 20)[0] == 0.0, "noise never makes o < 0"


def test_a_probe_measured_overhead_adds_the_engines_own() -> None:
    probed = with_cpu(Parameters(1e-5, 1e9, overhead=4e-6), 2.0, measured=True)
    assert probed.overhead == pytest.approx(ENGINE_OVERHEAD + 4e-6) and probed.share == 2.0
    assert probed.cpu_rate == ASSUMED_CPU_RATE
    calibrated = with_cpu(Parameters(1e-5, 1e9, overhead=2e-4, cpu_rate=9e8), 0.5, measured=False)
    assert (calibrated.overhead, calibrated.cpu_rate, calibrated.share) == (2e-4, 9e8, 0.5)


def test_the_per_byte_rate_is_half_a_fresh_copy_a_warm_copy_and_half_a_digest() -> None:
    """A relaying rank's chunk costs one write into fresh pages, two of MPI's copies and
    one digest, over its two message ends; the fastest probe counts."""
    ticks = iter([0.0, 4.0, 5.0, 7.0,    # fresh 4, warm 1, digest 2 -> 2 + 1 + 1 = 4
                  10.0, 12.0, 13.0, 13.0])  # fresh 2, warm 1, digest 0 -> 1 + 1 + 0 = 2
    assert per_end_rate(1 << 20, probes=2, clock=lambda: next(ticks)) == (1 << 20) / 2
    measured = per_end_rate(1 << 20, probes=1)
    assert 1e7 < measured < 1e12, "a real probe gives some bytes/s, not zero or infinity"


def test_a_probed_per_byte_rate_is_kept_and_the_constant_is_only_a_fallback() -> None:
    probed = with_cpu(Parameters(1e-5, 1e9, overhead=4e-6, cpu_rate=2.8e9), 2.0, measured=True)
    assert probed.cpu_rate == 2.8e9


def test_ranks_sharing_cores_share_the_codecs_cpu_too() -> None:
    """8 emulated hosts on 2 cores with zstd: every node's decoding and the root's
    encoding come out of the same two cores as the messages (measured: 7.3 CPU-s for a
    3.4 s run, both cores busy), so the crowded step pays for them and larger chunks,
    fewer messages, win."""
    zstd = CodecCost("zstd:3", ratio=0.25, encode_rate=2 * 127e6, decode_rate=800e6,
                     encode_threads=2)
    crowded = Parameters(latency=150e-6, bandwidth=11.8e6, read_bandwidth=1.5e9,
                         write_bandwidth=1.5e9, overhead=145e-6, cpu_rate=1.2e9, share=4.0)
    chunk = 128 << 10
    per_rank = (7 * chunk / zstd.decode_rate + chunk * 2 / zstd.encode_rate) / 8
    wire = chunk * zstd.ratio  # 14 message ends and 8 ranks' copies and digests, 4 ranks a core
    plain = 4 * (14 * crowded.overhead + 16 * wire / crowded.cpu_rate) / 8
    assert _step_terms("chain", 64 << 20, 8, chunk, crowded, 2, 0, zstd)["CPU"] == \
        pytest.approx(plain + 4 * per_rank)
    alone = replace(crowded, share=0.0)
    assert _step_terms("chain", 64 << 20, 8, chunk, alone, 2, 0, zstd)["CPU"] == \
        pytest.approx(2 * alone.message_cpu(chunk * zstd.ratio)), "a core each: no sharing"


def test_a_flat_link_bound_optimum_goes_to_the_largest_chunk_within_the_tie() -> None:
    """Link-bound (8 hosts at 100 Mbit/s, 64 MiB): 64 KiB-256 KiB predicted within 1 %, so
    the larger chunk (fewer messages, a choice the probe's noise does not flip); CPU-bound
    (one host, 1 GiB): the fastest, as the CPU term prices each message already."""
    from mpistage.model import bound, predict
    from mpistage.model.choice import CHUNK_CHOICES, CHUNK_TIE

    link = Parameters(latency=112e-6, bandwidth=12.3 * 2**20, read_bandwidth=1.4 * 2**30,
                      write_bandwidth=1.4 * 2**30, overhead=166e-6, cpu_rate=1.1 * 2**30,
                      share=4)
    size, nodes = 64 << 20, 8
    times = {c: predict("chain", size, nodes, c, link) for c in CHUNK_CHOICES}
    fastest = min(times, key=lambda c: (times[c], -c))
    chosen = optimal_chunk("chain", size, nodes, link)
    assert bound("chain", size, nodes, fastest, link) == "link"
    assert chosen > fastest and times[chosen] <= times[fastest] * (1 + CHUNK_TIE)
    assert all(times[c] > times[fastest] * (1 + CHUNK_TIE) for c in CHUNK_CHOICES if c > chosen)

    cpu = replace(link, latency=40e-6, bandwidth=4.8 * 2**30, share=1)
    times = {c: predict("chain", 1 << 30, 2, c, cpu) for c in CHUNK_CHOICES}
    fastest = min(times, key=lambda c: (times[c], -c))
    assert any(times[c] <= times[fastest] * (1 + CHUNK_TIE) for c in CHUNK_CHOICES
               if c > fastest), "a larger chunk within the tie, which the rule must not take"
    assert bound("chain", 1 << 30, 2, optimal_chunk("chain", 1 << 30, 2, cpu), cpu) == "CPU"
    assert optimal_chunk("chain", 1 << 30, 2, cpu) == min(times, key=lambda c: (times[c], -c))
