"""Trees against one file of the same bytes, ``tar`` and ``cp -a``: what staging a
directory costs beyond its bytes.

As root (it brings up and tears down its own emulated cluster):

    python bench/trees.py                    # every row, median of 3 (about 15 minutes)
    python bench/trees.py --only small,local # a subset
    python bench/trees.py --small            # a quick version (CI): tiny sizes, 3 hosts

Goal rows (the issue's; "default" means no ``-a``/``-c`` given; every time is the whole
run as the report gives it, ``elapsed``: walk, pre-flight, transfer and commit):

  small   8 hosts at 100 Mbit/s: 10,000 files of 4 KiB in 100 directories ≤ 1.5 × one
          40 MiB file
  mixed   8 hosts at 100 Mbit/s: 1 GiB of mixed sizes (3 files of 256 MiB, 4,096 of
          64 KiB) ≤ 1.05 × one file of the same bytes
  local   one host, 2 ranks as nodes, tmpfs → tmpfs: 100,000 empty and tiny files, the
          whole mpiexec ≤ 2 × two parallel ``cp -a`` of the tree (the same two copies)

For context the small tree is also staged the way users do it today, as a tar file
(``tar c`` on the root, mpistage of the tar file, ``tar x`` on every host at once: the
sum of the three), and a re-run of the unchanged tree (nothing is sent).  Every copy is
checked file by file (xxh3) against the source on every host.

Prints a Markdown table and writes it with the JSON to ``--out`` (``trees.md``,
``trees.json``).  Exits 1 if a goal is missed or a run failed; with ``--small`` only
failed runs count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import limits  # noqa: E402
from limits import (Goal, Outcome, Row, code_version, local_mpiexec, median,  # noqa: E402
                    run_rounds, write_results)

from mpistage.cluster import EmulatedCluster, teardown  # noqa: E402
from mpistage.cluster.runs import mpistage_command, read_report, stage_with_report  # noqa: E402
from mpistage.cluster.system import interrupts_as_exceptions  # noqa: E402
from mpistage.digest import file_digest  # noqa: E402
from mpistage.samples import write_random_file  # noqa: E402
from mpistage.units import format_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("small", "mixed", "local")


def say(text: str) -> None:
    print(f"trees: {text}", file=sys.stderr, flush=True)


limits.say = say  # the rounds it runs for us report as ours


@dataclass(frozen=True)
class Scale:
    name: str
    hosts: int
    rate: str
    small_files: int     # of 4 KiB, in directories of 100
    large: tuple[int, int]   # (count, bytes) of the mixed tree's large files
    many: tuple[int, int]    # (count, bytes) of its small ones
    local_files: int
    repeat: int
    timeout: float
    settle: float = 2.0


FULL = Scale("full", 8, "100mbit", 10_000, (3, 256 << 20), (4096, 64 << 10), 100_000, 3, 900)
SMALL = Scale("small", 3, "1gbit", 500, (2, 2 << 20), (64, 16 << 10), 2_000, 1, 300, 0.0)


# -- samples ----------------------------------------------------------------------------

def make_tree(top: Path, files: Sequence[int], per_dir: int = 100) -> None:
    """``top/dNNN/fNNNNN``: one file of each size in ``files``, ``per_dir`` a directory."""
    for number, size in enumerate(files):
        folder = top / f"d{number // per_dir:03d}"
        if number % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{number:06d}").write_bytes(os.urandom(size) if size else b"")


def digests(top: Path) -> dict[str, str | None]:
    """Every entry below ``top``: a file's digest, ``None`` for a directory."""
    return {str(p.relative_to(top)): None if p.is_dir() else file_digest(p, drop_cache=False)
            for p in sorted(top.rglob("*"))}


# -- runs --------------------------------------------------------------------------------

