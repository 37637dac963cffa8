"""The storage host of a shared file system (:mod:`mpistage.cluster.shared_fs`): made,
shaped, served, mounted on every host, re-shaped, and its read rates measured."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from .hosts import ClusterError
from .layout import SUBNET, Layout
from .shared_fs import PORT, SFTP_SERVER, STORAGE_HOST, TOOLS, SharedFS
from .system import ip, run_command


def check_tools() -> None:
    """Raise :class:`ClusterError` unless sshfs, socat and sftp-server are installed."""
    missing = [package for tool, package in TOOLS.items()
               if shutil.which(tool) is None and not os.access(tool, os.X_OK)]
    if missing:
        raise ClusterError(f"a shared file system needs {', '.join(missing)}: on Debian, "
                           f"apt-get install {' '.join(missing)}")
    if not os.path.exists("/dev/fuse"):
        raise ClusterError("a shared file system needs FUSE (/dev/fuse) for sshfs")


def storage_address(cluster: Layout) -> str:
    return f"{SUBNET}.{STORAGE_HOST}"


def start(cluster: Layout, shared: SharedFS) -> None:
    """The storage host, its server and shaping, and every host's mount."""
    check_tools()
    storage = cluster.storage
    export = cluster.export_dir
    export.mkdir(parents=True, exist_ok=True)
    ip("netns", "add", storage)
    ip("link", "add", "eth0", "netns", storage, "type", "veth", "peer", "name", "st",
       "netns", cluster.switch)
    ip("-n", cluster.switch, "link", "set", "st", "master", "br0", "up")
    ip("-n", storage, "addr", "add", f"{storage_address(cluster)}/24", "dev", "eth0")
    ip("-n", storage, "link", "set", "lo", "up")
    ip("-n", storage, "link", "set", "eth0", "up")
    _shape(cluster, shared)
    # in the storage host's namespace, detached (teardown ends it with the namespace);
    # nodelay: the tail of a reply must not wait for the client's delayed ACK (without
    # it one read in four of 128 KiB took 40 ms more: 19 Mbit/s on a 50 Mbit/s link)
    run_command(["nsenter", f"--net=/run/netns/{storage}", "sh", "-c",
                 'exec setsid -f socat "$@" </dev/null >/dev/null 2>&1', "socat",
                 f"TCP-LISTEN:{PORT},reuseaddr,fork,nodelay", f"EXEC:{SFTP_SERVER} -d {export}"])
    for host in cluster.hostnames:
        _mount(cluster, host)


def _shape(cluster: Layout, shared: SharedFS) -> None:
    """HTB on the storage host's egress: ``total_rate`` in all, ``client_rate`` each."""
    def tc(*args: str) -> None:
        run_command(["tc", "-n", cluster.storage, *args])

    total, client = shared.total_rate, shared.client_rate
    tc("qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "99")
    tc("class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb",
       "rate", f"{total}bit", "ceil", f"{total}bit")
    tc("class", "add", "dev", "eth0", "parent", "1:1", "classid", "1:99", "htb",
       "rate", f"{total}bit", "ceil", f"{total}bit")
    # A class's own rate is served whatever its parent's: each client is assured its
    # share of the total, and may borrow up to its own ceiling while the total allows.
    assured = max(1, min(client, total // cluster.hosts))
    for i in range(cluster.hosts):
        tc("class", "add", "dev", "eth0", "parent", "1:1", "classid", f"1:{10 + i}", "htb",
           "rate", f"{assured}bit", "ceil", f"{client}bit")
        tc("filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
           "u32", "match", "ip", "dst", f"{cluster.address(i)}/32", "flowid", f"1:{10 + i}")


def _mount(cluster: Layout, host: str) -> None:
    """sshfs in ``host``'s network namespace, mounted in the root mount namespace."""
    point = cluster.shared_mount(host)
    point.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 10
    while True:
        done = run_command(
            ["nsenter", f"--net=/run/netns/{host}", "sshfs",
             "-o", f"directport={PORT},direct_io,reconnect,idmap=none,dir_cache=no,"
             "attr_timeout=0,entry_timeout=0,negative_timeout=0",
             f"{storage_address(cluster)}:{cluster.export_dir}", str(point)], check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:  # the server may take a moment to listen
            raise ClusterError(f"sshfs on {host} failed: {done.stderr.strip()}")
        time.sleep(0.2)


def measure_reads(cluster: Layout, size: int = 4 << 20) -> tuple[float, float]:
    """Bits/s one host reads a fresh file of ``size`` bytes from the shared path at,
    alone, and all hosts together (each its own file)."""
    names = [f".mpistage-rate-{i}" for i in range(cluster.hosts + 1)]
    for name in names:
        (cluster.export_dir / name).write_bytes(os.urandom(size))
    try:
        alone = _read_seconds(cluster, [0], names[-1:])[0]
        together = _read_seconds(cluster, list(range(cluster.hosts)), names[:-1])
    finally:
        for name in names:
            (cluster.export_dir / name).unlink(missing_ok=True)
    return 8 * size / alone, 8 * size * cluster.hosts / max(together)


def _read_seconds(cluster: Layout, hosts: list[int], names: list[str]) -> list[float]:
    """Seconds each host takes to read its file through the shared path, all at once."""
    assert cluster.shared_fs is not None
    path = cluster.shared_fs.path
    script = ("import sys, time; t = time.perf_counter(); f = open(sys.argv[1], 'rb'); "
              "exec('while f.read(1 << 20): pass'); print(time.perf_counter() - t)")
    runs = [subprocess.Popen(cluster.command(h, [sys.executable, "-c", script, f"{path}/{n}"]),
                             stdout=subprocess.PIPE, text=True)
            for h, n in zip(hosts, names)]
    seconds = []
    for run in runs:
        out, _ = run.communicate(timeout=600)
        if run.returncode != 0:
            raise ClusterError(f"reading the shared path failed on a host: {out!r}")
        seconds.append(float(out.split()[-1]))
    return seconds


def reshape(cluster: Layout, shared: SharedFS) -> None:
    """Change the read rates of a shared file system that is up (``shared.path`` stays)."""
    run_command(["tc", "-n", cluster.storage, "qdisc", "del", "dev", "eth0", "root"],
                check=False)
    _shape(cluster, shared)
