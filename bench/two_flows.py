"""Two flows through one emulated link against one: whether a link carries a node's two
flows (twotree's) at full rate.

Rank 0 sends SIZE to rank 1 (one flow), then SIZE to each of ranks 1 and 2 at once (two
flows sharing rank 0's uplink), then ranks 1 and 2 each send SIZE to rank 0 at once (two
flows into its downlink), in CHUNK messages with one in flight per peer and the peers in
lock-step, polled every PAUSE seconds (as the engine's waits do).  Prints the seconds and
the rate in all.  On 3 emulated hosts (as root)::

    python -m mpistage.cluster --name flows up --hosts 3 --rate 100mbit
    python -m mpistage.cluster --name flows mpiexec -- python bench/two_flows.py 16M 1M 0.005
"""
import sys
import time

import numpy as np
from mpi4py import MPI

from mpistage.units import parse_size


def stream(comm: MPI.Comm, sends: list[int], receives: list[int], size: int, chunk: int,
           pause: float) -> None:
    """This rank's part: ``size`` bytes to each of ``sends`` and from each of
    ``receives``, ``chunk`` at a time, every peer's message of a step out at once."""
    buffers = {peer: np.zeros(chunk, dtype=np.uint8) for peer in sends + receives}
    for step in range(size // chunk):
        batch = [comm.Isend(buffers[p], dest=p, tag=step) for p in sends]
        batch += [comm.Irecv(buffers[p], source=p, tag=step) for p in receives]
        while not MPI.Request.Testall(batch):
            time.sleep(pause)


def phase(comm: MPI.Comm, name: str, flows: list[tuple[int, int]], size: int, chunk: int,
          pause: float) -> None:
    """Run ``flows`` (sender, receiver) at once; rank 0 prints the time and rate."""
    comm.Barrier()
    started = time.perf_counter()
    stream(comm, [d for s, d in flows if s == comm.rank], [s for s, d in flows if d == comm.rank],
           size, chunk, pause)
    comm.Barrier()
    seconds = time.perf_counter() - started
    if comm.rank == 0:
        print(f"{name:28} {seconds:7.3f} s  {len(flows) * size * 8 / seconds / 1e6:7.1f} "
              "Mbit/s in all", flush=True)


def main() -> None:
    comm = MPI.COMM_WORLD
    size, chunk, pause = parse_size(sys.argv[1]), parse_size(sys.argv[2]), float(sys.argv[3])
    for name, flows in (("one flow 0->1", [(0, 1)]),
                        ("two flows 0->1, 0->2", [(0, 1), (0, 2)]),
                        ("two flows 1->0, 2->0", [(1, 0), (2, 0)]),
                        ("one flow 0->1 again", [(0, 1)])):
        phase(comm, name, flows, size, chunk, pause)


if __name__ == "__main__":
    main()