def staged_on_cluster(cluster: EmulatedCluster, src: Path, expected: dict[str, Any] | str,
                      options: Sequence[str], timeout: float, keep: bool = False) -> Outcome:
    """mpistage of ``src`` (a tree or a file) on every host; the value is the report's
    ``elapsed``; every host's copy is checked (a tree file by file) and removed unless
    ``keep``."""
    run, report = stage_with_report(cluster, src, options,
                                    env={"MPIEXEC_TIMEOUT": str(int(timeout))},
                                    timeout=timeout + 60)
    good = 0
    for host in range(cluster.hosts):
        copy = cluster.scratch_dir(host) / src.name
        if isinstance(expected, str):
            good += copy.is_file() and file_digest(copy, drop_cache=False) == expected
        else:
            good += copy.is_dir() and digests(copy) == expected
        if not keep:
            shutil.rmtree(copy) if copy.is_dir() else copy.unlink(missing_ok=True)
    ok = run.returncode == 0 and report is not None and report["ok"] and good == cluster.hosts
    extra: dict[str, Any] = {"good": good}
    if report is not None:
        extra.update(transfer=report["transfer_seconds"],
                     plan=f"{report['algorithm']}, chunk {format_bytes(report['chunk_size'])}",
                     sent=(report.get("tree") or {}).get("files_sent"))
    error = "" if ok else f"exit {run.returncode}, {good}/{cluster.hosts} good: {run.stderr[-300:]}"
    return Outcome(report["elapsed"] if ok and report else None, ok=ok, error=error, extra=extra)


def tar_then_stage(cluster: EmulatedCluster, src: Path, expected: dict[str, Any], work: Path,
                   timeout: float) -> Outcome:
    """What users do today: ``tar c`` the tree, stage the tar file, ``tar x`` on every
    host at once (the sum of the three, each host's tree checked)."""
    tarball = work / f"{src.name}.tar"
    started = time.perf_counter()
    subprocess.run(["tar", "cf", str(tarball), "-C", str(src.parent), src.name], check=True)
    packed = time.perf_counter() - started
    staged = staged_on_cluster(cluster, tarball, file_digest(tarball), [], timeout, keep=True)
    tarball.unlink()
    if not staged.ok or staged.value is None:
        return staged
    started = time.perf_counter()
    untar = cluster.mpiexec(["sh", "-c", f"tar xf {cluster.scratch}/{tarball.name} -C "
                             f"{cluster.scratch} && rm {cluster.scratch}/{tarball.name}"],
                            capture_output=True, text=True, timeout=timeout)
    unpacked = time.perf_counter() - started
    good = 0
    for host in range(cluster.hosts):
        copy = cluster.scratch_dir(host) / src.name
        good += copy.is_dir() and digests(copy) == expected
        shutil.rmtree(copy, ignore_errors=True)
    ok = untar.returncode == 0 and good == cluster.hosts
    return Outcome(packed + staged.value + unpacked if ok else None, ok=ok,
                   error="" if ok else f"tar x exit {untar.returncode}: {untar.stderr[-300:]}",
                   extra={"tar_c": packed, "stage": staged.value, "tar_x": unpacked})


