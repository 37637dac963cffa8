"""Randomised transfers through ``mpistage.stage()``, each checked against what the
options promise: ``mpiexec -n 9 python tests/fuzz.py N`` (``bash tests/fuzz.sh N`` sets it
up), ending with the one line ``N transfers, M mismatches`` and exit 0 iff M is 0.

One long-lived job runs every transfer, because starting MPI costs more than a transfer:
rank 0 draws each case with Hypothesis (nodes 1-9, root, algorithm, chunk, depth, file
size around the chunk boundaries, ``ranks_as_nodes``, what already stands at DEST, and
injected faults), prepares the files, and broadcasts the case; the first ``ranks`` ranks
then call ``stage()`` on a sub-communicator while the others wait for the next case.
Every rank lives on this one host, so rank 0 can look at every node's directory
afterwards: it compares the whole case directory with the state the options promise
(bytes, mode and mtime of each copy, old files untouched where no copy was made, symlink
targets untouched, no temp file) and each rank's report or error with the expected one.
A mismatch is counted and printed (with the case as JSON, for ``--case``), never raised,
so one run reports them all.

    mpiexec -n 9 python tests/fuzz.py 1000
    mpiexec -n 9 python tests/fuzz.py --case '{"ranks": 4, ...}'   # replay one case
    FUZZ_SEED=123 bash tests/fuzz.sh 200                          # repeat a run
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from mpi4py import MPI

import mpistage
from mpistage.engine.algorithms import SCHEDULES
from mpistage.errors import UsageError
from mpistage.faults import ENV as FAULTS_ENV
from mpistage.model import Parameters
from mpistage.sinks.file import TEMP_SUFFIX

WORLD = MPI.COMM_WORLD
#: A fixed, plausible link: no case pays for a link probe unless it draws ``calibrated=False``.
CALIBRATION = Parameters(latency=20e-6, bandwidth=1e9)
SOURCE_MTIME_NS = 1_600_000_000_123_456_789
SOURCE_NAME = "data.bin"
#: What may already stand at a node's final path before the run.
EXISTING = ("none", "same", "different", "larger", "symlink", "dangling")
ALGORITHMS = (*SCHEDULES, "auto")
#: Chunk sizes: powers of two from 1 KiB to 256 KiB, odd ones, and a few tiny ones.
CHUNKS = st.one_of(st.sampled_from([1 << k for k in range(10, 19)]),
                   st.integers(1000, 262143).map(lambda n: n | 1),
                   st.sampled_from([1, 7, 512]))
#: Source modes, setuid and world-writable ones included (never carried to a copy).
MODES = (0o644, 0o600, 0o755, 0o666, 0o4755, 0o2750)


@dataclass(frozen=True)
class Case:
    """One transfer: the options of ``stage()``, the state of DEST and the faults.

    Node ``i`` is rank ``i`` with ``ranks_as_nodes``; without it every rank is on this
    one host, so there is exactly one node (led by the root), whatever ``ranks`` is.
    """

    ranks: int
    root: int
    ranks_as_nodes: bool
    algorithm: str
    chunk: int
    auto_chunk: bool
    depth: int
    arity: int
    size: int
    mode: int
    data_seed: int
    dest_form: str  # "file": n{node}/copy.bin; "dir/": n{node}/ (the copy keeps its name)
    existing: tuple[str, ...]  # per node, one of EXISTING
    missing_dir: tuple[int, ...]  # nodes whose directory is removed: pre-flight fails
    write_fails: int | None  # node whose writes past ``size // 2`` fail (RLIMIT_FSIZE)
    corrupt: int | None  # node whose first received chunk gets a flipped byte
    skip_bad_nodes: bool
    mkdir: bool
    no_clobber: bool
    quick: bool
    remove_first: bool
    verify: bool
    fsync: bool
    calibrated: bool

    @property
    def nodes(self) -> int:
        return self.ranks if self.ranks_as_nodes else 1

    @property
    def root_node(self) -> int:
        return self.root if self.ranks_as_nodes else 0

    def leader(self, node: int) -> int:
        """The rank that writes node ``node``'s copy."""
        return node if self.ranks_as_nodes else self.root

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Case:
        data = json.loads(text)
        for name in ("existing", "missing_dir"):
            data[name] = tuple(data[name])
        return cls(**data)


