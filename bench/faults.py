"""Faults on the emulated cluster, measured: the figures of docs/failures.md.

As root (the tests bring up and tear down their own emulated clusters):

    python bench/faults.py                 # MPICH: the fault tests, 20 randomised kills
    python bench/faults.py --kill-runs 50 --openmpi --slurm   # and every launcher
    python bench/faults.py --render        # faults.md again from faults.json (no runs)

It runs the fault tests themselves (``tests/test_faults.py``, ``tests/test_random_kills.py``;
with ``--openmpi`` a lost node under Open MPI's ``mpirun``, with and without
``--with-ft ulfm``; with ``--slurm`` under ``srun``), each writing what it measured into
its JUnit XML (``record_property``), and renders those records: every case with its
outcome, plan and times; a lost node by launcher; the randomised series.  So the docs'
figures are the ones the tests measured in one run, not typed by hand.

Writes ``faults.json`` (every record) and ``faults.md`` (included by docs/failures.md)
into ``--out`` (default ``bench/results``).  Exits 1 if a test failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FAMILY = "tests/test_faults.py::test_a_lost_node_costs_only_itself"
HYDRA_PLAIN = "tests/test_faults.py::test_c_rank_killed_under_a_launcher_that_ends_the_job"
SRUN = "tests/test_slurm.py::test_srun_a_lost_node_costs_only_itself"


@dataclass(frozen=True)
class Leg:
    """One pytest run: its MPI (``MPISTAGE_MPI``), its tests, and its launcher's name."""

    name: str
    mpi: str
    tests: tuple[str, ...]
    launcher: str = ""
    env: dict[str, str] = field(default_factory=dict)
    select: str = ""


@dataclass
class Record:
    """One test case as its JUnit XML tells it."""

    leg: str
    test: str
    outcome: str  # passed, failed, xfailed, skipped
    seconds: float
    properties: dict[str, Any]
    message: str = ""


def legs(kill_runs: int, openmpi: bool, slurm: bool) -> list[Leg]:
    chosen = [
        Leg("mpich", "mpich", ("tests/test_faults.py",), "MPICH hydra"),
        Leg("random kills", "mpich", ("tests/test_random_kills.py",), "MPICH hydra",
            env={"MPISTAGE_KILL_RUNS": str(kill_runs)}),
    ]
    if openmpi:
        chosen.append(Leg("openmpi", "openmpi", (FAMILY, HYDRA_PLAIN), "Open MPI mpirun",
                          select="kill and middle or launcher_that_ends"))
    if slurm:
        chosen.append(Leg("srun pmi2", "mpich", (SRUN,), "Slurm srun --mpi=pmi2"))
    return chosen


def run_leg(leg: Leg, xml: Path) -> int:
    """Run ``leg``'s tests in its MPI's environment (jobscripts/env.sh), JUnit XML to ``xml``."""
    select = ["-k", leg.select] if leg.select else []
    argv = ["python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rxX", *select,
            f"--junitxml={xml}", *leg.tests]
    script = "source jobscripts/env.sh >/dev/null && exec " + " ".join(
        f"'{a}'" for a in argv)
    env = {**os.environ, "MPISTAGE_MPI": leg.mpi, **leg.env}
    print(f"== {leg.name}: {' '.join(argv)}", flush=True)
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env).returncode


def read_records(leg: str, xml: Path) -> list[Record]:
    """Every test case of a JUnit XML (``junit_family = xunit1``, setup.cfg), with the
    properties it recorded (numbers and dicts parsed back)."""
    records = []
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                message = (found.get("message") or "").strip()
                outcome = {"failure": "failed", "error": "failed"}.get(tag, "skipped")
                if tag == "skipped" and found.get("type") == "pytest.xfail":
                    outcome = "xfailed"
        properties = {p.get("name"): _value(p.get("value") or "")
                      for p in case.iter("property")}
        name = f"{case.get('file') or case.get('classname', '')}::{case.get('name')}"
        records.append(Record(leg, name, outcome, float(case.get("time") or 0), properties,
                              message.splitlines()[0][:200] if message else ""))
    return records


