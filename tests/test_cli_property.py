"""A property of the command line: whatever a user types, the run ends with exit 0, 1 or
2, no traceback, and nothing left behind but complete copies.

Hypothesis draws argv from the option space: valid, invalid and extreme values, odd DEST
templates (placeholders with and without format specs, braces, trailing slashes, device
nodes, long names) and odd sources (FIFO, device, directory, missing, empty, long name).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpistage.digest import file_digest
from mpistage.sinks.file import TEMP_SUFFIX
from tests.test_cli import ENV, MPIEXEC, without_launcher_box

LONG = "L" * 250

def mostly(valid: list[str], odd: list[str]) -> st.SearchStrategy[str]:
    """Valid values three times as likely as odd ones, so that runs get past the parser."""
    return st.sampled_from(valid * 3 + odd)


SOURCES = mostly(["data.bin", "empty.bin", LONG, "setuid.bin"],
                 ["fifo", "missing.bin", "dir", "/dev/zero"])
DESTS = mostly([
    "{tmp}/out", "{tmp}/out/n{node}", "{tmp}/out/n{node:03d}.bin", "{tmp}/out/{host}-{rank}",
    "{tmp}/out/" + LONG, "{tmp}/out/link", "{tmp}/out/dangling", "{tmp}/missing/",
], [
    "{tmp}/out/{node:s}", "{tmp}/out/{x}", "{tmp}/out/{", "{tmp}/out/}", "{tmp}/out/{}",
    "{tmp}/missing/deeper/x", "/dev/null", "{tmp}/out/" + "a" * 256, "{tmp}/out/fifo",
    "{tmp}/dir", "",
])
OPTIONS = {
    "-a": mostly(["chain", "binomial", "tree", "twotree", "flat", "bcast", "ring", "auto"],
                 ["spiral", ""]),
    "--read-by": mostly(["auto", "root", "all"], ["some", ""]),
    "-c": mostly(["1", "4K", "64K", "1M", "auto"], ["0", "-1", "2G", "1.5M", "12X", ""]),
    "--depth": mostly(["2", "4", "64"], ["0", "1", "65", "-3", "100000000", "x", "2.5"]),
    "--arity": mostly(["2", "3", "64"], ["0", "1", "-3", "x"]),
    "--timeout": mostly(["0.5", "5", "604800"], ["0", "-1", "inf", "nan", "1e10", "soon"]),
}
FLAGS = ["--mkdir", "--quick", "--verify", "--fsync", "--no-clobber", "--remove-first",
         "--skip-bad-nodes", "-q", "--explain"]


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[int | None, list[str]]:
    ranks = draw(st.sampled_from([None, 2]))
    argv: list[str] = []
    for option, values in OPTIONS.items():
        if draw(st.integers(0, 3)) == 0:
            argv += [option, draw(values)]
    argv += draw(st.lists(st.sampled_from(FLAGS), max_size=3, unique=True))
    if ranks:
        argv.append("--ranks-as-nodes")
    argv += [draw(SOURCES), draw(DESTS)]
    return ranks, argv


def prepare(area: Path) -> Path:
    """The sources and the odd things at destinations; returns the regular source."""
    (area / "out").mkdir()
    (area / "dir").mkdir()
    data = area / "data.bin"
    data.write_bytes(os.urandom(300_000))
    (area / "empty.bin").write_bytes(b"")
    shutil.copyfile(data, area / LONG)
    shutil.copyfile(data, area / "setuid.bin")
    (area / "setuid.bin").chmod(0o4755)
    os.mkfifo(area / "fifo")
    os.mkfifo(area / "out" / "fifo")
    (area / "out" / "link").symlink_to(area / "victim")
    (area / "victim").write_bytes(b"precious")
    (area / "out" / "dangling").symlink_to(area / "nowhere")
    return data


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_every_command_line_ends_cleanly(line: tuple[int | None, list[str]]) -> None:
    ranks, template = line
    with tempfile.TemporaryDirectory(prefix="mpistage-prop-") as name:
        area = Path(name)
        prepare(area)
        argv = [a.replace("{tmp}", name) if a.startswith("{tmp}") else a for a in template]
        argv = [str(area / a) if a in ("data.bin", "empty.bin", LONG, "fifo", "missing.bin",
                                       "dir", "setuid.bin") else a for a in argv]
        command = [sys.executable, "-m", "mpistage", *argv]
        if ranks:
            command = [MPIEXEC, "-n", str(ranks), *command]
        try:
            run = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=90,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hung: {argv}")
        stderr = without_launcher_box(run.stderr)
        assert run.returncode in (0, 1, 2), (argv, run.returncode, stderr)
        assert "Traceback" not in stderr and "Traceback" not in run.stdout, (argv, stderr)
        if run.returncode == 2:
            assert stderr.count("mpistage: error:") <= 1, (argv, stderr)
        assert (area / "victim").read_bytes() == b"precious", argv
        assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
        sources = {file_digest(p) for p in (area / "data.bin", area / "empty.bin")}
        for path in area.rglob("*"):
            assert not path.name.endswith(TEMP_SUFFIX), (argv, path)
            if (path.parent != area and path.is_file() and not path.is_symlink()
                    and path.name not in ("fifo",)):
                assert file_digest(path) in sources, (argv, path)
                assert not path.stat().st_mode & 0o6000, ("setuid carried", argv, path)
