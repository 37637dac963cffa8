"""A plain TCP relay chain: the physical bound of staging a file through a chain of hosts.

No MPI, no disk, no digest: host 0 sends S bytes from memory to host 1, which forwards
each block to host 2 as it arrives, and so on; the last host only receives, then
acknowledges with one byte that travels back up the chain.  Whatever a staging tool takes
beyond this relay's time (or its CPU per relaying host) is overhead of the tool, not of
the links.  It also measures a command's CPU time and peak memory (``measure``), which is
how ``bench/limits.py`` compares an mpistage rank with a relay process.

    python -m mpistage.cluster.relay serve ADDR PORT SIZE [--next ADDR]   # hosts N-1 .. 1
    python -m mpistage.cluster.relay send ADDR PORT SIZE                  # host 0
    python -m mpistage.cluster.relay measure --out DIR -- CMD...          # CPU, peak RSS

Each role prints one JSON line at the end (``serve`` prints ``ready`` first, once it
listens and is connected to the next host): bytes moved, seconds, and its own CPU
seconds (``getrusage``, user + system).  ``measure`` runs CMD as its child and writes the
child's CPU seconds and ``ru_maxrss`` to ``DIR/measure-HOST-RANK-PID.json``, so every
rank of an ``mpiexec`` leaves its own record (the rank comes from the launcher's
environment); it exits with CMD's status.

:func:`chain` runs the whole relay on an emulated cluster.  It starts this file by its
path rather than with ``-m``, so that no relay process (and no ``measure`` wrapper of an
MPI rank) pays for importing the ``mpistage`` package, which a plain relay does not have;
this module imports nothing from ``mpistage`` at its top.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hosts import Hosts

#: This file, started by path (see the module's docstring).
SCRIPT = Path(__file__).resolve()
PORT = 5202  # the TCP probe uses 5201
BLOCK = 1 << 20
#: Environment variables that carry a process's rank under the common launchers.
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")


def cpu_seconds(usage: resource.struct_rusage) -> float:
    """User plus system CPU seconds of a ``getrusage`` result."""
    return usage.ru_utime + usage.ru_stime


def _receive(conn: socket.socket, view: memoryview, size: int,
             downstream: socket.socket | None) -> int:
    """Read ``size`` bytes into ``view`` block by block, forwarding each block at once."""
    received = 0
    while received < size:
        n = conn.recv_into(view, min(len(view), size - received))
        if n == 0:
            raise ConnectionError(f"upstream closed after {received} of {size} bytes")
        if downstream is not None:
            downstream.sendall(view[:n])
        received += n
    return received


def _connect(address: str, port: int, timeout: float) -> socket.socket:
    """A connection without Nagle's delay, so the last small block and the one-byte
    acknowledgement leave at once instead of waiting for an ACK."""
    conn = socket.create_connection((address, port), timeout=timeout)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def serve(address: str, port: int, size: int, next_address: str | None = None, *,
          block: int = BLOCK, timeout: float = 60.0) -> dict[str, Any]:
    """Relay (or, without ``next_address``, sink) ``size`` bytes; return this host's result.

    Listens on ``address:port`` and connects to ``next_address:port`` before saying
    ``ready``, so the chain is wired before the sender starts (MPI's point-to-point
    reference does not count its connection either).  ``timeout`` bounds every wait
    without progress.
    """
    downstream = None
    with socket.create_server((address, port)) as server:
        server.settimeout(timeout)
        if next_address is not None:
            downstream = _connect(next_address, port, timeout)
        print("ready", flush=True)
        conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(max(1, block))
    with conn:
        conn.settimeout(timeout)
        started = time.perf_counter()
        try:
            received = _receive(conn, memoryview(buf), size, downstream)
            if downstream is not None and downstream.recv(1) != b"!":
                raise ConnectionError("no acknowledgement from the next host")
            conn.sendall(b"!")
        finally:
            if downstream is not None:
                downstream.close()
        seconds = time.perf_counter() - started
    return {"role": "relay" if next_address else "sink", "host": socket.gethostname(),
            "bytes": received, "seconds": seconds,
            "cpu": cpu_seconds(resource.getrusage(resource.RUSAGE_SELF))}


def send(address: str, port: int, size: int, *, block: int = BLOCK,
         timeout: float = 60.0) -> dict[str, Any]:
    """Send ``size`` bytes from one preallocated block to ``address:port``; the seconds
    from the first byte until the last host's acknowledgement came back."""
    payload = memoryview(bytearray(max(1, block)))
    with _connect(address, port, timeout) as conn:
        started = time.perf_counter()
        remaining = size
        while remaining > 0:
            n = min(len(payload), remaining)
            conn.sendall(payload[:n])
            remaining -= n
        if conn.recv(1) != b"!":
            raise ConnectionError("no acknowledgement from the chain")
        seconds = time.perf_counter() - started
    return {"role": "source", "host": socket.gethostname(), "bytes": size,
            "seconds": seconds, "cpu": cpu_seconds(resource.getrusage(resource.RUSAGE_SELF))}


