"""A quick TCP throughput probe between two emulated hosts: is the shaping in force?

``measure()`` starts a receiver on one host and a sender on the other (both this same
module, run through the cluster's ``enter`` script), sends for a few seconds and reports
the receiver's byte count over its own clock, so connection set-up is not counted.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from .hosts import ClusterError, Hosts

PORT = 5201
BLOCK = 256 << 10


def serve(address: str, port: int, timeout: float) -> None:
    """Accept one connection, read to EOF, print ``{"bytes": …, "seconds": …}``."""
    with socket.create_server((address, port), reuse_port=False) as server:
        server.settimeout(timeout)
        print("ready", flush=True)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(timeout)
            buf = bytearray(BLOCK)
            total = 0
            first = last = None
            while n := conn.recv_into(buf):
                last = time.perf_counter()
                if first is None:
                    first = last
                total += n
    seconds = (last - first) if first is not None and last is not None else 0.0
    print(json.dumps({"bytes": total, "seconds": seconds}), flush=True)


def send(address: str, port: int, seconds: float) -> None:
    """Send zeros to ``address:port`` for ``seconds``."""
    block = bytes(BLOCK)
    with socket.create_connection((address, port), timeout=10) as conn:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            conn.sendall(block)


def measure(cluster: Hosts, sender: int | str, receiver: int | str,
            seconds: float = 2.0) -> float:
    """Throughput in bit/s from ``sender`` to ``receiver`` over the emulated network."""
    address = cluster.address(receiver)
    me = [sys.executable, "-m", "mpistage.cluster.probe"]
    server = subprocess.Popen(
        cluster.command(receiver, [*me, "serve", address, str(PORT), str(seconds + 20)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise ClusterError(f"probe receiver did not start: {server.stderr.read() if server.stderr else ''}")
        client = cluster.run(sender, [*me, "send", address, str(PORT), str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 30)
        if client.returncode != 0:
            raise ClusterError(f"probe sender failed: {client.stderr.strip()}")
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ClusterError(f"probe receiver failed: {err.strip()}") from None
    if result["seconds"] <= 0:
        raise ClusterError("probe moved no data")
    return result["bytes"] * 8 / result["seconds"]


if __name__ == "__main__":
    role, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role == "serve":
        serve(host, port, float(sys.argv[4]))
    else:
        send(host, port, float(sys.argv[4]))