def sizes(chunk: int) -> st.SearchStrategy[int]:
    """File sizes that matter for ``chunk``: empty, one byte, each side of one and of k
    chunks, and anything up to six chunks."""
    edges = [0, 1, chunk - 1, chunk, chunk + 1]
    edges += [k * chunk + d for k in range(2, 7) for d in (-1, 0, 1)]
    return st.one_of(st.sampled_from(sorted({max(e, 0) for e in edges})),
                     st.integers(0, 6 * chunk + 1))


def sometimes(percent: int) -> st.SearchStrategy[bool]:
    """``True`` in about ``percent`` % of the draws (an option that changes the promise
    should not hide most of the others)."""
    return st.integers(0, 99).map(lambda n: n < percent)


def maybe_node(nodes: int, percent: int) -> st.SearchStrategy[int | None]:
    return sometimes(percent).flatmap(
        lambda yes: st.integers(0, nodes - 1) if yes else st.none())


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A transfer to run."""
    ranks = draw(st.integers(1, WORLD.size))
    ranks_as_nodes = draw(sometimes(75))
    nodes = ranks if ranks_as_nodes else 1
    chunk = draw(CHUNKS)
    root = draw(st.integers(0, ranks - 1))
    missing = draw(sometimes(20).flatmap(
        lambda yes: st.sets(st.integers(0, nodes - 1), min_size=1, max_size=2)
        if yes else st.just(set())))
    corrupt = draw(maybe_node(nodes, 25))
    verify = draw(sometimes(20))
    return Case(
        ranks=ranks, root=root, ranks_as_nodes=ranks_as_nodes,
        algorithm=draw(st.sampled_from(ALGORITHMS)), chunk=chunk, auto_chunk=draw(sometimes(10)),
        depth=draw(st.integers(2, 8)), arity=draw(st.integers(2, 4)), size=draw(sizes(chunk)),
        mode=draw(st.sampled_from(MODES)), data_seed=draw(st.integers(0, 2**32 - 1)),
        dest_form=draw(st.sampled_from(["file", "dir/"])),
        existing=tuple(draw(st.lists(st.sampled_from(EXISTING), min_size=nodes,
                                     max_size=nodes))),
        missing_dir=tuple(sorted(missing)), write_fails=draw(maybe_node(nodes, 25)),
        corrupt=corrupt, skip_bad_nodes=draw(st.booleans()),
        mkdir=draw(sometimes(10)), no_clobber=draw(sometimes(10)), quick=draw(sometimes(20)),
        remove_first=draw(sometimes(20)), verify=verify, fsync=draw(sometimes(5)),
        calibrated=draw(sometimes(85)),
    )


# -- the files: prepared, snapshot and expected on rank 0 -------------------------------

Entry = tuple[Any, ...]  # ("dir",) | ("link", target) | ("file", sha, mode, mtime_ns, ino, size)
ANY_INODE = -1


def snapshot(top: Path) -> dict[str, Entry]:
    """Everything under ``top`` (symlinks not followed), by relative path."""
    found: dict[str, Entry] = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            rel = str(path.relative_to(top))
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir",)
            else:
                found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                              stat.S_IMODE(info.st_mode), info.st_mtime_ns, info.st_ino,
                              info.st_size)
    return found


def same_entry(expected: Entry, actual: Entry | None) -> bool:
    if actual is None or expected[0] != actual[0]:
        return False
    if expected[0] == "file" and expected[4] == ANY_INODE:
        return expected[:4] + expected[5:] == actual[:4] + actual[5:]
    return expected == actual


@dataclass
class Area:
    """One case's directory: the source, ``n{i}`` per node, the symlinks' victims."""

    top: Path
    case: Case
    data: bytes = b""
    before: dict[str, Entry] = field(default_factory=dict)

    @property
    def source(self) -> Path:
        return self.top / "src" / SOURCE_NAME

    @property
    def dest(self) -> str:
        if self.case.dest_form == "file":
            return str(self.top / "n{node}" / "copy.bin")
        return str(self.top / "n{node}") + "/"

    @property
    def reads_shares(self) -> bool:
        """Every node reads a share of the source (the ring)."""
        algorithm = SCHEDULES.get(self.case.algorithm)
        return algorithm is not None and algorithm.every_node_reads

    def final(self, node: int) -> str:
        """The final path of node ``node``, relative to ``top``."""
        return f"n{node}/copy.bin" if self.case.dest_form == "file" else f"n{node}/{SOURCE_NAME}"

    def prepare(self) -> None:
        case = self.case
        rng = random.Random(case.data_seed)
        self.data = rng.randbytes(case.size)
        (self.top / "src").mkdir(parents=True)
        (self.top / "victims").mkdir()
        self.source.write_bytes(self.data)
        os.chmod(self.source, case.mode)
        os.utime(self.source, ns=(SOURCE_MTIME_NS, SOURCE_MTIME_NS))
        for node in range(case.nodes):
            if node in case.missing_dir:
                continue  # DEST's directory is missing: the node fails pre-flight
            (self.top / f"n{node}").mkdir()
            final = self.top / self.final(node)
            kind = case.existing[node]
            if kind == "same":
                final.write_bytes(self.data)
                os.utime(final, ns=(SOURCE_MTIME_NS, SOURCE_MTIME_NS))
            elif kind == "different":  # same size, other bytes (none differ when empty)
                other = bytearray(self.data)
                if other:
                    other[rng.randrange(len(other))] ^= 0x5A
                final.write_bytes(other)
            elif kind == "larger":
                final.write_bytes(rng.randbytes(case.size + 1 + rng.randrange(case.chunk + 1)))
            elif kind == "symlink":
                victim = self.top / "victims" / f"v{node}"
                victim.write_bytes(rng.randbytes(100))
                final.symlink_to(victim)
            elif kind == "dangling":
                final.symlink_to(self.top / "victims" / f"missing{node}")
        self.before = snapshot(self.top)

    # -- what the options promise -----------------------------------------------------

    def problems(self) -> dict[int, str]:
        """Nodes that fail the pre-flight check, and what their error says."""
        found = self.missing()
        if self.case.no_clobber:
            found.update({node: "exists and differs from the source"
                          for node in range(self.case.nodes) if node not in found
                          and self.occupied(node) and not self.up_to_date(node)})
        return found

    def missing(self) -> dict[int, str]:
        """Nodes without DEST's directory.  Pre-flight looks at them first: without
        ``skip_bad_nodes`` they alone are named, before ``no_clobber`` is looked at."""
        if self.case.mkdir:
            return {}
        return {node: "does not exist" for node in self.case.missing_dir}

    def occupied(self, node: int) -> bool:
        return self.final(node) in self.before

    def up_to_date(self, node: int) -> bool:
        """An existing regular file of the same size and digest (``quick``: size and
        mtime) counts as a copy."""
        entry = self.before.get(self.final(node))
        if entry is None or entry[0] != "file":
            return False
        if entry[5] != self.case.size:
            return False
        if self.case.quick:
            return entry[3] == SOURCE_MTIME_NS
        return entry[1] == hashlib.sha256(self.data).hexdigest()

    def statuses(self) -> list[tuple[str, str | None]]:
        """Each node's status and what its error says, as the options promise them
        (with ``skip_bad_nodes``, or when no node is bad)."""
        case = self.case
        problems = self.problems()
        out: list[tuple[str, str | None]] = []
        for node in range(case.nodes):
            if node in problems:
                out.append(("skipped", problems[node]))
            elif self.up_to_date(node):
                out.append(("up-to-date", None))
            elif case.write_fails == node and case.size > 0:  # writes past size // 2 fail
                out.append(("failed", "File too large"))
            elif case.corrupt == node and case.size > 0:  # its first chunk is damaged
                # where every node reads a share, each chunk is checked as it is written
                # against its reader's digest; elsewhere the copy's against the source's
                out.append(("failed", "differs from what its reader read"
                            if self.reads_shares else "digest mismatch"))
            else:
                out.append(("copied", None))
        return out

    def expected_files(self, statuses: list[str] | None) -> dict[str, Entry]:
        """The case directory after the run; ``statuses`` ``None``: the run stopped at
        pre-flight (nothing written, but what ``mkdir`` made)."""
        case = self.case
        after = dict(self.before)
        for node in range(case.nodes):
            if node in case.missing_dir and case.mkdir:
                after[f"n{node}"] = ("dir",)
        if statuses is None:
            return after
        copy_mode = case.mode & 0o777 & ~current_umask() & ~0o002  # never setuid/setgid
        digest = hashlib.sha256(self.data).hexdigest()
        for node, status in enumerate(statuses):
            final = self.final(node)
            if status == "copied":
                after[final] = ("file", digest, copy_mode, SOURCE_MTIME_NS, ANY_INODE,
                                case.size)
            elif status == "failed" and case.remove_first and self.before.get(
                    final, ("",))[0] == "file":
                del after[final]  # the outdated copy went first, to make room
        return after

    def compare_files(self, expected: dict[str, Entry]) -> list[str]:
        actual = snapshot(self.top)
        wrong = []
        for rel in sorted(set(expected) | set(actual)):
            want, got = expected.get(rel), actual.get(rel)
            if want is None:
                temp = " (a temp file)" if rel.endswith(TEMP_SUFFIX) else ""
                wrong.append(f"unexpected {rel}{temp}: {got}")
            elif not same_entry(want, got):
                wrong.append(f"{rel}: expected {want}, found {got}")
        return wrong


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- one transfer, on every rank ---------------------------------------------------------

Outcome = tuple[str, Any]  # ("report", StageReport) | ("usage", message) | ("error", text)


def transfer(case: Case, top: str) -> Outcome | None:
    """Run ``case`` on the first ``case.ranks`` ranks (collective over the world);
    this rank's outcome, ``None`` on the ranks left out."""
    sub = WORLD.Split(0 if WORLD.rank < case.ranks else MPI.UNDEFINED, key=WORLD.rank)
    if sub == MPI.COMM_NULL:
        return None
    area = Area(Path(top), case)
    faults = [f"corrupt-chunk@{case.corrupt}"] if case.corrupt is not None else []
    os.environ[FAULTS_ENV] = ",".join(faults)  # read at call time, by the node's leader
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    failing = case.write_fails is not None and sub.rank == case.leader(case.write_fails)
    if failing:  # the kernel refuses writes past half the file: EFBIG, mid-transfer
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (case.size // 2, limits[1]))
    try:
        report = mpistage.stage(
            area.source, area.dest, comm=sub, algorithm=case.algorithm,
            chunk_size="auto" if case.auto_chunk else case.chunk, root=case.root,
            ranks_as_nodes=case.ranks_as_nodes, arity=case.arity, depth=case.depth,
            calibration=CALIBRATION if case.calibrated else None, timeout=30.0,
            skip_bad_nodes=case.skip_bad_nodes, mkdir=case.mkdir, no_clobber=case.no_clobber,
            quick=case.quick, remove_first=case.remove_first, verify=case.verify,
            fsync=case.fsync)
        return ("report", report)
    except UsageError as exc:
        return ("usage", str(exc))
    except Exception:  # noqa: BLE001 (counted as a mismatch, with its traceback)
        return ("error", traceback.format_exc(limit=-6))
    finally:
        if failing:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        os.environ.pop(FAULTS_ENV, None)
        sub.Free()


def judge(area: Area, outcomes: list[Outcome]) -> list[str]:
    """Rank 0: what differs from the promise, from every rank's outcome and the files."""
    case = area.case
    wrong: list[str] = []
    problems = area.problems()
    kinds = {kind for kind, _ in outcomes}
    errors = [f"rank {r}: {text}" for r, (kind, text) in enumerate(outcomes) if kind == "error"]
    if errors:
        return ["unexpected exception: " + "\n".join(errors)]
    if problems and not case.skip_bad_nodes:
        messages = {text for kind, text in outcomes if kind == "usage"}
        if kinds != {"usage"} or len(messages) != 1:
            wrong.append(f"expected the same UsageError on every rank (bad nodes "
                         f"{problems}), got {[(k, str(v)[:200]) for k, v in outcomes]}")
        elif not all(why in next(iter(messages)) for why in
                     (area.missing() or problems).values()):
            wrong.append(f"the UsageError {messages} does not say {area.missing() or problems}")
        return wrong + area.compare_files(area.expected_files(None))
    if kinds != {"report"}:
        return [f"expected a report on every rank, got "
                f"{[(k, str(v)[:300]) for k, v in outcomes]}"]
    report = outcomes[0][1]
    if any(other != report for _, other in outcomes[1:]):
        wrong.append("the ranks' reports differ")
    promised = area.statuses()
    statuses = [status for status, _ in promised]
    got = [n.status for n in report.nodes]
    if got != statuses:
        wrong.append(f"statuses {got}, expected {statuses}; errors "
                     f"{[n.error for n in report.nodes]}")
    for node, (_, why) in zip(report.nodes, promised):
        if why is not None and why not in (node.error or ""):
            wrong.append(f"node {node.index}'s error should say {why!r}: {node.error!r}")
    if [n.index for n in report.nodes] != list(range(case.nodes)):
        wrong.append(f"node indices {[n.index for n in report.nodes]}")
    ok = all(s in ("copied", "up-to-date") for s in statuses)
    if report.ok != ok:
        wrong.append(f"report.ok is {report.ok}, expected {ok}")
    for node in report.nodes:
        if (node.error is None) != node.ok:
            wrong.append(f"node {node.index} is {node.status} with error {node.error!r}")
    if report.size != case.size:
        wrong.append(f"report.size {report.size}, expected {case.size}")
    sent = any(s not in ("skipped", "up-to-date") for s in statuses)
    if sent and case.algorithm != "auto" and report.algorithm != case.algorithm:
        wrong.append(f"algorithm {report.algorithm}, asked for {case.algorithm}")
    if sent and not case.auto_chunk and report.chunk_size != case.chunk:
        wrong.append(f"chunk size {report.chunk_size}, asked for {case.chunk}")
    # The files must match what the report says (a node reported copied holds the
    # source's bytes), whether or not the report says what was promised.
    return wrong + area.compare_files(
        area.expected_files(got if len(got) == case.nodes else statuses))


# -- the job: rank 0 draws, every rank transfers -----------------------------------------


@dataclass
class Tally:
    """The run so far; ``seen`` counts what the cases exercised (node statuses, runs
    refused at pre-flight, algorithms), so a run shows that it reached its faults."""

    started: float = field(default_factory=time.monotonic)
    transfers: int = 0
    mismatches: int = 0
    seen: Counter[str] = field(default_factory=Counter)

    def count(self, case: Case, outcome: Outcome | None) -> None:
        self.seen[f"{case.nodes} node{'s' if case.nodes > 1 else ''}"] += 1
        self.seen[case.algorithm] += 1
        if outcome is not None and outcome[0] == "report":
            self.seen.update(n.status for n in outcome[1].nodes)
        elif outcome is not None:
            self.seen["refused at pre-flight" if outcome[0] == "usage" else "exception"] += 1

    def coverage(self) -> str:
        return ", ".join(f"{what} {count}" for what, count in sorted(self.seen.items()))


def run_case(case: Case, base: Path, tally: Tally) -> None:
    """Rank 0: prepare ``case``, run it on every rank, judge it, clean up."""
    top = Path(tempfile.mkdtemp(prefix="case.", dir=base))
    area = Area(top, case)
    area.prepare()
    WORLD.bcast((case, str(top)), root=0)
    mine = transfer(case, str(top))
    outcomes = [o for o in WORLD.gather(mine, root=0) if o is not None]
    try:
        wrong = judge(area, outcomes)
    except Exception:  # noqa: BLE001 (a report too odd to judge is a mismatch too)
        wrong = ["judging failed: " + traceback.format_exc(limit=-4)]
    tally.transfers += 1
    tally.count(case, outcomes[0] if outcomes else None)
    if wrong:
        tally.mismatches += 1
        print(f"fuzz: MISMATCH in transfer {tally.transfers} "
              f"(replay: bash tests/fuzz.sh 1 --case '{case.to_json()}')",
              *(f"  {line}" for line in wrong), sep="\n", file=sys.stderr, flush=True)
    shutil.rmtree(top)
    if tally.transfers % 100 == 0:
        print(f"fuzz: {tally.transfers} transfers, {tally.mismatches} mismatches, "
              f"{time.monotonic() - tally.started:.0f} s", file=sys.stderr, flush=True)


def lead(count: int, replay: list[Case], base: Path, tally: Tally) -> None:
    """Rank 0: the cases to replay, else ``count`` cases drawn by Hypothesis."""
    if replay:
        for case in replay:
            run_case(case, base, tally)
        return
    chosen = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fuzz: {count} transfers on up to {WORLD.size} ranks, seed {chosen} "
          f"(FUZZ_SEED={chosen} repeats this run)", file=sys.stderr, flush=True)

    @seed(chosen)
    @settings(max_examples=count, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck),
              print_blob=False)
    @given(cases())
    def one(case: Case) -> None:
        run_case(case, base, tally)

    if count > 0:
        one()