# -- measuring a command ------------------------------------------------------------------

def launcher_rank() -> int:
    """This process's rank as the MPI launcher (or Slurm) told it; 0 outside a job."""
    for name in RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    return 0


def measure(argv: Sequence[str], out_dir: str | os.PathLike[str]) -> int:
    """Run ``argv`` as a child; record its CPU seconds and peak RSS; return its status.

    The child inherits every file descriptor (``close_fds=False``): under ``mpiexec`` the
    launcher's PMI connection is one of them.  SIGTERM, SIGINT and SIGHUP are passed on,
    so stopping the job stops the child too.  Under ``mpiexec`` start this file by its
    path (:func:`measure_prefix`), so the wrapper stays small.  The peak RSS is never
    below this wrapper's own (about 16 MB: Linux keeps the high-water mark across the
    child's ``exec``), far under any MPI rank's.
    """
    child = subprocess.Popen(list(argv), close_fds=False)

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    code = child.wait()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    host, rank = socket.gethostname(), launcher_rank()
    record = {"host": host, "rank": rank, "argv": list(argv), "exit": code,
              "user": usage.ru_utime, "sys": usage.ru_stime, "cpu": cpu_seconds(usage),
              "maxrss_kib": usage.ru_maxrss}
    final = Path(out_dir) / f"measure-{host}-{rank}-{os.getpid()}.json"
    temp = final.with_suffix(".tmp")
    temp.write_text(json.dumps(record) + "\n")
    temp.replace(final)  # a reader never sees half a record
    return code if code >= 0 else 128 - code


def measure_prefix(out_dir: str | os.PathLike[str]) -> list[str]:
    """The words that put a command under :func:`measure`, records going to ``out_dir``."""
    return [sys.executable, str(SCRIPT), "measure", "--out", str(out_dir), "--"]


@dataclass(frozen=True)
class Measurement:
    """One measured process: where it ran, its exit status, CPU seconds (and their user
    and system shares), peak RSS."""

    host: str
    rank: int
    exit: int
    cpu: float
    maxrss_bytes: int
    user: float = 0.0
    sys: float = 0.0


def read_measurements(out_dir: str | os.PathLike[str]) -> list[Measurement]:
    """The records :func:`measure` left in ``out_dir``, in rank order."""
    found = []
    for path in sorted(Path(out_dir).glob("measure-*.json")):
        record = json.loads(path.read_text())
        found.append(Measurement(host=record["host"], rank=record["rank"], exit=record["exit"],
                                 cpu=record["cpu"], maxrss_bytes=record["maxrss_kib"] * 1024,
                                 user=record["user"], sys=record["sys"]))
    return sorted(found, key=lambda m: m.rank)


# -- the relay chain on an emulated cluster -----------------------------------------------

@dataclass
class ChainResult:
    """One relay run: the sender's seconds, and every host's CPU seconds by host index."""

    seconds: float
    size: int
    order: list[int]
    cpu: dict[int, float] = field(default_factory=dict)

    @property
    def middle_cpu(self) -> float:
        """Median CPU seconds of the hosts that both receive and forward (for two hosts,
        the receiver's): what relaying the file costs one host."""
        middle = self.order[1:-1] or self.order[1:]
        return statistics.median(self.cpu[i] for i in middle)


