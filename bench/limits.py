"""The issue's limits, measured side by side: how close mpistage's defaults come to the
bounds (one MPI point-to-point copy, a plain TCP relay, ``cp``), and what a rank costs in
CPU, memory and start-up.

As root (it brings up and tears down its own emulated clusters):

    python bench/limits.py                   # every row, median of 3 (about 15 minutes)
    python bench/limits.py --only c8,cpu     # a subset while developing
    python bench/limits.py --small           # a quick version (CI): every row, tiny sizes

Goal rows (64 MiB unless said; "default" means no ``-a``/``-c`` given):

  c8      8 hosts at 100 Mbit/s, default: transfer ≤ 1.03 × p2p; whole command ≤ p2p + 0.5 s
  c16     16 hosts at 100 Mbit/s, default: transfer ≤ 1.10 × p2p
  c8g     8 hosts at 1 Gbit/s, 256 MiB, default: transfer ≤ 1.05 × p2p
  cpu     CPU (user + sys) of a middle host's rank, default, on the c8 cluster, ≤ 1.5 × a
          middle host's plain relay process (``mpistage.cluster.relay``), and (row cpu.mpi)
          ≤ 1.2 × the minimal MPI relay's at the same chunk (``mpistage.cluster.mpirelay``)
  shm     one host, 2 ranks as nodes, 1 GiB from tmpfs to tmpfs, the whole mpiexec ≤ 1.25 ×
          two parallel ``cp`` of the same file
  rss     peak RSS (``ru_maxrss``) of every rank of the shm case, ``-c auto`` and default,
          ≤ 150 MB
  tiny    a 1-byte file to 4 ranks on one host, the whole mpiexec ≤ 1.5 × a bare
          ``MPI.COMM_WORLD.Barrier()`` under the same mpiexec
  import  ``import mpistage.cli.main`` beyond mpi4py's own ``import mpi4py.MPI`` ≤ 0.08 s
  best    (with c8, c16, c8g and shm) the default ≤ 1.05 × the fastest of the fixed
          choices (chain at 64 KiB … 16 MiB, twotree at 1 MiB, binomial at 4 MiB), run in
          the same rounds

For context every cluster also gets one MPI point-to-point copy h0 → h1 (the reference),
the plain TCP relay chain over all hosts (the physical bound, ≈ 1.00 × p2p), MPI's default
``MPI_Bcast``, and mpistage with each fixed choice (:data:`FIXED`) and with
``-a auto -c auto``.  Every mpistage run's copies are checked against the source's digest
on every host, and each row says so.  The repeats are interleaved (round 1 of every row,
then round 2 ...), so a slow spell of the machine does not land on one row only, and
each run starts 2 s after the last one ended (the machine settles after an MPI_Bcast).

Prints a Markdown table and writes it with the JSON to ``--out`` (``limits.md``,
``limits.json``).  Exits 1 if a goal is missed or a run failed; with ``--small`` the goals
are shown but only failed runs count (the point there is that every row runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mpistage import __version__, mpi_library
from mpistage.cluster import ClusterError, EmulatedCluster, relay, teardown
from mpistage.cluster.runs import mpistage_command, read_report, stage_with_report
from mpistage.cluster.system import interrupts_as_exceptions
from mpistage.digest import file_digest
from mpistage.samples import write_random_file
from mpistage.units import format_bytes

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("c8", "cpu", "c16", "c8g", "shm", "rss", "tiny", "import")
#: The fixed choices the default is held against (the issue's "chunk sizes 64 KiB-16 MiB
#: × the algorithms"; the trees at the chunks where they stand best): the row
#: ``KEY.best`` compares the default with the fastest of them, in the same rounds.
FIXED = (("chain-64K", ["-a", "chain", "-c", "64K"]), ("chain-256K", ["-a", "chain", "-c", "256K"]),
         ("chain-1M", ["-a", "chain", "-c", "1M"]), ("chain-4M", ["-a", "chain", "-c", "4M"]),
         ("chain-16M", ["-a", "chain", "-c", "16M"]), ("twotree-1M", ["-a", "twotree", "-c", "1M"]),
         ("binomial-4M", ["-a", "binomial", "-c", "4M"]))
#: mpistage with forced algorithms: the fixed grid, and the model's own pick of both.
FORCED = (*FIXED, ("auto", ["-a", "auto", "-c", "auto"]))
#: How far the default may trail the best fixed choice.
BEST_SLACK = 1.05
MB = 10**6  # the "150 MB"; decimal, so the goal is not loosened by 5 %
#: A bare MPI rank: start Python, import mpi4py (MPI_Init), one Barrier; prints the slowest
#: rank's seconds from its process start (as mpistage's whole-command time counts them).
STARTUP = """\
import os, time
from mpi4py import MPI
MPI.COMM_WORLD.Barrier()
with open("/proc/self/stat") as stat:
    ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
age = MPI.COMM_WORLD.allreduce(age, op=MPI.MAX)
if MPI.COMM_WORLD.rank == 0:
    print(f"{age:.6f}")
