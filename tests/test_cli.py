"""The command as users run it: mpiexec, exit codes, one line from rank 0, docs in step."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpistage.cli.main import describe_prediction
from mpistage.cli.parser import build_parser
from mpistage.engine.algorithms import SCHEDULES
from mpistage.model import Parameters
from mpistage.model.choice import Choice
from mpistage.model.decide import Prediction

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
ENV = {**os.environ, "MPIR_CVAR_POLLS_BEFORE_YIELD": "10", "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",
       "MPIEXEC_TIMEOUT": "120"}

needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")

#: Open MPI's mpiexec (prterun) adds its own box when a rank exits non-zero: a block of
#: lines between dashed rules that begins "prterun detected that one or more processes
#: exited with non-zero status".  It is the launcher speaking, not mpistage.
LAUNCHER_BOX = re.compile(r"^-{20,}\n(?:prterun|mpirun|mpiexec) detected that.*?^-{20,}\n?",
                          re.MULTILINE | re.DOTALL)


#: Open MPI's launcher may also log a PMIx error of its own when every rank ends at
#: once with a non-zero status ("[host:pid] PMIX ERROR: PMIX_ERR_UNREACH in file
#: …/pmix_server.c at line …"): the launcher's server racing the ranks' exits.
LAUNCHER_PMIX_ERROR = re.compile(r"^\[[^\]]+:\d+\] PMIX ERROR: .*\n?", re.MULTILINE)


def without_launcher_box(stderr: str) -> str:
    """``stderr`` without what Open MPI's launcher adds: the box in which it names the
    failed rank, and its own PMIx errors."""
    # The PMIx errors first: one may land inside the box, between its top and its text.
    return LAUNCHER_BOX.sub("", LAUNCHER_PMIX_ERROR.sub("", stderr))


def mpistage(*args: str, n: int | None = 2, prefix: tuple[str, ...] = (), timeout: float = 180,
             **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    command = [*prefix, sys.executable, "-m", "mpistage", *args]
    if n is not None:
        command = [MPIEXEC, "-n", str(n), *command]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=timeout, **kw)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "input.dat"
    path.write_bytes(os.urandom((1 << 20) + 3))
    for node in range(4):
        (tmp_path / f"n{node}").mkdir()
    return path


@needs_mpiexec
def test_stage_prints_one_summary_and_writes_the_report(src: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    run = mpistage("--ranks-as-nodes", "-c", "256K", "--report", str(report), str(src),
                   str(tmp_path / "n{node}"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("mpistage: ") == 1, "rank 0 speaks, once"
    assert "all 2 nodes hold a verified copy" in run.stdout
    assert run.stderr == ""
    data = json.loads(report.read_text())
    assert data["ok"] and data["node_count"] == 2 and data["chunk_size"] == 256 << 10
    for node in range(2):
        assert (tmp_path / f"n{node}" / "input.dat").read_bytes() == src.read_bytes()


@needs_mpiexec
@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing", "{tmp}/n0"], "source '{tmp}/missing' does not exist"),
    (["{tmp}", "{tmp}/n0"], "the source holds 1 special file mpistage cannot stage: "
                            "{tmp}/fifo (a FIFO) (--skip-special leaves them out)"),
    (["--skip-special", "{tmp}", "{tmp}/n0"], "is inside the source '{tmp}'; it cannot"),
    (["{src}", "{src}", "{tmp}/n0"], "two sources are named 'input.dat'"),
    (["--skip-special", "{src}", "{tmp}", "{src}"],
     "input.dat' is not a directory; several sources need one"),
    (["--files-from", "{tmp}/nolist", "{tmp}/n0"], "cannot read the file list"),
    (["--files-from", "{src}", "{src}", "{tmp}/n0"], "give sources or --files-from, not both"),
    (["{src}", "{tmp}/nowhere/x"], "destination directory '{tmp}/nowhere' does not exist"),
    (["-c", "12X", "{src}", "{tmp}/n0"], "invalid size '12X'"),
    (["-c", "2G", "{src}", "{tmp}/n0"], "invalid chunk size"),
    (["-a", "spiral", "{src}", "{tmp}/n0"], "invalid choice: 'spiral'"),
    (["--root", "5", "{src}", "{tmp}/n0"], "invalid root 5: expected a rank from 0 to 1"),
    (["{src}"], "expected SRC... DEST: what to stage and where"),
    (["{src}", "{tmp}/n{{node:s}}"], "Unknown format code 's'"),
    (["{src}", "{tmp}/n{{rank!x}}"], "Unknown conversion specifier"),
    (["{src}", "{tmp}/" + "a" * 256], "File name too long"),
    (["{src}", "{tmp}/new/"], "destination directory '{tmp}/new/' does not exist (--mkdir creates it)"),
    (["{src}", "/dev/null"], "'/dev/null' is a character device; mpistage replaces only regular"),
    (["{tmp}/fifo", "{tmp}/n0"], "source '{tmp}/fifo' is a FIFO; mpistage stages regular files only"),
    (["/dev/zero", "{tmp}/n0"], "is a character device"),
    (["--timeout", "inf", "{src}", "{tmp}/n0"], "invalid timeout inf"),
    (["--timeout", "1e10", "{src}", "{tmp}/n0"], "at most 604800"),
    (["--timeout", "0", "{src}", "{tmp}/n0"], "expected seconds above 0"),
    (["--timeout=-5", "{src}", "{tmp}/n0"], "expected seconds above 0"),
    (["--timeout", "soon", "{src}", "{tmp}/n0"], "invalid timeout 'soon'"),
    (["--depth", "0", "{src}", "{tmp}/n0"], "invalid depth 0: expected 2 to 64 buffers"),
    (["--depth", "100000000", "{src}", "{tmp}/n0"], "invalid depth 100000000"),
    (["-c", "0", "{src}", "{tmp}/n0"], "invalid chunk size 0"),
])
def test_bad_input_one_line_exit_2_nothing_created(src: Path, tmp_path: Path, args, message):  # type: ignore[no-untyped-def]
    os.mkfifo(tmp_path / "fifo")
    before = sorted(tmp_path.rglob("*"))
    filled = [a.format(tmp=tmp_path, src=src) for a in args]
    run = mpistage("--ranks-as-nodes", *filled, timeout=60)
    assert run.returncode == 2
    lines = without_launcher_box(run.stderr).strip().splitlines()
    assert len(lines) == 1, f"one line from rank 0, got: {run.stderr!r}"
    assert lines[0].startswith("mpistage: error: ")
    assert message.format(tmp=tmp_path) in lines[0]
    assert run.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before


@needs_mpiexec
def test_node_failure_exit_1_names_the_node(src: Path, tmp_path: Path) -> None:
    """MPMD launch: rank 1 runs the same CLI under a 256 KiB file-size limit (set after
    MPI_Init, whose shared-memory set-up needs larger files), so its write fails."""
    args = ["--ranks-as-nodes", "-c", "64K", str(src), str(tmp_path / "n{node}")]
    limited = (
        "import resource, sys; from mpi4py import MPI; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (262144, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
        "from mpistage.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run(
        [MPIEXEC, "-n", "1", sys.executable, "-m", "mpistage", *args,
         ":", "-n", "1", sys.executable, "-c", limited, *args],
        capture_output=True, text=True, env=ENV, timeout=180,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED: 1 of 2 nodes hold a verified copy" in run.stdout
    assert re.search(r"node 1 \(.*rank 1\): failed: write to .* failed: .*File too large", run.stdout)
    assert os.listdir(tmp_path / "n1") == []
    assert (tmp_path / "n0" / "input.dat").read_bytes() == src.read_bytes()


@needs_mpiexec
def test_a_run_that_only_moves_bytes_imports_no_numpy(src: Path, tmp_path: Path) -> None:
    """numpy's import is ~70 ms of CPU on every rank, the largest part of a small run's
    start-up (4 ranks on 2 cores: 0.63 s with it, 0.42-0.50 s without); chunk buffers
    and the roll call's messages are mmap and array buffers instead.  Without
    ``--compress`` no encoder thread pool either (``concurrent.futures``: 6 ms of CPU
    beyond what the command line imports anyway)."""
    code = ("import sys; from mpistage.cli.main import main; status = main(sys.argv[1:]); "
            "sys.exit(status or (3 if 'numpy' in sys.modules else 0) "
            "or (4 if 'concurrent.futures' in sys.modules else 0))")
    run = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", code, "--ranks-as-nodes",
                          "-q", str(src), str(tmp_path / "n{node}")],
                         capture_output=True, text=True, env=ENV, timeout=180)
    assert run.returncode == 0, (f"exit {run.returncode} (3: numpy imported, 4: "
                                 f"concurrent.futures)\n{run.stderr}")
    assert (tmp_path / "n1" / "input.dat").read_bytes() == src.read_bytes()


def test_singleton_without_mpiexec(src: Path, tmp_path: Path) -> None:
    run = mpistage("-q", str(src), str(tmp_path / "copy.dat"), n=None)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert (tmp_path / "copy.dat").read_bytes() == src.read_bytes()


def test_unreadable_source(src: Path, tmp_path: Path) -> None:
    src.chmod(0o000)
    tmp_path.chmod(0o777)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root reads anything: run as nobody to meet a real EACCES
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and no setpriv to drop privileges")
        prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        if subprocess.run([*prefix, sys.executable, "-c", "import mpistage"],
                          capture_output=True).returncode != 0:
            pytest.skip("the interpreter is not usable by user nobody")
    run = mpistage(str(src), str(tmp_path / "n0"), n=None, prefix=prefix)
    assert run.returncode == 2
    assert run.stderr.strip() == f"mpistage: error: source '{src}' is not readable (permission denied)"


def test_help_and_version() -> None:
    run = mpistage("--help", n=None)
    assert run.returncode == 0 and "usage: mpistage" in run.stdout and "exit status" in run.stdout
    assert mpistage("--version", n=None).stdout.startswith("mpistage ")


def test_the_usage_page_documents_every_option() -> None:
    usage = (ROOT / "docs" / "usage.md").read_text()
    options = [o for action in build_parser()._actions for o in action.option_strings
               if o.startswith("--")]
    missing = [o for o in options if f"`{o}" not in usage]
    assert not missing, f"docs/usage.md lacks options: {missing}"


def test_the_readme_stays_short_and_links_every_page() -> None:
    """The README is the front page (what it is, the two commands, install, examples,
    figures); everything else lives on the documentation site."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
    assert [p for p in pages if f"](docs/{p})" not in readme] == []


