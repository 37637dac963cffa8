"""One ``MPI_Bcast`` of S bytes from rank 0, memory to memory: the MPI library's best.

    mpiexec -n 8 python -m mpistage.cluster.bcast 64M
    MPIR_CVAR_BCAST_INTRA_ALGORITHM=scatter_ring_allgather mpiexec -n 8 python -m ...

Prints the slowest rank's seconds for one broadcast, after a small warm-up broadcast that
sets up the connections.
"""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from ..units import parse_size


def main() -> int:
    comm = MPI.COMM_WORLD
    size = parse_size(sys.argv[1]) if len(sys.argv) > 1 else 64 << 20
    buf = np.zeros(size, dtype=np.uint8)
    comm.Bcast(buf[: min(size, 1 << 16)], root=0)
    comm.Barrier()
    started = MPI.Wtime()
    comm.Bcast(buf, root=0)
    seconds = comm.allreduce(MPI.Wtime() - started, op=MPI.MAX)
    if comm.rank == 0:
        print(f"{seconds:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
