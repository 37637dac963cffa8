"""How deep the emulated links' queues grow while a command runs: evidence for where a
schedule's time goes that the cost model does not see.

Every link of an emulated cluster is a token bucket (``tc tbf``) on each end: the host's
``eth0`` (its uplink) and the switch's port to it (its downlink), each queueing up to
100 ms of data.  A link that one sender feeds at its own rate never queues; one that two
senders feed at once (each twotree node has two parents) queues, and whatever crosses it
afterwards (the next message, and the acknowledgements that MPI's TCP transport waits
for before a send counts as complete) waits behind that queue.

Samples every link's backlog about every 10 ms (``tc -s -j qdisc show``) while COMMAND
runs and prints, per link, the bytes it carried, the largest and the mean backlog, and
the largest as time at the link's rate.  On 4 emulated hosts (as root)::

    python -m mpistage.cluster --name q up --hosts 4 --rate 100mbit
    python bench/link_queues.py q -- python -m mpistage.cluster --name q mpiexec -- \\
        python -m mpistage -a twotree -c 1M input.dat /scratch/
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict

from mpistage.cluster import EmulatedCluster

#: Seconds between two samples (each takes a few ms of ``tc`` calls).
INTERVAL = 0.005


def tbf_stats(netns: str, device: str | None = None) -> list[dict]:
    """``tc``'s statistics of the token buckets in ``netns`` (on ``device`` only)."""
    command = ["tc", "-n", netns, "-s", "-j", "qdisc", "show"] + (["dev", device] if device else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [q for q in json.loads(out) if q.get("kind") == "tbf"]


def sample(cluster: EmulatedCluster) -> dict[str, tuple[int, int]]:
    """Every link end's ``(bytes sent, backlog bytes)`` now: ``up hN`` and ``down hN``."""
    now = {f"down {q['dev']}": (q["bytes"], q["backlog"]) for q in tbf_stats(cluster.switch)}
    for i, host in enumerate(cluster.hostnames):
        for q in tbf_stats(host, "eth0"):
            now[f"up h{i}"] = (q["bytes"], q["backlog"])
    return now


def watch(cluster: EmulatedCluster, stop: threading.Event) -> list[dict[str, tuple[int, int]]]:
    """Samples until ``stop`` is set."""
    samples = []
    while not stop.is_set():
        samples.append(sample(cluster))
        stop.wait(INTERVAL)
    return samples


def summary(samples: list[dict[str, tuple[int, int]]], rate_bits: int) -> list[str]:
    """One line per link end that carried more than 100 kB."""
    backlogs: dict[str, list[int]] = defaultdict(list)
    for s in samples:
        for link, (_, backlog) in s.items():
            backlogs[link].append(backlog)
    lines = [f"{'link':8} {'carried':>10} {'max backlog':>12} {'mean':>9} {'max wait':>9}"]
    for link in sorted(backlogs, key=lambda name: (name.split()[1], name)):
        carried = samples[-1][link][0] - samples[0][link][0]
        if carried < 100_000:
            continue
        most = max(backlogs[link])
        lines.append(f"{link:8} {carried / 1e6:8.1f} MB {most / 1e3:9.0f} kB "
                     f"{sum(backlogs[link]) / len(backlogs[link]) / 1e3:6.0f} kB "
                     f"{most * 8 / rate_bits * 1e3:6.0f} ms")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cluster", help="the emulated cluster's name")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    cluster = EmulatedCluster.attach(args.cluster)
    stop = threading.Event()
    result: list[list[dict[str, tuple[int, int]]]] = []
    sampler = threading.Thread(target=lambda: result.append(watch(cluster, stop)))
    sampler.start()
    started = time.perf_counter()
    try:
        code = subprocess.run(command).returncode
    finally:
        stop.set()
        sampler.join()
    print(f"{' '.join(command[-3:])}: exit {code}, {time.perf_counter() - started:.2f} s, "
          f"{len(result[0])} samples")
    print("\n".join(summary(result[0], cluster.rate_bits)))
    return code


if __name__ == "__main__":
    sys.exit(main())