def _value(text: str) -> Any:
    """A recorded property back as what it was (pytest writes ``str(value)``)."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text.startswith("{"):
        try:
            return json.loads(text.replace("'", '"'))
        except ValueError:
            pass
    return text


def _case(test: str) -> str:
    """``tests/test_faults.py::test_x[kill a middle node-64 KiB chunks]`` → ``x [kill a
    middle node, 64 KiB chunks]``, the name as a table shows it."""
    name = test.split("::")[-1].removeprefix("test_")
    base, _, params = name.partition("[")
    words = base.replace("_", " ")
    return f"{words} [{params.rstrip(']').replace('-', ', ')}]" if params else words


def _seconds(record: Record, key: str) -> str:
    value = record.properties.get(key)
    if not isinstance(value, (int, float)):
        return ""
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def render(records: list[Record], command: str, when: str) -> str:
    """The Markdown docs/failures.md includes: three tables from the same records."""
    lines = [f"Measured {when} by `{command}` (5 hosts at 100 Mbit/s, 32 MiB, "
             "`--timeout 5`, unless a case says otherwise; times in seconds).", ""]
    lines += ["| case | outcome | plan | fault-free run | whole run | reported after the fault "
              "| launcher's status |", "|---|---|---|---|---|---|---|"]
    for r in records:
        if r.leg != "mpich":
            continue
        outcome = r.outcome + (f": {r.message}" if r.outcome != "passed" and r.message else "")
        lines.append(f"| {_case(r.test)} | {outcome} | {r.properties.get('plan', '')} "
                     f"| {_seconds(r, 'fault_free')} | {_seconds(r, 'elapsed')} "
                     f"| {_seconds(r, 'seconds_to_report')} "
                     f"| {r.properties.get('mpiexec_status', '')} |")
    lines += ["", "A node's rank killed (SIGKILL) mid-transfer, by launcher:", "",
              "| launcher | case | outcome | reported after the kill | launcher's status |",
              "|---|---|---|---|---|"]
    for r in records:
        launcher = _launcher(r)
        if launcher:
            outcome = r.outcome + (f": {r.message}" if r.outcome != "passed" and r.message else "")
            lines.append(f"| {launcher} | {_case(r.test)} | {outcome} "
                         f"| {_seconds(r, 'seconds_to_report')} "
                         f"| {r.properties.get('mpiexec_status', '')} |")
    for r in records:
        if r.leg == "random kills":
            outcomes = r.properties.get("outcomes", {})
            runs = sum(n for k, n in outcomes.items() if not k.startswith("relaunched")) \
                if isinstance(outcomes, dict) else "?"
            lines += ["", f"Randomised kills (`tests/test_random_kills.py`, seed "
                      f"{r.properties.get('seed', '?')}, {runs} runs, {r.outcome}): "
                      "how each run ended:", "", "| outcome | runs |", "|---|---|"]
            if isinstance(outcomes, dict):
                ranked = sorted(outcomes.items(), key=lambda kv: -kv[1])
                lines += [f"| {k} | {n} |" for k, n in ranked]
    return "\n".join(lines) + "\n"


def _launcher(record: Record) -> str:
    """The launcher a lost-node record ran under, or ``""`` for the other cases."""
    name = record.test.split("::")[-1]
    killed = name.startswith("test_a_lost_node_costs_only_itself[kill a middle node")
    if record.leg == "mpich" and killed:
        return "MPICH hydra, `-disable-auto-cleanup`"
    if record.leg == "mpich" and "launcher_that_ends" in name:
        return "MPICH hydra, plain"
    if record.leg == "openmpi" and killed:
        return "Open MPI `mpirun --with-ft ulfm`"
    if record.leg == "openmpi" and "launcher_that_ends" in name:
        return "Open MPI `mpirun`, plain"
    if record.leg == "srun pmi2":
        return "Slurm `srun --mpi=pmi2` (MPICH)"
    return ""


def summary(records: list[Record]) -> dict[str, Any]:
    """Counts by outcome, and the lost-node family's report times (median, max)."""
    family = [r.properties["seconds_to_report"] for r in records
              if "costs_only_itself" in r.test and r.outcome == "passed"
              and isinstance(r.properties.get("seconds_to_report"), (int, float))]
    return {"outcomes": dict(Counter(r.outcome for r in records)),
            "lost node reported after": {"median": statistics.median(family),
                                         "max": max(family)} if family else {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-runs", type=int, default=20, metavar="N",
                        help="randomised kills to run (default 20)")
    parser.add_argument("--openmpi", action="store_true",
                        help="also a lost node under Open MPI's mpirun (with and without ULFM)")
    parser.add_argument("--slurm", action="store_true", help="also a lost node under srun")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--render", action="store_true",
                        help="only render faults.md again from the records in faults.json")
    args = parser.parse_args(argv)
    if args.render:
        recorded = json.loads((args.out / "faults.json").read_text())
        records = [Record(**r) for r in recorded["records"]]
        (args.out / "faults.md").write_text(render(records, recorded["command"],
                                                   recorded["date"]))
        return 0
    if os.geteuid() != 0:
        print("bench/faults.py: needs root (the emulated cluster)", file=sys.stderr)
        return 2
    command = "python bench/faults.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    records: list[Record] = []
    status = 0
    with tempfile.TemporaryDirectory() as scratch:
        for leg in legs(args.kill_runs, args.openmpi, args.slurm):
            xml = Path(scratch) / f"{leg.name.replace(' ', '-')}.xml"
            status |= run_leg(leg, xml) != 0
            if xml.exists():
                records += read_records(leg.name, xml)
    when = time.strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(
        {"command": command, "date": when, "summary": summary(records),
         "records": [asdict(r) for r in records]}, indent=1) + "\n")
    text = render(records, command, when)
    (args.out / "faults.md").write_text(text)
    print(text)
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