def _last_json(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("no result line")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def chain(cluster: Hosts, size: int, hosts: Sequence[int] | None = None, *,
          port: int = PORT, block: int = BLOCK, timeout: float = 120.0) -> ChainResult:
    """Relay ``size`` bytes along ``hosts`` (default: every host, in index order).

    The listeners start from the last host back to host 1, each connecting to the one
    after it; then host 0 sends.  Raises :class:`~mpistage.cluster.hosts.ClusterError`
    if any host fails or moves fewer bytes than ``size``.
    """
    from .hosts import ClusterError

    order = list(hosts) if hosts is not None else list(range(cluster.hosts))
    if len(order) < 2:
        raise ClusterError("a relay chain needs at least two hosts")
    me = [sys.executable, str(SCRIPT)]
    common = ["--block", str(block), "--timeout", str(timeout)]
    listeners: list[tuple[int, subprocess.Popen[str]]] = []
    try:
        for position in range(len(order) - 1, 0, -1):
            argv = [*me, "serve", cluster.address(order[position]), str(port), str(size), *common]
            if position + 1 < len(order):
                argv += ["--next", cluster.address(order[position + 1])]
            proc = subprocess.Popen(cluster.command(order[position], argv), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            listeners.append((order[position], proc))
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                _, err = proc.communicate(timeout=30)
                raise ClusterError(f"relay on host {order[position]} did not start: {err.strip()}")
        sender = cluster.run(order[0], [*me, "send", cluster.address(order[1]), str(port),
                                        str(size), *common],
                             capture_output=True, text=True, timeout=timeout * 2 + 30)
        if sender.returncode != 0:
            raise ClusterError(f"relay sender on host {order[0]} failed: {sender.stderr.strip()}")
        source = _last_json(sender.stdout)
        result = ChainResult(seconds=source["seconds"], size=size, order=order,
                             cpu={order[0]: source["cpu"]})
        for host, proc in listeners:
            out, err = proc.communicate(timeout=timeout + 30)
            try:
                record = _last_json(out)
            except ValueError:
                raise ClusterError(f"relay on host {host} failed: {err.strip()}") from None
            if proc.returncode != 0 or record["bytes"] != size:
                raise ClusterError(f"relay on host {host} moved {record['bytes']} of {size} bytes")
            result.cpu[host] = record["cpu"]
        return result
    finally:
        for _, proc in listeners:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- command line -------------------------------------------------------------------------

def _size(text: str) -> int:
    """A byte count with an optional K/M/G suffix (powers of 1024), parsed here without
    importing the package (see the module's docstring)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mpistage.cluster.relay",
        description="A plain TCP relay chain (no MPI, no disk), and a command's CPU and "
        "peak memory.", epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="role", required=True, metavar="ROLE")
    for role, what in (("serve", "receive SIZE bytes on ADDR:PORT, forwarding to --next"),
                       ("send", "send SIZE bytes to ADDR:PORT, wait for the chain's ack")):
        p = sub.add_parser(role, help=what)
        p.add_argument("address", metavar="ADDR")
        p.add_argument("port", type=int, metavar="PORT")
        p.add_argument("size", type=_size, metavar="SIZE")
        p.add_argument("--block", type=_size, default=BLOCK, help="bytes per read or write")
        p.add_argument("--timeout", type=float, default=60.0,
                       help="seconds any wait may last without progress")
        if role == "serve":
            p.add_argument("--next", metavar="ADDR", help="the next host (none: the last)")
    p = sub.add_parser("measure", help="run CMD; record its CPU seconds and peak RSS in DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role == "measure":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            print("relay measure: no command given (put it after --)", file=sys.stderr)
            return 2
        return measure(command, args.out)
    if args.role == "serve":
        result = serve(args.address, args.port, args.size, args.next, block=args.block,
                       timeout=args.timeout)
    else:
        result = send(args.address, args.port, args.size, block=args.block,
                      timeout=args.timeout)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