"""


# -- goals and rows -----------------------------------------------------------------------

@dataclass(frozen=True)
class Goal:
    """A limit on a row: ``ratio`` (measured ≤ limit × reference), ``excess`` (measured ≤
    reference + limit seconds) or ``max`` (measured ≤ limit, in the row's unit)."""

    kind: str
    limit: float

    def met(self, measured: float, reference: float | None) -> bool:
        if self.kind == "ratio":
            return reference is not None and measured <= self.limit * reference
        if self.kind == "excess":
            return reference is not None and measured <= reference + self.limit
        return measured <= self.limit

    def text(self, unit: str) -> str:
        if self.kind == "ratio":
            return f"≤ {self.limit:.2f}×"
        if self.kind == "excess":
            return f"≤ ref + {self.limit:g} s"
        return f"≤ {self.limit:g} {unit}"


@dataclass
class Row:
    """One line of the table; ``ok`` is false when a run failed or a copy did not verify."""

    id: str
    case: str
    unit: str
    measured: float | None
    reference: float | None = None
    reference_label: str = ""
    goal: Goal | None = None
    ok: bool = True
    notes: str = ""
    runs: list[float | None] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.reference or (self.goal and self.goal.kind == "max"):
            return None
        return self.measured / self.reference

    @property
    def met(self) -> bool | None:
        """None for a context row (no goal); False also when the row's runs failed."""
        if self.goal is None:
            return None
        if self.measured is None or not self.ok:
            return False
        return self.goal.met(self.measured, self.reference)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["goal"] = None if self.goal is None else {**asdict(self.goal),
                                                       "text": self.goal.text(self.unit)}
        return {**data, "ratio": self.ratio, "met": self.met}


def median(values: Sequence[float | None]) -> float | None:
    """Median of the runs that produced a number (None when none did)."""
    numbers = [v for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


def say(text: str) -> None:
    """Progress on stderr: a full run takes a quarter of an hour."""
    print(f"limits: {text}", file=sys.stderr, flush=True)


# -- sizes of a run -----------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterCase:
    """An emulated cluster and the file staged on it; ``limit``: the default's goal."""

    key: str
    hosts: int
    rate: str
    size: int
    limit: float

    @property
    def label(self) -> str:
        return f"{self.hosts} hosts, {self.rate}, {format_bytes(self.size)}"


@dataclass(frozen=True)
class Scale:
    """The sizes of one benchmark run: the issue's, or a quick one for CI."""

    name: str
    clusters: tuple[ClusterCase, ...]
    local_size: int
    tiny_ranks: int
    import_runs: int
    repeat: int
    timeout: float
    #: Seconds between two runs, so each starts on a settled machine: right after an
    #: MPI_Bcast of 64 MiB on 8 hosts, the next run took 0.1 s longer (1.02 → 1.04 × p2p);
    #: 2 s later it did not.
    settle: float = 2.0


FULL = Scale(
    name="full",
    clusters=(ClusterCase("c8", 8, "100mbit", 64 << 20, 1.03),
              ClusterCase("c16", 16, "100mbit", 64 << 20, 1.10),
              ClusterCase("c8g", 8, "1gbit", 256 << 20, 1.05)),
    local_size=1 << 30, tiny_ranks=4, import_runs=9, repeat=3, timeout=600,
)
SMALL = Scale(
    name="small",
    clusters=(ClusterCase("c8", 3, "1gbit", 4 << 20, 1.03),
              ClusterCase("c16", 4, "1gbit", 4 << 20, 1.10),
              ClusterCase("c8g", 3, "1gbit", 8 << 20, 1.05)),
    local_size=16 << 20, tiny_ranks=4, import_runs=3, repeat=1, timeout=120, settle=0.0,
)


# -- running things -----------------------------------------------------------------------

@dataclass
class Outcome:
    """One run of one measurement: its number (None if it failed) and what else it said."""

    value: float | None
    ok: bool = True
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def attempt(action: Callable[[], Outcome]) -> Outcome:
    """Run ``action``, turning the failures a benchmark must survive into a failed outcome,
    so one broken run costs its row, not the whole benchmark."""
    try:
        return action()
    except (ClusterError, subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        return Outcome(None, ok=False, error=f"{type(exc).__name__}: {exc}"[:300])


def check_copies(paths: Sequence[Path], digest: str) -> int:
    """How many of ``paths`` hold the source's bytes; every one is removed afterwards,
    so the next run starts from empty scratch (no copy is 'up to date' by accident)."""
    good = 0
    for path in paths:
        if path.exists():
            good += file_digest(path, drop_cache=False) == digest
            path.unlink()
    return good


def staged(run: subprocess.CompletedProcess[str], report: dict[str, Any] | None, good: int,
           copies: int, measured: Path | None) -> Outcome:
    """The outcome of one mpistage run from its exit status, its report and its copies."""
    ok = run.returncode == 0 and report is not None and report["ok"] and good == copies
    extra: dict[str, Any] = {"good": good, "copies": copies}
    if report is not None:
        extra.update(elapsed=report["elapsed"], transfer=report["transfer_seconds"],
                     chunk_size=report["chunk_size"],
                     plan=f"{report['algorithm']}, chunk {format_bytes(report['chunk_size'])}")
    if measured is not None:
        extra["ranks"] = [asdict(m) for m in relay.read_measurements(measured)]
    error = "" if ok else (f"exit {run.returncode}, {good}/{copies} copies verified: "
                           f"{run.stderr.strip()[-300:]}")
    return Outcome(extra.get("transfer"), ok=ok, error=error, extra=extra)


def stage_on_cluster(cluster: EmulatedCluster, src: Path, digest: str, options: Sequence[str],
                     work: Path, timeout: float, measure: bool = False) -> Outcome:
    """mpistage on every host of ``cluster`` (each rank under :func:`relay.measure` when
    ``measure``); every host's copy checked against ``digest``."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        prefix = relay.measure_prefix(run_dir) if measure else []
        run, report = stage_with_report(cluster, src, options, prefix=prefix,
                                        env={"MPIEXEC_TIMEOUT": str(int(timeout))},
                                        timeout=timeout + 60)
        good = check_copies([cluster.scratch_dir(i) / src.name for i in range(cluster.hosts)],
                            digest)
        return staged(run, report, good, cluster.hosts, run_dir if measure else None)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def mpi_seconds(cluster: EmulatedCluster, module: str, size: int, hosts: Sequence[int] | None,
                timeout: float) -> Outcome:
    """The seconds printed by ``python -m mpistage.cluster.MODULE SIZE`` (p2p, bcast)."""
    run = cluster.mpiexec([sys.executable, "-m", f"mpistage.cluster.{module}", str(size)],
                          hosts=hosts, env={"MPIEXEC_TIMEOUT": str(int(timeout))},
                          capture_output=True, text=True, timeout=timeout + 60)
    if run.returncode != 0:
        return Outcome(None, ok=False, error=f"{module} exit {run.returncode}: "
                       f"{run.stderr.strip()[-300:]}")
    return Outcome(float(run.stdout.split()[-1]))


def measured_on_every_host(cluster: EmulatedCluster, argv: Sequence[str], what: str,
                           work: Path, timeout: float) -> Outcome:
    """``argv`` under MPI on every host, each rank under :func:`relay.measure`; the seconds
    it printed last, and every rank's CPU and peak RSS."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        run = cluster.mpiexec([*relay.measure_prefix(run_dir), *argv],
                              env={"MPIEXEC_TIMEOUT": str(int(timeout))},
                              capture_output=True, text=True, timeout=timeout + 60)
        if run.returncode != 0:
            return Outcome(None, ok=False, error=f"{what} exit {run.returncode}: "
                           f"{run.stderr.strip()[-300:]}")
        ranks = [asdict(m) for m in relay.read_measurements(run_dir)]
        return Outcome(float(run.stdout.split()[-1]), extra={"ranks": ranks})
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def bare_start(cluster: EmulatedCluster, work: Path, timeout: float) -> Outcome:
    """:data:`STARTUP` on every host: the floor under mpistage's whole command (its
    seconds) and under a rank's CPU (what Python and MPI cost before any byte moves)."""
    return measured_on_every_host(cluster, [sys.executable, "-c", STARTUP], "bare start",
                                  work, timeout)


def mpi_relay(cluster: EmulatedCluster, size: int, chunk: int, work: Path,
              timeout: float, write: bool = False) -> Outcome:
    """The minimal MPI relay chain (``mpistage.cluster.mpirelay``) over every host: what
    MPI itself costs a middle host per byte, at mpistage's chunk (``write``: each host
    also writes its copy to its scratch, as mpistage does)."""
    argv = [sys.executable, "-m", "mpistage.cluster.mpirelay", str(size), str(chunk)]
    outcome = measured_on_every_host(
        cluster, argv + (["--write", cluster.scratch] if write else []),
        "mpirelay", work, timeout)
    outcome.extra["chunk"] = chunk
    return outcome


def relay_chain(cluster: EmulatedCluster, size: int, timeout: float) -> Outcome:
    """The plain TCP relay over every host; its seconds and every host's CPU."""
    result = relay.chain(cluster, size, timeout=timeout)
    return Outcome(result.seconds, extra={"middle_cpu": result.middle_cpu, "cpu": result.cpu})


def local_environment(timeout: float) -> dict[str, str]:
    """The environment of a one-host mpiexec, as ``jobscripts/env.sh`` sets it (yielding
    ranks), with this Python's directory first on PATH and a hard time limit."""
    env = {**os.environ, **mpi_library.launch_environment(), "MPIEXEC_TIMEOUT": str(int(timeout))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def local_mpiexec(ranks: int, argv: Sequence[str],
                  timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """``mpiexec -n RANKS ARGV`` on this machine; the run and its wall seconds."""
    mpiexec = mpi_library.find_mpiexec()
    if mpiexec is None:
        raise ClusterError("no mpiexec: pip install 'mpistage[mpich]' provides one")
    started = time.perf_counter()
    run = subprocess.run([mpiexec, "-n", str(ranks), *argv], env=local_environment(timeout),
                         capture_output=True, text=True, timeout=timeout + 60)
    return run, time.perf_counter() - started


def stage_locally(ranks: int, src: Path, digest: str, options: Sequence[str], work: Path,
                  timeout: float, measure: bool = False) -> Outcome:
    """``mpiexec -n RANKS python -m mpistage --ranks-as-nodes SRC WORK/x{node}``; the value
    is the wall time of the whole mpiexec; every rank's copy checked."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        prefix = relay.measure_prefix(run_dir) if measure else []
        report = run_dir / "report.json"
        argv = [*prefix, *mpistage_command(report, ["--ranks-as-nodes", *options], src,
                                           str(run_dir / "x{node}"))]
        run, wall = local_mpiexec(ranks, argv, timeout)
        good = check_copies([run_dir / f"x{i}" for i in range(ranks)], digest)
        outcome = staged(run, read_report(report), good, ranks, run_dir if measure else None)
        outcome.extra["transfer"] = outcome.value
        outcome.value = wall if outcome.ok else None
        return outcome
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def parallel_cp(src: Path, work: Path, copies: int = 2) -> Outcome:
    """Wall seconds of ``copies`` ``cp`` of ``src`` run at once (what mpistage replaces on
    one host); the copies are removed afterwards."""
    targets = [work / f"cp{i}" for i in range(copies)]
    started = time.perf_counter()
    procs = [subprocess.Popen(["cp", str(src), str(t)]) for t in targets]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    for target in targets:
        target.unlink(missing_ok=True)
    if any(codes):
        return Outcome(None, ok=False, error=f"cp exit {codes}")
    return Outcome(wall)


def python_seconds(code: str) -> float:
    """Wall seconds of ``python -c CODE`` (a fresh interpreter, so imports are cold in
    the interpreter, warm in the page cache)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


# -- the cases ----------------------------------------------------------------------------

def run_rounds(actions: Sequence[tuple[str, Callable[[], Outcome]]], repeat: int,
               label: str, settle: float = 0.0) -> dict[str, list[Outcome]]:
    """Every action once per round, ``repeat`` rounds, ``settle`` seconds before each; the
    outcomes by action name."""
    outcomes: dict[str, list[Outcome]] = defaultdict(list)
    for round_number in range(1, repeat + 1):
        for name, action in actions:
            time.sleep(settle)
            outcome = attempt(action)
            outcomes[name].append(outcome)
            shown = f"{outcome.value:.3f}" if outcome.value is not None else "FAILED"
            say(f"{label} round {round_number}/{repeat}: {name} {shown}"
                + (f" ({outcome.error})" if outcome.error else ""))
    return outcomes


def verified(outcomes: Sequence[Outcome], copies: int) -> str:
    """The note every mpistage row carries: how many runs put a good copy everywhere."""
    good = sum(o.ok for o in outcomes)
    return f"copies verified {good}/{len(outcomes)} runs × {copies} copies"


def errors(outcomes: Sequence[Outcome]) -> str:
    found = [o.error for o in outcomes if o.error]
    return f"; error: {found[0]}" if found else ""


def plans(outcomes: Sequence[Outcome]) -> str:
    """The algorithm and chunk the runs ended up with (what the defaults resolve to)."""
    chosen = sorted({o.extra["plan"] for o in outcomes if "plan" in o.extra})
    return " / ".join(chosen)


def cluster_rows(case: ClusterCase, cluster: EmulatedCluster, src: Path, work: Path,
                 scale: Scale, repeat: int, main: bool, cpu: bool) -> list[Row]:
    """The rows of one cluster: its goal rows (``main``: the default's time; ``cpu``: the
    rank's CPU against the relay's) and the context rows that go with them."""
    digest = file_digest(src)
    size, timeout = case.size, scale.timeout
    actions: list[tuple[str, Callable[[], Outcome]]] = []
    if main:
        actions.append(("p2p", lambda: mpi_seconds(cluster, "p2p", size, [0, 1], timeout)))
    actions.append(("relay", lambda: relay_chain(cluster, size, timeout)))
    if main:
        actions += [("bcast", lambda: mpi_seconds(cluster, "bcast", size, None, timeout)),
                    ("default", lambda: stage_on_cluster(cluster, src, digest, [], work, timeout))]
    if cpu:
        chunks: list[int] = []  # the default's chunk, for the MPI relay at the same chunk

        def measured() -> Outcome:
            outcome = stage_on_cluster(cluster, src, digest, [], work, timeout, measure=True)
            chunks.extend([outcome.extra["chunk_size"]] if "chunk_size" in outcome.extra else [])
            return outcome

        def mpi_relayed(write: bool = False) -> Outcome:
            return mpi_relay(cluster, size, chunks[-1] if chunks else 1 << 20, work, timeout,
                             write)

        actions += [("measured", measured), ("mpirelay", mpi_relayed),
                    ("mpirelay.write", lambda: mpi_relayed(write=True))]
    if case.key == "c8":
        actions.append(("startup", lambda: bare_start(cluster, work, timeout)))
    if main:
        actions += [(name, lambda options=options: stage_on_cluster(
            cluster, src, digest, options, work, timeout)) for name, options in FORCED]
    out = run_rounds(actions, repeat, case.key, scale.settle)

    rows: list[Row] = []
    key, hosts = case.key, case.hosts
    p2p = median([o.value for o in out.get("p2p", [])])
    relayed = out["relay"]
    bound = median([o.value for o in relayed])
    if main:
        rows.append(Row(f"{key}.p2p", f"{case.label}: MPI point-to-point h0 → h1 (reference)",
                        "s", p2p, p2p, "p2p", ok=all(o.ok for o in out["p2p"]),
                        notes=errors(out["p2p"]), runs=[o.value for o in out["p2p"]]))
        rows.append(Row(f"{key}.relay", f"{case.label}: plain TCP relay chain, {hosts} hosts",
                        "s", median([o.value for o in relayed]), p2p, "p2p",
                        ok=all(o.ok for o in relayed), runs=[o.value for o in relayed],
                        notes="physical bound, expect ≈ 1.00×" + errors(relayed)))
        rows.append(Row(f"{key}.bcast", f"{case.label}: MPI_Bcast (MPI's default)", "s",
                        median([o.value for o in out["bcast"]]), p2p, "p2p",
                        ok=all(o.ok for o in out["bcast"]),
                        runs=[o.value for o in out["bcast"]], notes=errors(out["bcast"])))
        default = out["default"]
        transfer = median([o.value for o in default])
        whole = median([o.extra.get("elapsed") for o in default])
        ok = all(o.ok for o in default)
        note = f"{verified(default, hosts)}; ran {plans(default)}; {_times(transfer, bound)}"
        rows.append(Row(f"{key}.default", f"{case.label}: mpistage default, transfer", "s",
                        transfer, p2p, "p2p", Goal("ratio", case.limit), ok,
                        f"{note}; whole command {_s(whole)}{errors(default)}",
                        [o.value for o in default]))
        if key == "c8":
            start = out["startup"]
            rows.append(Row(f"{key}.whole", f"{case.label}: mpistage default, whole command",
                            "s", whole, p2p, "p2p", Goal("excess", 0.5), ok,
                            f"{note}; {_excess(whole, p2p)}",
                            [o.extra.get("elapsed") for o in default]))
            rows.append(Row(f"{key}.startup", f"{case.label}: bare Python + mpi4py start and "
                            f"one Barrier on every host", "s", median([o.value for o in start]),
                            ok=all(o.ok for o in start), runs=[o.value for o in start],
                            notes="from process start, slowest rank: the floor under the "
                            "whole command's overhead" + errors(start)))
        for name, options in FORCED:
            runs = out[name]
            rows.append(Row(f"{key}.{name}", f"{case.label}: mpistage {' '.join(options)}",
                            "s", median([o.value for o in runs]), p2p, "p2p",
                            ok=all(o.ok for o in runs), runs=[o.value for o in runs],
                            notes=f"{verified(runs, hosts)}; ran {plans(runs)}; "
                            f"{_times(median([o.value for o in runs]), bound)}; whole command "
                            f"{_s(median([o.extra.get('elapsed') for o in runs]))}{errors(runs)}"))
        rows.append(best_row(f"{key}.best", f"{case.label}: mpistage default vs the best fixed "
                             "choice, transfer", default, out, "value"))
    if cpu:
        middle = cluster.hostnames[1:-1] or cluster.hostnames[1:]
        rows.append(cpu_row(case, set(middle), relayed, out["measured"], out["startup"],
                            out["mpirelay"]))
        rows.append(mpi_cpu_row(case, set(middle), out["measured"], out["mpirelay"]))
        rows.append(mpi_cpu_row(case, set(middle), out["measured"], out["mpirelay.write"],
                                writes=True))
    return rows


def best_row(row_id: str, label: str, default: Sequence[Outcome],
             out: dict[str, list[Outcome]], what: str) -> Row:
    """The default (median of its runs' ``what``: ``value`` or an ``extra`` key) against
    the fastest of the :data:`FIXED` choices run in the same rounds."""
    def seconds(outcomes: Sequence[Outcome]) -> float | None:
        return median([o.value if what == "value" else o.extra.get(what) for o in outcomes])

    fixed = {name: seconds(out[name]) for name, _ in FIXED if name in out}
    measured = {name: value for name, value in fixed.items() if value is not None}
    best = min(measured, key=measured.__getitem__) if measured else None
    listing = ", ".join(f"{name} {_s(value)}" for name, value in sorted(
        measured.items(), key=lambda item: item[1]))
    return Row(row_id, label, "s", seconds(default), measured.get(best) if best else None,
               f"best fixed ({best})" if best else "best fixed", Goal("ratio", BEST_SLACK),
               all(o.ok for o in default) and all(o.ok for name in fixed for o in out[name]),
               f"default ran {plans(default)}; fixed choices, fastest first: {listing}",
               [o.value if what == "value" else o.extra.get(what) for o in default])


def cpu_row(case: ClusterCase, middle: set[str], relayed: Sequence[Outcome],
            measured: Sequence[Outcome], bare: Sequence[Outcome],
            mpi_relayed: Sequence[Outcome]) -> Row:
    """A middle host's mpistage rank (default options, the whole process) against a middle
    host's plain relay process, CPU seconds each (median over the ``middle`` hosts, those
    that both receive and forward, then over the runs); in the notes, a bare mpi4py
    rank's CPU (Python and MPI before any byte moves) and a minimal MPI relay's at the
    same chunk (what MPI itself costs per byte)."""
    mine = median([middle_cpu(o, middle) for o in measured])
    plain = median([o.extra.get("middle_cpu") for o in relayed])
    floor = median([middle_cpu(o, middle) for o in bare])
    mpi_floor = median([middle_cpu(o, middle) for o in mpi_relayed])
    mpi_chunk = next((o.extra["chunk"] for o in mpi_relayed if "chunk" in o.extra), None)
    peak = max((r["maxrss_bytes"] for o in measured for r in o.extra.get("ranks", [])),
               default=0)
    return Row("cpu", f"{case.label}: CPU of a middle host, mpistage default vs plain relay",
               "s CPU", mine, plain, "relay", Goal("ratio", 1.5),
               all(o.ok for o in list(measured) + list(relayed)) and mine is not None,
               f"{verified(measured, case.hosts)}; peak RSS of any rank {peak / MB:.0f} MB; "
               f"a bare mpi4py rank (start, Barrier, exit) {_s(floor)} CPU; a minimal MPI "
               f"relay (mpistage.cluster.mpirelay, chunk "
               f"{format_bytes(mpi_chunk) if mpi_chunk else '-'}) {_s(mpi_floor)} CPU"
               f"{errors(measured)}{errors(relayed)}{errors(mpi_relayed)}",
               [middle_cpu(o, middle) for o in measured])


def middle_cpu(outcome: Outcome, middle: set[str], part: str = "cpu") -> float | None:
    """The median CPU seconds (``part``: ``cpu``, or its ``user`` or ``sys`` share) of
    the ``middle`` hosts' ranks in one run."""
    ranks = [r for r in outcome.extra.get("ranks", []) if r["host"] in middle]
    return statistics.median(r[part] for r in ranks) if ranks else None


def mpi_cpu_row(case: ClusterCase, middle: set[str], measured: Sequence[Outcome],
                mpi_relayed: Sequence[Outcome], writes: bool = False) -> Row:
    """A middle host's mpistage rank (default options) against the minimal MPI relay's
    at the chunk that run chose, in the same round (whole processes both): what mpistage
    adds to MPI's own cost per message (``writes``: to MPI's and the write's, the relay
    writing its copy too; a context row, the issue's goal is on the relay without).  The
    median over rounds of each round's pair; the notes split both into user and system
    CPU (the system CPU includes the emulated links' packet work that the kernel charges
    to whichever rank it interrupts)."""
    pairs = [(mine, mpi) for mine, mpi in zip(measured, mpi_relayed)
             if mine.extra.get("chunk_size") == mpi.extra.get("chunk")]  # a failed run: none
    pairs = [(m, r) for m, r in pairs if middle_cpu(m, middle) is not None
             and middle_cpu(r, middle)]
    ratio = median([middle_cpu(m, middle) / middle_cpu(r, middle) for m, r in pairs])
    mine = median([middle_cpu(m, middle) for m, _ in pairs])
    mpi = median([middle_cpu(r, middle) for _, r in pairs])
    split = "; user + system CPU: mpistage {} + {}, the relay {} + {}".format(
        *(_s(median([middle_cpu(o, middle, part) for o in side]))
          for side in ([m for m, _ in pairs], [r for _, r in pairs])
          for part in ("user", "sys")))
    chunks = ", ".join(format_bytes(o.extra["chunk"]) for o in mpi_relayed if "chunk" in o.extra)
    what = ("writing its copy to the same scratch, no digest, thread or checks" if writes
            else "no file, digest or thread")
    return Row("cpu.write" if writes else "cpu.mpi",
               f"{case.label}: CPU of a middle host, mpistage default vs the minimal MPI relay "
               f"at the same chunk{', writing its copy' if writes else ''}", "s CPU", mine,
               None if ratio is None or mine is None else mine / ratio,
               "MPI relay, writing" if writes else "MPI relay",
               None if writes else Goal("ratio", 1.2),
               all(o.ok for o in list(measured) + list(mpi_relayed)) and bool(pairs),
               f"pairs of one round each, median of their ratios {ratio or 0:.2f}×; the "
               f"relay (mpistage.cluster.mpirelay: the same Irecv/Isend and polling, {what}) "
               f"at {chunks or '-'}; its median {_s(mpi)}{split if pairs else ''}",
               [middle_cpu(m, middle) for m, _ in pairs])


def local_rows(scale: Scale, repeat: int, groups: set[str], work: Path) -> list[Row]:
    """The one-host rows: 1 GiB against two ``cp`` (shm), peak RSS (rss), a 1-byte file
    against a bare Barrier (tiny)."""
    rows: list[Row] = []
    timeout = scale.timeout
    size = scale.local_size
    if groups & {"shm", "rss"}:
        src = work / "source.bin"
        say(f"writing a {format_bytes(size)} sample in {work}")
        write_random_file(src, size, seed=1)
        digest = file_digest(src)
        actions: list[tuple[str, Callable[[], Outcome]]] = []
        if "shm" in groups:
            actions += [("cp", lambda: parallel_cp(src, work)),
                        ("mpistage", lambda: stage_locally(2, src, digest, [], work, timeout))]
            actions += [(name, lambda options=options: stage_locally(
                2, src, digest, options, work, timeout)) for name, options in FIXED]
        if "rss" in groups:
            actions += [(f"rss-{name}", lambda options=options: stage_locally(
                2, src, digest, options, work, timeout, measure=True))
                for name, options in (("auto", ["-c", "auto"]), ("default", []))]
        out = run_rounds(actions, repeat, "one host", scale.settle)
        label = f"one host, 2 ranks as nodes, {format_bytes(size)} tmpfs → tmpfs"
        if "shm" in groups:
            mine, cps = out["mpistage"], out["cp"]
            rows.append(Row(
                "shm", f"{label}: whole mpiexec vs two parallel cp", "s",
                median([o.value for o in mine]), median([o.value for o in cps]), "2 × cp",
                Goal("ratio", 1.25), all(o.ok for o in mine + cps),
                f"{verified(mine, 2)}; ran {plans(mine)}; transfer "
                f"{_s(median([o.extra.get('transfer') for o in mine]))}{errors(mine + cps)}",
                [o.value for o in mine]))
            rows.append(best_row("shm.best", f"{label}: mpistage default vs the best fixed "
                                 "choice, whole mpiexec", mine, out, "value"))
        if "rss" in groups:
            for name, options in (("auto", "-c auto"), ("default", "default options")):
                runs = out[f"rss-{name}"]
                peaks = [max((r["maxrss_bytes"] for r in o.extra.get("ranks", [])), default=0)
                         / MB if o.extra.get("ranks") else None for o in runs]
                rows.append(Row(f"rss.{name}", f"{label}: peak RSS of any rank, {options}", "MB",
                                median(peaks), None, "", Goal("max", 150),
                                all(o.ok for o in runs), f"{verified(runs, 2)}; ran {plans(runs)}"
                                f"{errors(runs)}", peaks))
        src.unlink(missing_ok=True)
    if "tiny" in groups:
        rows.append(tiny_row(scale, repeat, work))
    return rows


def tiny_row(scale: Scale, repeat: int, work: Path) -> Row:
    """A 1-byte file to N ranks on one host against a bare Barrier under the same mpiexec:
    what mpistage's own start-up, planning and closing cost when no data moves."""
    ranks, timeout = scale.tiny_ranks, scale.timeout
    src = work / "one-byte.bin"
    src.write_bytes(b"x")
    digest = file_digest(src)
    barrier = [sys.executable, "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"]

    def bare() -> Outcome:
        run, wall = local_mpiexec(ranks, barrier, timeout)
        if run.returncode != 0:
            return Outcome(None, ok=False,
                           error=f"barrier exit {run.returncode}: {run.stderr[-300:]}")
        return Outcome(wall)

    actions = [("barrier", bare), ("mpistage", lambda: stage_locally(ranks, src, digest, [], work,
                                                                     timeout))]
    run_rounds(actions, 1, "one host warm-up")
    out = run_rounds(actions, repeat, "one host", scale.settle)
    mine, ref = out["mpistage"], out["barrier"]
    return Row("tiny", f"one host, 1-byte file to {ranks} ranks: whole mpiexec vs bare Barrier",
               "s", median([o.value for o in mine]), median([o.value for o in ref]),
               "Barrier", Goal("ratio", 1.5), all(o.ok for o in mine + ref),
               f"{verified(mine, ranks)}{errors(mine + ref)}", [o.value for o in mine])


def import_row(scale: Scale) -> Row:
    """``import mpistage.cli.main`` beyond ``import mpi4py.MPI`` (which initializes MPI), each a
    fresh interpreter, alternating so both see the same machine; difference of medians."""
    bare_code, full_code = "import mpi4py.MPI", "import mpi4py.MPI, mpistage.cli.main"
    bare, full = [], []
    try:
        python_seconds(full_code)  # warm the page cache
        for _ in range(scale.import_runs):
            bare.append(python_seconds(bare_code))
            full.append(python_seconds(full_code))
    except subprocess.SubprocessError as exc:
        return Row("import", "import mpistage.cli.main beyond import mpi4py.MPI", "s", None,
                   goal=Goal("max", 0.08), ok=False, notes=f"error: {exc}"[:300])
    say(f"import: mpi4py.MPI {statistics.median(bare):.3f} s, with mpistage.cli.main "
        f"{statistics.median(full):.3f} s")
    without, with_cli = statistics.median(bare), statistics.median(full)
    return Row("import", "import mpistage.cli.main beyond import mpi4py.MPI", "s",
               with_cli - without, without, "mpi4py", Goal("max", 0.08),
               notes=f"median of {scale.import_runs}: import mpi4py.MPI {without:.3f} s, "
               f"with mpistage.cli.main {with_cli:.3f} s", runs=[f - b for f, b in zip(full, bare)])


# -- output -------------------------------------------------------------------------------

def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def _times(seconds: float | None, relay_seconds: float | None) -> str:
    """``1.32× relay``: the time against the physical bound measured on the same cluster,
    which is above p2p where the machine's cores, not the links, are what limits."""
    if seconds is None or not relay_seconds:
        return ""
    return f"{seconds / relay_seconds:.2f}× relay"


def _excess(measured: float | None, reference: float | None) -> str:
    if measured is None or reference is None:
        return ""
    return f"{measured - reference:+.2f} s over p2p"


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "failed"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3f} {unit}" if value < 0.1 else f"{value:.2f} {unit}"


def table(rows: Sequence[Row]) -> list[str]:
    """The Markdown table: case, measured, reference, ratio, goal, met?, notes."""
    lines = ["| case | measured | reference | ratio | goal | met? | notes |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        reference = (f"{_value(row.reference, row.unit)} ({row.reference_label})"
                     if row.reference is not None else "")
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        if row.goal and row.goal.kind == "excess" and row.measured is not None and row.reference:
            ratio = f"{row.measured - row.reference:+.2f} s"
        goal = row.goal.text(row.unit) if row.goal else ""
        if not row.ok or row.measured is None:
            met = "FAILED"
        else:
            met = {None: "", True: "yes", False: "**no**"}[row.met]
        lines.append(f"| {row.case} | {_value(row.measured, row.unit)} | {reference} | {ratio}"
                     f" | {goal} | {met} | {row.notes} |")
    return lines


def code_version() -> str | None:
    """The checkout's commit, ``-dirty`` when tracked files differ from it: with an editable
    install, edits made while the benchmark runs change what later rows measure."""
    described = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                               capture_output=True, text=True).stdout.strip()
    return described or None


def machine(code_at_start: str | None, load_at_start: float) -> dict[str, Any]:
    """What the numbers were measured on (a 2-core machine is not a cluster), and whether
    the code or the machine's load changed during the run."""
    from mpi4py import MPI

    return {"host": socket.gethostname(), "cores": os.cpu_count(), "python": sys.version.split()[0],
            "mpi": MPI.Get_library_version().splitlines()[0].strip(), "mpistage": __version__,
            "code_at_start": code_at_start, "code_at_end": code_version(),
            "load_at_start": load_at_start, "load_at_end": os.getloadavg()[0]}


def write_results(out_dir: Path, rows: Sequence[Row], scale: Any, repeat: int,
                  started: float, code: str | None, load: float, name: str = "limits") -> str:
    """``NAME.md`` and ``NAME.json`` in ``out_dir`` (``bench/trees.py`` writes its own
    with ``name="trees"``); returns the Markdown."""
    info = machine(code, load)
    minutes = (time.time() - started) / 60
    if info["code_at_start"] == info["code_at_end"]:
        version = f"code {code}"
    else:
        version = f"code CHANGED during the run: {code} → {info['code_at_end']}"
    header = (f"mpistage {name} ({scale.name}): median of {repeat}; {info['cores']} cores, "
              f"{info['mpi']}, mpistage {info['mpistage']}, {version}; load average "
              f"{load:.1f} → {info['load_at_end']:.1f}; took {minutes:.1f} min")
    text = "\n".join([header, "", *table(rows)]) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.md").write_text(text)
    (out_dir / f"{name}.json").write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "scale": scale.name, "repeat": repeat, "minutes": minutes, "machine": info,
        "rows": [r.to_dict() for r in rows],
        "missed": [r.id for r in rows if r.met is False],
        "failed": [r.id for r in rows if not r.ok or r.measured is None],
    }, indent=2) + "\n")
    return text