def staged_locally(src: Path, expected: dict[str, Any], work: Path, timeout: float) -> Outcome:
    """``mpiexec -n 2 mpistage --ranks-as-nodes TREE WORK/x{node}/``: the whole mpiexec."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    try:
        for node in range(2):
            (run_dir / f"x{node}").mkdir()
        report = run_dir / "report.json"
        run, wall = local_mpiexec(2, mpistage_command(report, ["--ranks-as-nodes"], src,
                                                      str(run_dir / "x{node}")), timeout)
        good = sum(digests(run_dir / f"x{n}" / src.name) == expected for n in range(2))
        data = read_report(report)
        ok = run.returncode == 0 and data is not None and data["ok"] and good == 2
        return Outcome(wall if ok else None, ok=ok, extra={"good": good},
                       error="" if ok else f"exit {run.returncode}: {run.stderr[-300:]}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def two_cp(src: Path, work: Path) -> Outcome:
    """Two ``cp -a`` of the tree at once: the same two copies, the bound on one host."""
    targets = [work / f"cp{i}" for i in range(2)]
    started = time.perf_counter()
    procs = [subprocess.Popen(["cp", "-a", str(src), str(t)]) for t in targets]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
    failed = any(codes)
    return Outcome(None if failed else wall, ok=not failed, error=f"cp {codes}" if failed else "")


# -- rows --------------------------------------------------------------------------------

def _notes(outcomes: Sequence[Outcome], copies: int) -> str:
    good = sum(o.ok for o in outcomes)
    plans = sorted({o.extra["plan"] for o in outcomes if "plan" in o.extra})
    errors = [o.error for o in outcomes if o.error]
    transfer = median([o.extra.get("transfer") for o in outcomes])
    text = f"verified {good}/{len(outcomes)} runs × {copies} copies"
    if plans:
        text += f"; ran {' / '.join(plans)}"
    if transfer is not None:
        text += f"; transfer {transfer:.2f} s"
    return text + (f"; error: {errors[0]}" if errors else "")


def cluster_rows(scale: Scale, groups: set[str], work: Path, cluster: EmulatedCluster) -> list[Row]:
    rows: list[Row] = []
    timeout = scale.timeout
    if "small" in groups:
        tree = work / "small-tree"
        make_tree(tree, [4096] * scale.small_files)
        single = work / "single.bin"
        write_random_file(single, 4096 * scale.small_files, seed=3)
        tree_digests, single_digest = digests(tree), file_digest(single)
        out = run_rounds([
            ("file", lambda: staged_on_cluster(cluster, single, single_digest, [], timeout)),
            ("tree", lambda: staged_on_cluster(cluster, tree, tree_digests, [], timeout)),
            ("tar", lambda: tar_then_stage(cluster, tree, tree_digests, work, timeout)),
        ], scale.repeat, "small", scale.settle)
        # A re-run of the unchanged tree: nothing to send.
        staged_on_cluster(cluster, tree, tree_digests, [], timeout, keep=True)
        rerun = run_rounds([("rerun", lambda: staged_on_cluster(
            cluster, tree, tree_digests, [], timeout, keep=True))], scale.repeat, "small", 0.0)
        for host in range(cluster.hosts):
            shutil.rmtree(cluster.scratch_dir(host) / tree.name, ignore_errors=True)
        label = (f"{scale.hosts} hosts, {scale.rate}: {scale.small_files:,} files of 4 KiB "
                 f"in {scale.small_files // 100} directories")
        file_time = median([o.value for o in out["file"]])
        rows += [
            Row("small.file", f"{scale.hosts} hosts, {scale.rate}: one file of "
                f"{format_bytes(4096 * scale.small_files)}", "s", file_time, ok=all(
                    o.ok for o in out["file"]), notes=_notes(out["file"], scale.hosts),
                runs=[o.value for o in out["file"]]),
            Row("small", f"{label}, default", "s", median([o.value for o in out["tree"]]),
                file_time, "one file", Goal("ratio", 1.5), all(o.ok for o in out["tree"]),
                _notes(out["tree"], scale.hosts), [o.value for o in out["tree"]]),
            Row("small.tar", f"{label}: tar c + mpistage of the tar file + tar x on every host",
                "s", median([o.value for o in out["tar"]]), file_time, "one file", None,
                all(o.ok for o in out["tar"]), _notes(out["tar"], scale.hosts) + "; steps "
                + ", ".join(f"{k} {median([o.extra.get(k) for o in out['tar']]) or 0:.2f} s"
                            for k in ("tar_c", "stage", "tar_x")), [o.value for o in out["tar"]]),
            Row("small.rerun", f"{label}: re-run, every host up to date", "s",
                median([o.value for o in rerun["rerun"]]), file_time, "one file", None,
                all(o.ok and o.extra.get("sent") == 0 for o in rerun["rerun"]),
                _notes(rerun["rerun"], scale.hosts) + "; files sent: "
                + ", ".join(str(o.extra.get("sent")) for o in rerun["rerun"]),
                [o.value for o in rerun["rerun"]]),
        ]
        shutil.rmtree(tree)
        single.unlink()
    if "mixed" in groups:
        tree = work / "mixed-tree"
        (count, size), (many, small) = scale.large, scale.many
        make_tree(tree, [small] * many)
        for number in range(count):
            write_random_file(tree / f"large{number}.bin", size, seed=10 + number)
        total = count * size + many * small
        single = work / "mixed-single.bin"
        write_random_file(single, total, seed=4)
        tree_digests, single_digest = digests(tree), file_digest(single)
        out = run_rounds([
            ("file", lambda: staged_on_cluster(cluster, single, single_digest, [], timeout)),
            ("tree", lambda: staged_on_cluster(cluster, tree, tree_digests, [], timeout)),
        ], scale.repeat, "mixed", scale.settle)
        file_time = median([o.value for o in out["file"]])
        rows += [
            Row("mixed.file", f"{scale.hosts} hosts, {scale.rate}: one file of "
                f"{format_bytes(total)}", "s", file_time, ok=all(o.ok for o in out["file"]),
                notes=_notes(out["file"], scale.hosts), runs=[o.value for o in out["file"]]),
            Row("mixed", f"{scale.hosts} hosts, {scale.rate}: {format_bytes(total)} in {count} "
                f"files of {format_bytes(size)} and {many:,} of {format_bytes(small)}, default",
                "s", median([o.value for o in out["tree"]]), file_time, "one file",
                Goal("ratio", 1.05), all(o.ok for o in out["tree"]),
                _notes(out["tree"], scale.hosts), [o.value for o in out["tree"]]),
        ]
        shutil.rmtree(tree)
        single.unlink()
    return rows


def local_rows(scale: Scale, work: Path) -> list[Row]:
    tree = work / "many"
    sizes = [0 if n % 2 else 1 + n % 100 for n in range(scale.local_files)]
    make_tree(tree, sizes, per_dir=1000)
    expected = digests(tree)
    out = run_rounds([("cp", lambda: two_cp(tree, work)),
                      ("mpistage", lambda: staged_locally(tree, expected, work, scale.timeout))],
                     scale.repeat, "local", scale.settle)
    shutil.rmtree(tree)
    return [Row("local", f"one host, 2 ranks as nodes, tmpfs: {scale.local_files:,} empty and "
                "tiny files: whole mpiexec vs two parallel cp -a", "s",
                median([o.value for o in out["mpistage"]]), median([o.value for o in out["cp"]]),
                "2 × cp -a", Goal("ratio", 2.0), all(o.ok for o in out["mpistage"] + out["cp"]),
                _notes(out["mpistage"], 2), [o.value for o in out["mpistage"]])]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="quick version for CI")
    parser.add_argument("--repeat", type=int, help="runs per row (default 3; 1 with --small)")
    parser.add_argument("--only", default=",".join(GROUPS), metavar="ROW[,ROW]",
                        help=f"run these rows only: {','.join(GROUPS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    scale = SMALL if args.small else FULL
    if args.repeat:
        scale = Scale(**{**scale.__dict__, "repeat": args.repeat})
    groups = {g for g in args.only.split(",") if g}
    if groups - set(GROUPS):
        parser.error(f"unknown rows {groups - set(GROUPS)}")
    if os.geteuid() != 0 and groups & {"small", "mixed"}:
        print("trees: the cluster rows need root; --only local runs without", file=sys.stderr)
        return 2
    name = "treesmall" if args.small else "trees"
    started, code, load = time.time(), code_version(), os.getloadavg()[0]
    rows: list[Row] = []
    try:
        with interrupts_as_exceptions():
            with tempfile.TemporaryDirectory(prefix="mpistage-trees-") as tmp:
                if groups & {"small", "mixed"}:
                    teardown(name)
                    say(f"bringing up {scale.hosts} hosts at {scale.rate}")
                    with EmulatedCluster(hosts=scale.hosts, rate=scale.rate, name=name) as cluster:
                        rows += cluster_rows(scale, groups, Path(tmp), cluster)
            if "local" in groups:
                with tempfile.TemporaryDirectory(prefix="mpistage-trees-", dir="/dev/shm") as shm:
                    rows += local_rows(scale, Path(shm))
    finally:
        if rows:
            print(write_results(args.out, rows, scale, scale.repeat, started, code, load,
                                name="trees"))
    failed = [r for r in rows if not r.ok or r.measured is None]
    missed = [r for r in rows if r.met is False]
    return 1 if failed or (missed and not args.small) else 0


if __name__ == "__main__":
    sys.exit(main())
