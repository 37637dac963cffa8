import os
import stat
from pathlib import Path

import pytest

from mpistage.digest import file_digest, new_digest
from mpistage.sinks.file import TEMP_SUFFIX, Sink


def digest_of(data: bytes) -> str:
    d = new_digest()
    d.update(data)
    return d.hexdigest()


def test_nothing_at_the_final_path_until_commit(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    sink = Sink(final)
    sink.write(memoryview(b"hello "))
    sink.write(memoryview(b"world"))
    assert not final.exists()
    assert sink.temp_path is not None and sink.temp_path.parent == tmp_path
    assert sink.temp_path.name.endswith(TEMP_SUFFIX)
    assert stat.S_IMODE(sink.temp_path.stat().st_mode) == 0o600, "temp file is private"
    sink.commit(mode=0o644, mtime_ns=1_000_000_000_000_000_000, fsync=True,
                verify_digest=digest_of(b"hello world"))
    assert final.read_bytes() == b"hello world"
    assert final.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert sorted(sink.timings) == ["fsync", "rename", "verify"]
    assert os.listdir(tmp_path) == ["out.bin"]


def test_mode_follows_source_minus_umask_and_never_world_writable(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        for mode, expected in [(0o755, 0o750), (0o666, 0o640), (0o777, 0o750)]:
            final = tmp_path / f"m{mode:o}"
            sink = Sink(final)
            sink.commit(mode=mode, mtime_ns=0)
            assert stat.S_IMODE(final.stat().st_mode) == expected
        os.umask(0)
        sink = Sink(tmp_path / "ww")
        sink.commit(mode=0o777, mtime_ns=0)
        assert stat.S_IMODE((tmp_path / "ww").stat().st_mode) == 0o775
    finally:
        os.umask(old)


def test_setuid_and_setgid_are_never_carried(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        for mode, expected in [(0o4755, 0o755), (0o2755, 0o755), (0o6775, 0o755), (0o1777, 0o1755)]:
            final = tmp_path / f"m{mode:o}"
            Sink(final).commit(mode=mode, mtime_ns=0)
            assert stat.S_IMODE(final.stat().st_mode) == expected, oct(mode)
    finally:
        os.umask(old)


@pytest.mark.parametrize("length", [1, 100, 200, 250, 255])
def test_the_temp_name_always_fits_where_the_final_name_does(tmp_path: Path, length: int) -> None:
    final = tmp_path / ("é" * (length // 2) + "x" * (length % 2))  # 2-byte characters too
    sink = Sink(final)
    sink.write(memoryview(b"data"))
    assert sink.temp_path is not None and len(os.fsencode(sink.temp_path.name)) <= 255
    sink.commit(mode=0o644, mtime_ns=0)
    assert os.listdir(tmp_path) == [final.name] and final.read_bytes() == b"data"


def test_discard_removes_the_temp_file_and_is_idempotent(tmp_path: Path) -> None:
    with Sink(tmp_path / "out.bin") as sink:
        sink.write(memoryview(b"partial"))
    sink.discard()
    assert os.listdir(tmp_path) == []


def test_verify_mismatch_leaves_nothing(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "out.bin")
    sink.write(memoryview(b"abc"))
    with pytest.raises(ValueError, match="re-read"):
        sink.commit(mode=0o644, mtime_ns=0, verify_digest=digest_of(b"abd"))
    assert os.listdir(tmp_path) == []


def test_symlink_at_final_path_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    final = tmp_path / "out.bin"
    final.symlink_to(victim)
    sink = Sink(final)
    sink.write(memoryview(b"new"))
    sink.commit(mode=0o644, mtime_ns=0)
    assert not final.is_symlink()
    assert final.read_bytes() == b"new"
    assert victim.read_bytes() == b"precious"


def test_file_digest_matches_streaming_digest(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_digest(path) == digest_of(data)


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.bin.{host}.{dead}.abc123{TEMP_SUFFIX}"
    alive = tmp_path / f".out.bin.{host}.{os.getpid()}.def456{TEMP_SUFFIX}"
    elsewhere = tmp_path / f".out.bin.otherhost.{dead}.abc123{TEMP_SUFFIX}"
    other_file = tmp_path / f".other.bin.{host}.{dead}.abc123{TEMP_SUFFIX}"
    for path in (stale, alive, elsewhere, other_file):
        path.write_bytes(b"partial")
    from mpistage.sinks.file import remove_stale_temps

    assert remove_stale_temps(tmp_path / "out.bin") == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (alive, elsewhere, other_file))


def test_stale_temp_files_of_long_names_are_found_too(tmp_path: Path) -> None:
    import subprocess
    import sys

    from mpistage.sinks.file import remove_stale_temps, temp_prefix

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    final = tmp_path / ("n" * 250)
    stale = tmp_path / f"{temp_prefix(final.name, dead)}abcdefgh{TEMP_SUFFIX}"
    stale.write_bytes(b"partial")
    assert remove_stale_temps(final) == [stale]
