"""A minimal MPI relay chain, memory to memory: what the MPI library itself costs per byte.

    mpiexec -n 8 python -m mpistage.cluster.mpirelay 64M 128K
    mpiexec -n 8 python -m mpistage.cluster.mpirelay 64M 128K --write /scratch

Rank 0 sends S bytes in chunks to rank 1, which forwards each chunk to rank 2 as it
arrives, and so on: the same non-blocking ``Irecv``/``Isend`` and the same polling
(:mod:`mpistage.engine.waiting`) as mpistage's chain, but no file, no digest, no writer thread
and no checks.  Set beside a plain TCP relay (:mod:`mpistage.cluster.relay`) and
mpistage itself, a middle rank's CPU shows how much of mpistage's cost is MPI's.  Prints
the seconds from the first send to the last rank's last byte, on rank 0.

With ``--write DIR`` every rank but the first also writes each chunk, as it arrives and
in the same thread, to a file in ``DIR`` (removed at the end): the least a stager that
keeps a copy must do, so that mpistage's own additions (digest, writer thread, checks,
start-up) show apart from the cost of the write itself.
"""

from __future__ import annotations

import mmap
import os
import sys
import time

from mpi4py import MPI

from ..engine.waiting import Pace, poll
from ..units import parse_size

DEPTH = 4
TAG = 7301


def relay(comm: MPI.Comm, size: int, chunk: int, write_to: int | None = None) -> float:
    """Move ``size`` bytes down the chain 0 → 1 → … in ``chunk``-byte messages (collective);
    the seconds it took, the same on every rank.  ``write_to``: a file descriptor each
    chunk a rank receives is written to (``None``: none)."""
    buffers = [memoryview(mmap.mmap(-1, chunk)) for _ in range(DEPTH)]
    chunks = -(-size // chunk)
    length = [min(chunk, size - k * chunk) for k in range(chunks)]
    rank, last = comm.rank, comm.size - 1
    sends: dict[int, MPI.Request] = {}  # chunk → its send, until its buffer is reused
    pace = Pace()
    comm.Barrier()
    started = MPI.Wtime()
    if rank == 0:
        for k in range(chunks):
            if k - DEPTH in sends:
                poll([sends.pop(k - DEPTH)], None, pace.expected)
            sends[k] = comm.Isend(buffers[k % DEPTH][: length[k]], dest=1, tag=TAG)
    else:
        recvs = {k: comm.Irecv(buffers[k % DEPTH][: length[k]], source=rank - 1, tag=TAG)
                 for k in range(min(DEPTH, chunks))}
        for k in range(chunks):
            waited = time.perf_counter()
            poll([recvs.pop(k)], None, pace.expected)
            pace.add(time.perf_counter() - waited)
            if rank < last:
                sends[k] = comm.Isend(buffers[k % DEPTH][: length[k]], dest=rank + 1, tag=TAG)
            if write_to is not None:
                _write_all(write_to, buffers[k % DEPTH][: length[k]])
            reuse = k + DEPTH
            if reuse < chunks:
                if k in sends:  # the buffer goes back to receiving once its send is done
                    poll([sends.pop(k)], None)
                recvs[reuse] = comm.Irecv(buffers[reuse % DEPTH][: length[reuse]],
                                          source=rank - 1, tag=TAG)
    poll(list(sends.values()), None)
    comm.Barrier()
    return comm.allreduce(MPI.Wtime() - started, op=MPI.MAX)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def main() -> int:
    """``mpirelay [SIZE [CHUNK]] [--cpu] [--write DIR]``: prints the seconds; with
    ``--cpu`` a second line, ``cpu`` and each rank's CPU seconds (every thread) over the
    relay alone, without the process's start-up (:mod:`bench.message_cost` fits MPI's
    per-message cost to it); with ``--write DIR`` each receiving rank writes its copy to
    ``DIR`` too (see the module's docstring)."""
    comm = MPI.COMM_WORLD
    args = sys.argv[1:]
    directory = None
    if "--write" in args:
        where = args.index("--write")
        directory = args[where + 1] if where + 1 < len(args) else None
        del args[where: where + 2]
        if directory is None:
            print("mpirelay: --write needs a directory", file=sys.stderr)
            return 2
    args = [a for a in args if a != "--cpu"]
    size = parse_size(args[0]) if args else 64 << 20
    chunk = parse_size(args[1]) if len(args) > 1 else 1 << 20
    if comm.size < 2:
        print("mpirelay: needs 2 ranks or more", file=sys.stderr)
        return 2
    path = None
    fd = None
    if directory is not None and comm.rank > 0:
        path = os.path.join(directory, f"mpirelay-{os.getpid()}.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    cpu = time.process_time()
    try:
        seconds = relay(comm, size, chunk, fd)
    finally:
        if fd is not None and path is not None:
            os.close(fd)
            os.unlink(path)
    cpus = comm.gather(time.process_time() - cpu, root=0)
    if comm.rank == 0:
        print(f"{seconds:.6f}", flush=True)
        if "--cpu" in sys.argv[1:]:
            print("cpu " + " ".join(f"{c:.6f}" for c in cpus or []), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