# -- command line -------------------------------------------------------------------------

def _groups(text: str) -> set[str]:
    chosen = {g.strip() for g in text.split(",") if g.strip()}
    unknown = chosen - set(GROUPS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown row {', '.join(sorted(unknown)) or text!r}: "
                                         f"expected some of {','.join(GROUPS)}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, help="runs per row, the median is shown "
                        "(default 3; 1 with --small)")
    parser.add_argument("--small", action="store_true",
                        help="quick version for CI: 3- and 4-host clusters at 1gbit, a few MiB, "
                        "goals shown but not enforced")
    parser.add_argument("--only", type=_groups, default=set(GROUPS), metavar="ROW[,ROW]",
                        help=f"run these rows only: {','.join(GROUPS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="directory for limits.md and limits.json (default bench/results)")
    return parser


def run(scale: Scale, repeat: int, groups: set[str], name: str, rows: list[Row]) -> None:
    """Every chosen row, appended to ``rows`` as each case ends (an interrupted run keeps
    what it measured); each cluster up only for its own rows, and down again even when a
    run fails or the benchmark is interrupted."""
    with tempfile.TemporaryDirectory(prefix="mpistage-limits-") as tmp:
        work = Path(tmp)
        for case in scale.clusters:
            main, cpu = case.key in groups, case.key == "c8" and "cpu" in groups
            if not (main or cpu):
                continue
            src = work / f"sample-{case.key}.bin"
            write_random_file(src, case.size, seed=2)
            say(f"{case.key}: bringing up {case.label}")
            with EmulatedCluster(hosts=case.hosts, rate=case.rate, name=name) as cluster:
                rows += cluster_rows(case, cluster, src, work, scale, repeat, main, cpu)
            src.unlink()
    if groups & {"shm", "rss", "tiny"}:
        with tempfile.TemporaryDirectory(prefix="mpistage-limits-", dir="/dev/shm") as shm:
            rows += local_rows(scale, repeat, groups, Path(shm))
    if "import" in groups:
        rows.append(import_row(scale))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scale = SMALL if args.small else FULL
    repeat = args.repeat or scale.repeat
    name = "limitsmall" if args.small else "limits"  # a CI run never takes down a full run
    if os.geteuid() != 0 and args.only & {"c8", "cpu", "c16", "c8g"}:
        print("limits: the cluster rows need root (network namespaces); "
              "--only shm,rss,tiny,import runs without", file=sys.stderr)
        return 2
    started, code, load = time.time(), code_version(), os.getloadavg()[0]
    if os.geteuid() == 0:
        teardown(name)  # what a killed run may have left
    rows: list[Row] = []
    try:
        with interrupts_as_exceptions():
            run(scale, repeat, args.only, name, rows)
    except KeyboardInterrupt:
        if rows:
            write_results(args.out, rows, scale, repeat, started, code, load)
        print("limits: interrupted; every cluster was taken down"
              + (f"; the rows done are in {args.out}" if rows else ""), file=sys.stderr)
        return 130
    except ClusterError as exc:
        print(f"limits: error: {exc}", file=sys.stderr)
        return 2
    text = write_results(args.out, rows, scale, repeat, started, code, load)
    print(text, end="", flush=True)
    failed = [r.id for r in rows if not r.ok or r.measured is None]
    missed = [r.id for r in rows if r.met is False]
    if failed:
        print(f"limits: failed runs: {', '.join(failed)}", file=sys.stderr)
    if missed:
        print(f"limits: goals missed: {', '.join(missed)}"
              + (" (not enforced with --small)" if args.small else ""), file=sys.stderr)
    return 1 if failed or (missed and not args.small) else 0


if __name__ == "__main__":
    sys.exit(main())
