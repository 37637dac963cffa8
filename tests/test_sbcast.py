"""``mpistage-sbcast``: the command it runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mpistage.cli import sbcast


def command(argv: list[str], env: dict[str, str], family: str = "mpich",
            which: str | None = "/usr/bin/srun", monkeypatch: pytest.MonkeyPatch | None = None
            ) -> list[str]:
    assert monkeypatch is not None
    monkeypatch.setattr(sbcast.mpi_library, "family", lambda: family)
    monkeypatch.setattr(sbcast.shutil, "which", lambda name: which if name == "srun" else None)
    ours, passed_on = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    return sbcast.launch_command(sbcast.parse_args(ours), passed_on, env)


def test_srun_with_one_rank_per_node_and_sbcasts_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    got = command(["in.dat", "/scratch/in.dat"], {"SLURM_JOB_NUM_NODES": "8"},
                  monkeypatch=monkeypatch)
    assert got == ["srun", "--mpi=pmi2", "--nodes=8", "--ntasks=8", "--ntasks-per-node=1",
                   sys.executable, "-m", "mpistage", "--chunk-size", "auto", "--algorithm",
                   "auto", "--no-clobber", "in.dat", "/scratch/in.dat"]


def test_force_size_timeout_and_options_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    got = command(["-f", "-s", "1M", "-t", "30", "in.dat", "/scratch/", "--", "--verify",
                   "--report", "r.json"], {"SLURM_NNODES": "3"}, family="openmpi",
                  monkeypatch=monkeypatch)
    assert got[:2] == ["srun", "--mpi=pmix"]
    assert got[5:] == [sys.executable, "-m", "mpistage", "--chunk-size", "1M", "--algorithm",
                       "auto", "--timeout", "30", "--verify", "--report", "r.json", "in.dat",
                       "/scratch/"]


def test_plugin_from_the_environment_and_mpiexec_without_srun(
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SLURM_JOB_NUM_NODES": "2", "MPISTAGE_SRUN_MPI": "pmi2"}
    assert command(["a", "b"], env, family="openmpi", monkeypatch=monkeypatch)[1] == "--mpi=pmi2"
    no_srun = command(["a", "b"], env, which=None, monkeypatch=monkeypatch)
    assert no_srun[0].endswith("mpiexec")
    assert no_srun[1:6] == ["-disable-auto-cleanup", "-n", "2", "-ppn", "1"], "survive a death"
    ompi = command(["a", "b"], env, family="openmpi", which=None, monkeypatch=monkeypatch)
    assert ompi[1:7] == ["--with-ft", "ulfm", "-n", "2", "--map-by", "ppr:1:node"]


def test_outside_an_allocation_one_line_and_exit_2() -> None:
    run = subprocess.run([sys.executable, "-m", "mpistage.cli.sbcast", "in.dat", "/scratch"],
                         capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")},
                         timeout=60)  # Open MPI's MPI_Init (a singleton) fails without HOME
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "mpistage-sbcast: error: not inside a Slurm allocation (no SLURM_JOB_NUM_NODES): run "
        "it from an sbatch script or under salloc; elsewhere use mpiexec mpistage SRC DEST"]


def test_compress_as_sbcasts_c(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SLURM_JOB_NUM_NODES": "4"}

    def library(argv: list[str]) -> str:
        got = command(argv, env, monkeypatch=monkeypatch)
        assert got[-2:] == ["in.dat", "/scratch/"]  # SRC is never taken for the library
        return got[got.index("--compress") + 1]

    assert library(["-C", "in.dat", "/scratch/"]) == "lz4"
    assert library(["--compress", "in.dat", "/scratch/"]) == "lz4"
    assert library(["--compress=zstd", "in.dat", "/scratch/"]) == "zstd:3"
    assert library(["-Cauto", "in.dat", "/scratch/"]) == "auto"
    with pytest.raises(sbcast.UsageError, match="invalid --compress"):
        library(["--compress=gzip", "in.dat", "/scratch/"])


def test_standard_input_goes_to_task_0_only(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SLURM_JOB_NUM_NODES": "4"}
    got = command(["-", "/scratch/in.bin"], env, monkeypatch=monkeypatch)
    assert got[:6] == ["srun", "--mpi=pmi2", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1",
                       "--input=0"]
    with pytest.raises(sbcast.UsageError, match="SRC - needs srun"):
        command(["-", "/scratch/in.bin"], env, which=None, monkeypatch=monkeypatch)
