import os
from pathlib import Path

import pytest

from mpistage.errors import UsageError
from mpistage.plan import Plan, check_chunk_size, check_template, make_plan, resolve_dest


def plan_of(size: int, chunk: int) -> Plan:
    return Plan(source="/x/src", size=size, mode=0o644, mtime_ns=0, chunk_size=chunk,
                algorithm="chain", dest="/d")


@pytest.mark.parametrize("size, chunk, nchunks", [(0, 4, 0), (1, 4, 1), (3, 4, 1), (4, 4, 1),
                                                  (5, 4, 2), (8, 4, 2), (9, 4, 3)])
def test_chunk_count(size: int, chunk: int, nchunks: int) -> None:
    assert plan_of(size, chunk).nchunks == nchunks


def test_chunks_of_a_file_over_4_gib_cover_it_exactly() -> None:
    size = (5 << 30) + 12345  # past 2**31 and 2**32: no 32-bit arithmetic anywhere
    plan = plan_of(size, 64 << 20)
    lengths = [plan.chunk_length(k) for k in range(plan.nchunks)]
    assert sum(lengths) == size
    assert lengths[-1] == 12345
    assert (plan.nchunks - 1) * plan.chunk_size > 1 << 32
    with pytest.raises(IndexError):
        plan.chunk_length(plan.nchunks)


def test_make_plan_describes_the_source(tmp_path: Path) -> None:
    src = tmp_path / "input.dat"
    src.write_bytes(b"x" * 100)
    os.chmod(src, 0o640)
    os.utime(src, ns=(0, 1_234_567_890_123_456_789))
    plan = make_plan(src, "/scratch", 1 << 20, "chain")
    assert (plan.size, plan.mode, plan.mtime_ns, plan.source_name) == (
        100, 0o640, 1_234_567_890_123_456_789, "input.dat")
    assert plan.nchunks == 1


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        make_plan(tmp_path / "nope", "/scratch", 1024, "chain")


def test_directory_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        make_plan(tmp_path, "/scratch", 1024, "chain")


def test_special_file_source() -> None:
    with pytest.raises(UsageError, match="not a regular file"):
        make_plan("/dev/null", "/scratch", 1024, "chain")


@pytest.mark.parametrize("chunk", [0, -1, (1 << 30) + 1])
def test_chunk_size_bounds(chunk: int) -> None:
    with pytest.raises(UsageError, match="invalid chunk size"):
        check_chunk_size(chunk)


@pytest.mark.parametrize("dest, message", [("", "empty"), ("/s/{nodes}", "unknown placeholder"),
                                           ("/s/{", "braces"), ("/s/{0}", "unknown placeholder")])
def test_bad_templates(dest: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_template(dest)


def test_dest_directory_gets_the_source_name(tmp_path: Path) -> None:
    assert resolve_dest(str(tmp_path), "in.dat", node=0, host="h", rank=0) == tmp_path / "in.dat"


def test_dest_file_path_is_used_as_is(tmp_path: Path) -> None:
    target = tmp_path / "renamed.bin"
    assert resolve_dest(str(target), "in.dat", node=0, host="h", rank=0) == target


def test_placeholders_expand_per_node(tmp_path: Path) -> None:
    (tmp_path / "h7-3").mkdir()
    got = resolve_dest(str(tmp_path / "{host}-{node}") + "/r{rank}.bin", "in.dat",
                       node=3, host="h7", rank=12)
    assert got == tmp_path / "h7-3" / "r12.bin"


def test_dest_parent_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        resolve_dest(str(tmp_path / "no" / "file"), "in.dat", node=0, host="h", rank=0)


def test_dest_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(UsageError, match="not a directory"):
        resolve_dest(str(tmp_path / "f" / "x"), "in.dat", node=0, host="h", rank=0)


def test_dest_names_an_existing_directory_inside(tmp_path: Path) -> None:
    (tmp_path / "in.dat").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        resolve_dest(str(tmp_path), "in.dat", node=0, host="h", rank=0)
