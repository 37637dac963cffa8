"""Streams, frames, codecs and the model's compression terms: pure logic, no MPI."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpistage.engine import codec
from mpistage.engine.codec import CodecCost
from mpistage.engine.frames import HEADER, LAST, Bare, Framed, decode, framing_for
from mpistage.errors import UsageError
from mpistage.model import Parameters, predict
from mpistage.model.choice import choose
from mpistage.plan import Plan, SourceInfo, resolve_dest
from mpistage.sources.sampling import PIECE, codec_costs, sample_file, sample_stream
from mpistage.sources.streams import StreamInput, describe_stream
from mpistage.staging.options import StageOptions

SLOW = Parameters(latency=100e-6, bandwidth=12.5e6)  # 100 Mbit/s
FAST = Parameters(latency=2e-6, bandwidth=12.5e9)    # 100 Gbit/s


def plan(size: int, chunk: int, *, stream: bool = False, codec_name: str = "none") -> Plan:
    info = SourceInfo(source="-" if stream else "/x", size=size, mode=0o644, mtime_ns=0,
                      dest="/d", stream=stream)
    return Plan.of(info, chunk_size=chunk, algorithm="chain", codec=codec_name)


def words(size: int) -> bytes:
    return b"".join(b"%d,word%d,%d\n" % (i, i % 97, i * 7 % 1000) for i in range(size))[:size]


# -- frames -------------------------------------------------------------------------------

def test_a_file_sent_as_it_is_needs_no_frames():
    framing = framing_for(plan(100, 30))
    assert isinstance(framing, Bare) and framing.chunk_count() == 4
    assert isinstance(framing_for(plan(100, 30, stream=True)), Framed)
    assert isinstance(framing_for(plan(100, 30, codec_name="lz4")), Framed)


@pytest.mark.parametrize("codec_name", ["none", "lz4", "zstd:3"])
@given(data=st.binary(max_size=300), last=st.booleans())
@settings(max_examples=60, deadline=None)
def test_a_sealed_frame_reads_back_as_its_bytes(codec_name, data, last):
    chunk = 300
    framing = framing_for(plan(0, chunk, stream=True, codec_name=codec_name))
    buffer = memoryview(bytearray(framing.capacity))
    space = framing.read_space(buffer, 0)
    space[: len(data)] = data
    framing.seal(buffer, 0, len(data), last, codec.make(codec_name))
    message = bytes(framing.message(buffer, 0))
    assert len(message) <= HEADER.size + len(data)  # never more than the bytes themselves
    received = memoryview(bytearray(framing.capacity))  # as a node receives it
    received[: len(message)] = message
    assert framing.is_last(received, 0) == last
    assert framing.raw_length(received, 0) == len(data)
    assert bytes(decode(framing, codec.make(codec_name), received, 0)) == data


def test_compressible_chunks_travel_smaller_and_incompressible_as_they_are():
    framing = framing_for(plan(0, 1 << 16, stream=True, codec_name="zstd:3"))
    zstd = codec.make("zstd:3")
    for data, smaller in ((words(1 << 16), True), (os.urandom(1 << 16), False)):
        buffer = memoryview(bytearray(framing.capacity))
        framing.read_space(buffer, 0)[:] = data
        framing.seal(buffer, 0, len(data), False, zstd)
        assert (len(framing.message(buffer, 0)) < len(data) / 2) == smaller
        assert bytes(decode(framing, codec.make("zstd:3"), buffer, 0)) == data


def test_a_damaged_header_or_encoding_is_an_error():
    framing = framing_for(plan(0, 64, stream=True, codec_name="zstd:3"))
    buffer = memoryview(bytearray(framing.capacity))
    HEADER.pack_into(buffer, 0, 10_000, 64, LAST)
    with pytest.raises(ValueError, match="damaged"):
        framing.message(buffer, 0)
    HEADER.pack_into(buffer, 0, 8, 64, 2)  # "encoded", but garbage
    buffer[HEADER.size: HEADER.size + 8] = b"garbage!"
    with pytest.raises(ValueError, match="zstd"):
        decode(framing, codec.make("zstd:3"), buffer, 0)


# -- codecs -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, canonical", [("none", "none"), ("auto", "auto"), ("zstd", "zstd:3"),
                                             ("zstd:19", "zstd:19"), ("zstd:-5", "zstd:-5"),
                                             ("lz4", "lz4")])
def test_codec_names(name, canonical):
    assert codec.check(name) == canonical


@pytest.mark.parametrize("name", ["gzip", "zstd:99", "zstd:x", "lz4:1", ""])
def test_bad_codec_names_are_refused(name):
    with pytest.raises(UsageError):
        codec.check(name)


def test_measured_costs_tell_text_from_noise():
    text, noise = codec_costs("auto", [words(PIECE)]), codec_costs("auto", [os.urandom(PIECE)])
    assert text[0] is None and noise[0] is None  # sending as is is always weighed
    assert {c.name for c in text[1:]} == {"lz4", "zstd:1", "zstd:3"}
    assert all(c.ratio < 0.7 for c in text[1:])
    assert all(0.99 <= c.ratio <= 1.0 for c in noise[1:])  # a chunk never grows on the wire
    assert all(c.encode_rate > 0 and c.decode_rate > 0 for c in text[1:] + noise[1:])


# -- the model ----------------------------------------------------------------------------

ZSTD = CodecCost("zstd:3", ratio=0.3, encode_rate=300e6, decode_rate=1e9)
NOTHING = CodecCost("zstd:3", ratio=1.0, encode_rate=300e6, decode_rate=1e9)


def test_compression_shrinks_a_slow_links_time_by_its_ratio():
    size, chunk = 64 << 20, 1 << 20
    plain = predict("chain", size, 8, chunk, SLOW)
    packed = predict("chain", size, 8, chunk, SLOW, codec=ZSTD)
    assert packed == pytest.approx(plain * 0.3, rel=0.05)


def test_compression_costs_time_where_it_does_not_shrink_or_the_link_is_fast():
    size, chunk = 64 << 20, 1 << 20
    assert predict("chain", size, 8, chunk, SLOW, codec=NOTHING) > predict("chain", size, 8, chunk, SLOW)
    assert predict("chain", size, 8, chunk, FAST, codec=ZSTD) > predict("chain", size, 8, chunk, FAST)


def test_the_choice_weighs_codecs_and_keeps_broadcast_for_plain_chunks():
    size = 64 << 20
    assert choose(size, 8, SLOW, codecs=(None, ZSTD)).codec == "zstd:3"
    assert choose(size, 8, SLOW, codecs=(None, NOTHING)).codec == "none"
    assert choose(size, 8, FAST, codecs=(None, ZSTD)).codec == "none"
    only = choose(size, 8, SLOW, algorithms=("bcast", "chain"), codecs=(ZSTD,))
    assert set(only.predictions) == {"chain"} and only.codecs == {"zstd:3": only.predicted}
    with pytest.raises(ValueError, match="encoded"):
        choose(size, 8, SLOW, algorithms=("bcast",), codecs=(ZSTD,))


def test_random_bytes_travel_as_they_are_even_where_plain_chunks_keep_a_tied_schedule():
    # 3 hosts at 1 Gbit/s, 64 MiB: plain chunks take the largest chunk within CHUNK_TIE
    # of the fastest (2 MiB), while a codec's coding time makes the step bound by more
    # than the link, so it takes its fastest (1 MiB, ~1 % faster); a codec that shrinks
    # nothing but codes fast was then chosen for that 1 % (bench/streams.py --small, CI)
    link = Parameters(latency=100e-6, bandwidth=125e6)
    free = CodecCost("zstd:1", ratio=1.0, encode_rate=2e9, decode_rate=5e9)
    plain = choose(64 << 20, 3, link)
    assert predict("chain", 64 << 20, 3, 1 << 20, link) < plain.predicted  # the tie
    chosen = choose(64 << 20, 3, link, codecs=(None, free))
    assert chosen.codec == "none" and chosen.algorithm == plain.algorithm
    assert choose(64 << 20, 3, link, codecs=(None, ZSTD)).codec == "zstd:3"  # ratio 0.3 wins


# -- streams, options, destinations ----------------------------------------------------------

def test_a_peeked_stream_gives_its_bytes_again_then_the_rest():
    data = os.urandom(3 * PIECE + 5)
    stream = StreamInput(io.BytesIO(data))
    assert b"".join(sample_stream(stream)) == data  # the whole of a short stream
    out = bytearray(len(data) + 10)
    view = memoryview(out)
    got = stream.readinto(view[:1000]) + stream.readinto(view[1000:])
    assert got == len(data) and bytes(out[:got]) == data


def test_a_files_sample_spreads_over_it(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * (40 * PIECE // 256))
    pieces = sample_file(str(path), path.stat().st_size)
    assert len(pieces) == 8 and all(len(p) == PIECE for p in pieces)
    assert sample_file(str(path), 0) == []


def test_a_stream_has_no_name_for_a_directory_dest(tmp_path):
    info = describe_stream(str(tmp_path), None)
    assert info.stream and info.source_name == "" and info.size == 0
    with pytest.raises(UsageError, match="standard input has no name"):
        resolve_dest(str(tmp_path), info.source_name, node=0, host="h", rank=0)


@pytest.mark.parametrize("options, message", [
    (dict(algorithm="bcast", compress="zstd:3"), "--compress needs a point-to-point"),
    (dict(algorithm="bcast", stream=True), "standard input needs a point-to-point"),
    (dict(expect_size=10), "--expect-size goes with -"),
    (dict(pipe="cat", verify=True, fsync=True), "--verify, --fsync mean nothing with --pipe"),
])
def test_what_streams_pipes_and_codecs_cannot_go_with(options, message):
    with pytest.raises(UsageError, match=message):
        StageOptions(**options).check(4)
