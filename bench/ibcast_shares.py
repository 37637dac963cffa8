"""When each rank's ``MPI_Ibcast`` of one message completes: how MPI's transport shares
the root's link between the sends it posts at once.

Below 8 ranks MPICH broadcasts by a binomial tree whose ``Ibcast`` posts the root's sends
to all its children together (:mod:`mpistage.engine.bcast_model`).  Shared fairly, at 4 ranks
both of the root's copies arrive after 2·c/B and the grandchild's after 3·c/B; sent one
after the other, the first child (the larger subtree) has its copy after c/B and the
last rank after 2·c/B.  Prints each rank's completion time per repeat (a rank's request
completes once its own sends are done too).  On 4 emulated hosts (as root)::

    python -m mpistage.cluster --name q up --hosts 4 --rate 100mbit
    python -m mpistage.cluster --name q mpiexec -- python bench/ibcast_shares.py 1M
"""
import sys
import time

import numpy as np
from mpi4py import MPI

from mpistage.units import parse_size

REPEATS = 4
#: Seconds between two tests of the request (MPI's TCP transport moves data only
#: inside MPI calls).
PAUSE = 0.0005


def main() -> None:
    comm = MPI.COMM_WORLD
    message = np.zeros(parse_size(sys.argv[1] if len(sys.argv) > 1 else "1M"), dtype=np.uint8)
    for repeat in range(REPEATS):
        comm.Barrier()
        started = time.perf_counter()
        request = comm.Ibcast(message, root=0)
        while not request.Test():
            time.sleep(PAUSE)
        times = comm.gather(time.perf_counter() - started, root=0)
        if comm.rank == 0:
            print(f"repeat {repeat}: " + "  ".join(f"rank {rank} {1e3 * t:6.1f} ms"
                                                 for rank, t in enumerate(times)), flush=True)


if __name__ == "__main__":
    main()
