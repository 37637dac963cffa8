"""One point-to-point transfer of S bytes, rank 0 to rank 1: the bound a broadcast chases.

    mpiexec -n 2 python -m mpistage.cluster.p2p 64M

Prints the seconds of one ``Send``/``Recv`` of S bytes (after a small warm-up that sets
up the connection), measured on the receiver.
"""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from ..units import parse_size


def main() -> int:
    comm = MPI.COMM_WORLD
    size = parse_size(sys.argv[1]) if len(sys.argv) > 1 else 64 << 20
    if comm.size < 2:
        print("p2p: needs 2 ranks", file=sys.stderr)
        return 2
    buf = np.zeros(size, dtype=np.uint8)
    if comm.rank == 0:
        comm.Send(buf[:1024], dest=1)
    elif comm.rank == 1:
        comm.Recv(buf[:1024], source=0)
    comm.Barrier()
    started = MPI.Wtime()
    if comm.rank == 0:
        comm.Send(buf, dest=1)
    elif comm.rank == 1:
        comm.Recv(buf, source=0)
        print(f"{MPI.Wtime() - started:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