def follow() -> None:
    """Every other rank: take part in each case rank 0 sends, until it sends ``None``."""
    while (message := WORLD.bcast(None, root=0)) is not None:
        case, top = message
        WORLD.gather(transfer(case, top), root=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=100, help="transfers to draw")
    parser.add_argument("--case", action="append", default=[], metavar="JSON",
                        help="replay this case (as a mismatch prints it) instead of drawing")
    args = parser.parse_args()
    if WORLD.rank != 0:
        follow()
        return int(WORLD.bcast(None, root=0))
    tally = Tally()
    base = Path(tempfile.mkdtemp(prefix="mpistage-fuzz."))
    broken = True  # the fuzzer itself failed: no count line, exit 1 on every rank
    try:
        replay = [Case.from_json(text) for text in args.case]
        if any(case.ranks > WORLD.size for case in replay):
            parser.error(f"a case needs more ranks than the job's {WORLD.size}")
        lead(args.count, replay, base, tally)
        broken = False
    finally:
        WORLD.bcast(None, root=0)  # the others stop following
        WORLD.bcast(broken or tally.mismatches > 0, root=0)  # and exit alike
        shutil.rmtree(base, ignore_errors=True)
    print(f"fuzz: exercised {tally.coverage()}", file=sys.stderr, flush=True)
    print(f"{tally.transfers} transfers, {tally.mismatches} mismatches", flush=True)
    return int(tally.mismatches > 0)


if __name__ == "__main__":
    sys.exit(main())