def test_explain_puts_the_choice_first_and_says_when_it_won_a_tie() -> None:
    """The model's tie rule can pick a schedule up to 3 % slower than the fastest (the
    simpler one); the table leads with the choice and says why, then the rest in order."""
    predictions = {"chain": (1 << 20, 0.561), "binomial": (1 << 20, 0.600),
                   "bcast": (64 << 10, 0.551), "tree": (1 << 20, 0.580)}
    choice = Choice("chain", 1 << 20, 0.561, predictions, "none")
    table = describe_prediction(Prediction("assumed", Parameters(1e-4, 1e8), 2, choice, True))
    rows = [line.split()[0] for line in table.splitlines()[2:]]
    assert rows == ["chain", "bcast", "tree", "binomial"]
    assert table.splitlines()[2].endswith("<- chosen (within 3% of the fastest: a tie, won "
                                          "by the simpler schedule)")
    behind = {"chain": (128 << 10, 1.483), "twotree": (64 << 10, 1.439)}  # 16 hosts, 16 MiB
    margin = describe_prediction(Prediction("assumed", Parameters(1e-4, 1e8), 16,
                                            Choice("chain", 128 << 10, 1.483, behind, "none"), True))
    assert margin.splitlines()[2].endswith("<- chosen (twotree predicted 3% faster, short of "
                                           "the 5% it must win by)")
    fastest = Choice("bcast", 64 << 10, 0.551, predictions, "none")
    table = describe_prediction(Prediction("assumed", Parameters(1e-4, 1e8), 2, fastest, True))
    assert table.splitlines()[2].split()[0] == "bcast" and table.splitlines()[2].endswith(
        "<- chosen")


