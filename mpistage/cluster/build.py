"""Creating an emulated cluster's parts: its state directory and scripts, and each host
(namespace, link, shaping, scratch).

A command runs "on" a host through ``enter HOST CMD…``: ``nsenter`` into the host's
network namespace, then ``unshare`` a mount and UTS namespace in which the host name is
set, the cluster's ``hosts`` file is bound over ``/etc/hosts``, the host's scratch is
bound over the scratch path, its shm over ``/dev/shm``, with Slurm, the cluster's
configuration over ``/etc/slurm`` and, with a shared file system, the host's mount of it
over its path (:mod:`mpistage.cluster.shared_fs`).  (``ip netns exec`` is not used: it remounts ``/sys``.)
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from dataclasses import asdict
from pathlib import Path

from . import slurm as slurm_daemons
from .layout import Layout
from .rates import bucket_bytes, parse_rate
from .system import ip, run_command


def create_state(cluster: Layout) -> None:
    """The state directory: the record :meth:`EmulatedCluster.attach` reads, the hosts
    file, the ``enter`` and ``launcher`` scripts, the scratch mount point."""
    state = cluster.state_dir
    (state / "scratch").mkdir(parents=True)
    (state / "shm").mkdir()
    created_mountpoint = False
    if not os.path.isdir(cluster.scratch):
        os.makedirs(cluster.scratch)
        created_mountpoint = True
    shared = cluster.shared_fs
    created_shared = False
    if shared is not None and not os.path.isdir(shared.path):
        os.makedirs(shared.path)
        created_shared = True
    (state / "state.json").write_text(json.dumps({
        "name": cluster.name, "hosts": cluster.hosts, "rate": cluster.rate_bits,
        "scratch": cluster.scratch, "scratch_size": cluster.scratch_size,
        "overrides": {i: [o.rate, o.scratch_size] for i, o in cluster.overrides.items()},
        "created_mountpoint": created_mountpoint,
        "slurm": None if cluster.slurm is None else asdict(cluster.slurm),
        "shared_fs": None if shared is None else asdict(shared),
        "created_shared_mountpoint": shared.path if created_shared and shared else None,
    }))
    head = cluster.address(0)
    lines = ["127.0.0.1 localhost", f"{head} {socket.gethostname()}"]
    lines += [f"{cluster.address(i)} {h}" for i, h in enumerate(cluster.hostnames)]
    (state / "hosts").write_text("\n".join(lines) + "\n")
    _write_script(cluster.enter_script, ENTER_SCRIPT.format(
        hosts=shlex.quote(str(state / "hosts")),
        scratch_root=shlex.quote(str(state / "scratch")),
        shm_root=shlex.quote(str(state / "shm")),
        scratch=shlex.quote(cluster.scratch),
        slurm_etc=shlex.quote(str(slurm_daemons.etc_dir(cluster))),
        shared_root=shlex.quote(str(state / "shared")),
        shared=shlex.quote(shared.path if shared is not None else "/shared"),
    ))
    _write_script(cluster.launcher, LAUNCHER_SCRIPT.format(enter=shlex.quote(str(cluster.enter_script))))


def add_host(cluster: Layout, i: int, host: str) -> None:
    """Host ``i``: its namespace, its veth on the switch's bridge, its address, its
    shaped link, its scratch and shm tmpfs."""
    port = f"h{i}"
    ip("netns", "add", host)
    ip("link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", port,
        "netns", cluster.switch)
    ip("-n", cluster.switch, "link", "set", port, "master", "br0", "up")
    ip("-n", host, "addr", "add", f"{cluster.address(i)}/24", "dev", "eth0")
    ip("-n", host, "link", "set", "lo", "up")
    ip("-n", host, "link", "set", "eth0", "up")
    shape(cluster, i, cluster.rate_of(i), replace=False)
    spec = cluster.overrides.get(i)
    size = spec.scratch_size if spec is not None and spec.scratch_size else cluster.scratch_size
    directory = cluster.scratch_dir(i)
    directory.mkdir()
    options = "mode=1777" + (f",size={size}" if size else "")
    run_command(["mount", "-t", "tmpfs", "-o", options, f"{cluster.name}-scratch", str(directory)])
    shm = cluster.shm_dir(i)
    shm.mkdir()
    run_command(["mount", "-t", "tmpfs", "-o", "mode=1777", f"{cluster.name}-shm", str(shm)])


def shape(cluster: Layout, host: int | str, rate: str | int, *, replace: bool = True) -> None:
    """Shape ``host``'s link to ``rate`` in both directions (``tc tbf``)."""
    bits = parse_rate(rate)
    i = cluster.index(host)
    burst = bucket_bytes(bits)
    verb = "replace" if replace else "add"
    for netns, dev in ((cluster.host(i), "eth0"), (cluster.switch, f"h{i}")):
        run_command(["tc", "-n", netns, "qdisc", verb, "dev", dev, "root", "tbf",
              "rate", f"{bits}bit", "burst", str(burst), "latency", "100ms"])


# -- scripts written into the state directory --------------------------------------------

ENTER_SCRIPT = """#!/bin/sh
# Run a command on an emulated host: its network namespace, its host name, its hosts
# file and its private scratch. Written by mpistage.cluster.   Usage: enter HOST CMD...
host=$1; shift
exec nsenter --net="/run/netns/$host" unshare --mount --uts --propagation private \\
    sh -c 'hostname "$1" && mount --bind {hosts} /etc/hosts &&
           mount --bind {scratch_root}/"$1" {scratch} && mount --bind {shm_root}/"$1" /dev/shm &&
           {{ [ ! -d {slurm_etc} ] || mount --bind {slurm_etc} /etc/slurm; }} &&
           {{ [ ! -d {shared_root}/"$1" ] || mount --bind {shared_root}/"$1" {shared}; }} &&
           shift && exec "$@"' sh "$host" "$@"
"""

LAUNCHER_SCRIPT = """#!/bin/sh
# ssh stand-in for MPICH's hydra: LAUNCHER [ssh options] HOST COMMAND...
# Like ssh, runs COMMAND (its words joined) through a shell on HOST.
while [ $# -gt 0 ]; do
    case "$1" in
        -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1; shift
exec {enter} "$host" sh -c "$*"
"""


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)
