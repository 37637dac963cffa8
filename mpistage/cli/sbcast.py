"""``mpistage-sbcast SRC DEST``: the one line that replaces ``sbcast`` in a job script.

Run from the batch script itself, not under MPI: it starts ``mpistage`` with one rank
per allocated node through ``srun`` (or, where there is no ``srun``, through the MPI
library's own ``mpiexec``, which reads the allocation from Slurm's environment) and
takes that run's exit status.  It asks the MPI library which family it is, to choose
``srun``'s PMI plugin (``pmi2`` for MPICH and its derivatives, ``pmix`` for Open MPI),
and finalizes MPI before it becomes the launcher.

Like sbcast, it refuses to replace a different file already at DEST unless given
``--force``, and ``--preserve`` keeps the source's permission bits exactly, except
setuid and setgid, which no copy gets (mpistage always keeps the modification time).  Every copy is verified and renamed into place
atomically, as with ``mpistage`` itself; options after ``--`` are passed on to it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence

from .. import mpi_library
from ..engine import codec
from ..errors import UsageError
from ..units import parse_size

#: ``srun --mpi`` plugin per MPI family (see docs/slurm.md for the checks).
SRUN_MPI_PLUGIN = {"mpich": "pmi2", "openmpi": "pmix"}
LAUNCHERS = ("auto", "srun", "mpiexec")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpistage-sbcast",
        description="Copy SRC to DEST on every node of this Slurm allocation, like sbcast, "
        "with mpistage's pipelined chain and a verified, atomic copy on every node. Run it "
        "from the job script (not under srun or mpiexec).",
        usage="mpistage-sbcast [options] SRC DEST [-- MPISTAGE_OPTIONS...]",
        epilog="Options after -- are passed to mpistage (e.g. -- --verify --mkdir "
        "--report FILE.json). Exit status: mpistage's (0 every node holds a "
        "verified copy; 1 a node failed; 2 usage or pre-flight; 128+N a signal).\n\n"
        "example, in a batch script:\n"
        "  mpistage-sbcast --force /lustre/ref/genome.fa /scratch/genome.fa\n"
        "  srun ./align /scratch/genome.fa",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SRC",
                        help="file to copy (read once, on this node), or - for this "
                        "script's standard input (through srun --input=0)")
    parser.add_argument("dest", metavar="DEST",
                        help="path of the copy on every node, or an existing directory")
    parser.add_argument("-f", "--force", action="store_true",
                        help="replace a different file already at DEST (default: fail on "
                        "those nodes, as sbcast does; an identical copy is left as it is)")
    parser.add_argument("-p", "--preserve", action="store_true",
                        help="keep the source's permission bits, not reduced by the umask "
                        "(setuid and setgid are always dropped; the modification time is "
                        "always kept)")
    parser.add_argument("-s", "--size", metavar="SIZE",
                        help="bytes per pipelined message, as mpistage's --chunk-size "
                        "(default: the model's choice)")
    parser.add_argument("-C", "--compress", metavar="LIB",
                        help="compress on the wire, as sbcast's -C[LIB] / --compress[=LIB] "
                        "(library lz4 when none is named; also zstd[:LEVEL], or auto: "
                        "mpistage's model decides)")
    parser.add_argument("-t", "--timeout", metavar="SECONDS",
                        help="give up when the transfer makes no progress for this long")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                        help="srun (default when found) or the MPI library's mpiexec")
    parser.add_argument("--mpi", metavar="PLUGIN",
                        help="srun's --mpi plugin (default: $MPISTAGE_SRUN_MPI, else pmi2 for "
                        "MPICH, pmix for Open MPI)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the command that would run, and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, passed_on = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    args = parse_args(ours)
    try:
        command = launch_command(args, passed_on, os.environ)
    except UsageError as exc:
        print(f"mpistage-sbcast: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(shlex.join(command))
        return 0
    if args.preserve:
        os.umask(0)  # srun hands the umask to every task (SLURM_UMASK); mpiexec's children inherit it
    sys.stdout.flush()
    _finalize_mpi()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"mpistage-sbcast: error: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 2


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Our options, sbcast's way of naming a compression library included: ``-C`` and
    ``--compress`` alone mean lz4, ``-CLIB`` and ``--compress=LIB`` name it (never the
    next word, which is SRC)."""
    spelled = []
    for arg in argv:
        if arg in ("-C", "--compress"):
            arg = "--compress=lz4"
        elif arg.startswith("-C"):
            arg = "--compress=" + arg[2:]
        spelled.append(arg)
    return build_parser().parse_args(spelled)


def launch_command(args: argparse.Namespace, passed_on: Sequence[str],
                   environ: os._Environ[str] | dict[str, str]) -> list[str]:
    """The full command line: launcher, its options, then ``mpistage`` and its options."""
    nodes = allocated_nodes(environ)
    stage = [sys.executable, "-m", "mpistage", "--chunk-size", args.size or "auto",
             "--algorithm", "auto"]
    if args.size:
        parse_size(args.size)  # a bad size is reported here, once
    if args.timeout:
        stage += ["--timeout", args.timeout]
    if args.compress:
        stage += ["--compress", codec.check(args.compress)]  # a bad name is reported here
    if not args.force:
        stage.append("--no-clobber")
    stage += [*passed_on, args.source, args.dest]
    launcher = args.launcher
    if launcher == "auto":
        launcher = "srun" if shutil.which("srun") else "mpiexec"
    streaming = args.source == "-"
    if launcher == "srun":
        plugin = (args.mpi or environ.get("MPISTAGE_SRUN_MPI")
                  or SRUN_MPI_PLUGIN[mpi_library.family()])
        # srun sends standard input to every task unless told; task 0 alone reads it.
        return ["srun", f"--mpi={plugin}", f"--nodes={nodes}", f"--ntasks={nodes}",
                "--ntasks-per-node=1", *(["--input=0"] if streaming else []), *stage]
    if streaming:
        raise UsageError("SRC - needs srun: MPICH's hydra and Open MPI's mpirun cannot "
                         "forward a stream (docs/streams.md); use mpistage --from-cmd")
    mpiexec = mpi_library.find_mpiexec()
    if mpiexec is None:
        raise UsageError("neither srun nor mpiexec found on PATH")
    # One node's death costs the others nothing where the launcher lets them go on.
    return [mpiexec, *mpi_library.keep_going_options(), "-n", str(nodes),
            *mpi_library.ranks_per_node_options(1), *stage]


def allocated_nodes(environ: os._Environ[str] | dict[str, str]) -> int:
    """How many nodes the Slurm allocation this runs in has."""
    for variable in ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        value = environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    raise UsageError("not inside a Slurm allocation (no SLURM_JOB_NUM_NODES): run it from an "
                     "sbatch script or under salloc; elsewhere use mpiexec mpistage SRC DEST")


def _finalize_mpi() -> None:
    """Importing the package initialized MPI (a singleton); finalize it before this
    process becomes srun, or MPICH leaves its shared-memory file in /dev/shm."""
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