@needs_mpiexec
def test_explain_and_calibrate_from_the_command_line(src: Path, tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    run = mpistage("calibrate", "--ranks-as-nodes", "--dest", str(tmp_path / "n{node}"),
                   "--source", str(src), "--sample", "1M", "--sizes", "1,64K", "--round-trips",
                   "20", "-o", str(cal))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("mpistage calibrate: 2 nodes") and "round trips" in run.stdout
    assert "CPU per message o" in run.stdout
    assert "read A (all)" in run.stdout, "every node sees the source here: A is measured"
    assert json.loads(cal.read_text())["schema"] == "mpistage.staging.calibration/1"
    run = mpistage("--explain", "-a", "auto", "--calibration", str(cal), "--ranks-as-nodes",
                   str(src), str(tmp_path / "n{node}"))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("mpistage --explain: 2 nodes to serve; parameters from the calibration")
    # One file: auto weighs the algorithms that survive a lost node (not MPI's bcast).
    recoverable = [name for name, cls in SCHEDULES.items()
                   if cls.point_to_point and not cls.every_node_reads]
    assert len(lines) == 2 + len(recoverable) and "<- chosen" in lines[2], "the choice first"
    assert "bound by" in lines[1] and "ranks per core" in lines[0]
    assert all(line.split()[5] in ("link", "CPU", "read", "write") for line in lines[2:]), lines
    assert not any(line.split()[0] == "bcast" for line in lines[2:]), lines
    assert os.listdir(tmp_path / "n0") == [] and os.listdir(tmp_path / "n1") == []
    run = mpistage("calibrate", "--dest", str(tmp_path / "missing"), "--sample", "1K")
    assert run.returncode == 2 and run.stderr.startswith("mpistage calibrate: error: node 0")


@needs_mpiexec
def test_twotree_chunks_that_overflow_the_memory_budget_are_refused(src: Path, tmp_path: Path) -> None:
    """Twotree holds up to its fill of chunks per node (5 at 3 nodes): 5 x 16 MiB is more
    than 64 MiB, so the run is refused with one line, before anything is sent."""
    run = mpistage("--ranks-as-nodes", "-a", "twotree", "-c", "16M", "--memory", "64M",
                   str(src), str(tmp_path / "n{node}"), n=3)
    assert run.returncode == 2, run.stderr
    ours = [line for line in run.stderr.splitlines() if line.startswith("mpistage")]
    assert ours == ["mpistage: error: twotree to 3 nodes keeps 5 chunks per node: 5 x 16.0 "
                    "MiB is more than the memory budget of 64.0 MiB: use a smaller chunk or "
                    "a larger --memory"], run.stderr  # Open MPI's launcher adds its own
    assert not any((tmp_path / f"n{node}" / "input.dat").exists() for node in range(3))


@needs_mpiexec
@pytest.mark.parametrize("nodes", range(1, 18))
def test_twotree_delivers_every_byte_to_1_to_17_nodes(nodes: int, tmp_path: Path) -> None:
    """Two trees over every node count from 1 to 17 (heaps of every shape: full, one
    child short, a lone top), the root in the middle, an odd number of chunks and a
    partial last one (so each tree carries a different share): every copy verified."""
    src = tmp_path / "input.dat"
    data = os.urandom(7 * (16 << 10) + 5)
    src.write_bytes(data)
    for node in range(nodes):
        (tmp_path / f"n{node}").mkdir()
    run = mpistage("--ranks-as-nodes", "-a", "twotree", "-c", "16K", "--root", str(nodes // 2),
                   str(src), str(tmp_path / "n{node}"), n=nodes)
    assert run.returncode == 0, run.stderr
    assert f"to {nodes} node" in run.stdout and "by twotree" in run.stdout
    for node in range(nodes):
        assert (tmp_path / f"n{node}" / "input.dat").read_bytes() == data, node
