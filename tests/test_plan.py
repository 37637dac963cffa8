import math
import os
import socket
import time
from pathlib import Path

import pytest

from mpistage.errors import UsageError
from mpistage.plan import (Plan, check_chunk_size, check_depth, check_template, check_timeout,
                           describe_source, resolve_dest)


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


def test_the_plan_describes_the_source(tmp_path: Path) -> None:
    src = tmp_path / "input.dat"
    src.write_bytes(b"x" * 100)
    os.chmod(src, 0o640)
    os.utime(src, ns=(0, 1_234_567_890_123_456_789))
    plan = Plan.of(describe_source(src, "/scratch"), chunk_size=1 << 20, algorithm="chain")
    assert (plan.size, plan.mode, plan.mtime_ns, plan.source_name) == (
        100, 0o640, 1_234_567_890_123_456_789, "input.dat")
    assert plan.nchunks == 1


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        describe_source(tmp_path / "nope", "/scratch")


def test_directory_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        describe_source(tmp_path, "/scratch")


def test_special_file_source() -> None:
    with pytest.raises(UsageError, match="is a character device; mpistage stages regular files only"):
        describe_source("/dev/null", "/scratch")


def test_fifo_source_is_refused_at_once_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(UsageError, match="is a FIFO"):
        describe_source(fifo, "/scratch")
    assert time.monotonic() - started < 1


def test_socket_source_is_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
        with pytest.raises(UsageError, match="is a socket"):
            describe_source(tmp_path / "sock", "/scratch")


def test_plan_records_the_source_identity(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x" * 10)
    info = os.stat(src)
    plan = Plan.of(describe_source(src, "/scratch"), chunk_size=1024, algorithm="chain")
    assert plan.identity == (info.st_dev, info.st_ino, 10, info.st_mtime_ns, info.st_ctime_ns)


@pytest.mark.parametrize("chunk", [0, -1, (1 << 30) + 1])
def test_chunk_size_bounds(chunk: int) -> None:
    with pytest.raises(UsageError, match="invalid chunk size"):
        check_chunk_size(chunk)


@pytest.mark.parametrize("depth", [0, 1, 65, 10**8])
def test_depth_bounds(depth: int) -> None:
    with pytest.raises(UsageError, match="invalid depth .*: expected 2 to 64 buffers"):
        check_depth(depth)


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, 1e10])
def test_timeout_bounds(timeout: float) -> None:
    with pytest.raises(UsageError, match="invalid timeout"):
        check_timeout(timeout)
    assert check_timeout(0.5) == 0.5 and check_timeout(7 * 86400) == 7 * 86400


@pytest.mark.parametrize("dest, message", [("", "empty"), ("/s/{nodes}", "unknown placeholder"),
                                           ("/s/{", "braces"), ("/s/{0}", "unknown placeholder"),
                                           ("/s/{node:s}", "Unknown format code 's'"),
                                           ("/s/{host:d}", "Unknown format code 'd'"),
                                           ("/s/{node.real}", "unknown placeholder"),
                                           ("/s/{}", "unknown placeholder")])
def test_bad_templates(dest: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_template(dest)


def test_format_specs_that_suit_the_value_are_kept(tmp_path: Path) -> None:
    check_template("/s/n{node:03d}/{host:>4}")
    got = resolve_dest(str(tmp_path) + "/n{node:03d}.bin", "in.dat", node=7, host="h", rank=0)
    assert got == tmp_path / "n007.bin"


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


def test_dest_ending_in_a_slash_must_be_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="destination directory .*/missing/' does not exist "
                       r"\(--mkdir creates it\)"):
        resolve_dest(str(tmp_path / "missing") + "/", "in.dat", node=0, host="h", rank=0)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UsageError, match="is not a directory"):
        resolve_dest(str(tmp_path / "file") + "/", "in.dat", node=0, host="h", rank=0)
    assert sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_special_files_at_the_final_path_are_never_replaced(tmp_path: Path, kind: str) -> None:
    if kind == "device":
        target, message = Path("/dev/null"), "is a character device"
    else:
        target, message = tmp_path / "out", f"is a {'FIFO' if kind == 'fifo' else 'socket'}"
        if kind == "fifo":
            os.mkfifo(target)
        else:
            with socket.socket(socket.AF_UNIX) as server:
                server.bind(str(target))  # the socket file stays after the close
    with pytest.raises(UsageError, match=f"{message}; mpistage replaces only regular files and symlinks"):
        resolve_dest(str(target), "in.dat", node=0, host="h", rank=0)


def test_symlinks_at_the_final_path_are_targets_to_replace(tmp_path: Path) -> None:
    """A symlink (dangling or not) is replaced by the copy, like rsync; a symlink to a
    directory counts as the directory (refused, as a directory is)."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "to-file").symlink_to(tmp_path / "file")
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "d").mkdir()
    (tmp_path / "to-dir").symlink_to(tmp_path / "d")
    for name in ("dangling", "to-file"):
        got = resolve_dest(str(tmp_path / name), "in.dat", node=0, host="h", rank=0)
        assert got == tmp_path / name
    (tmp_path / "d" / "in.dat").symlink_to(tmp_path / "d")
    with pytest.raises(UsageError, match="is a directory"):
        resolve_dest(str(tmp_path / "d"), "in.dat", node=0, host="h", rank=0)


def test_names_over_name_max_are_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="File name too long|longer than the 255 bytes"):
        resolve_dest(str(tmp_path / ("a" * 256)), "in.dat", node=0, host="h", rank=0)
    with pytest.raises(UsageError, match="File name too long"):
        resolve_dest(str(tmp_path / ("a" * 300) / "x"), "in.dat", node=0, host="h", rank=0)
    name = "b" * 255
    assert resolve_dest(str(tmp_path), name, node=0, host="h", rank=0) == tmp_path / name
