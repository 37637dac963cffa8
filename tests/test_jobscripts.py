"""The Slurm epilog on its own (no Slurm needed): it removes what the ending job left
and nothing of another job's live run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mpistage.sinks.file import TEMP_SUFFIX, temp_prefix

EPILOG = Path(__file__).resolve().parent.parent / "jobscripts" / "epilog.sh"


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("find") is None,
                    reason="needs bash and find")
def test_epilog_removes_the_jobs_leftovers_and_spares_a_live_run(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "job-7" / "sub").mkdir(parents=True)
    (scratch / "mpistage-7").mkdir()
    (scratch / "job-8").mkdir()  # another job's directory
    data = scratch / "data"
    data.mkdir()
    live = subprocess.Popen(["sleep", "60"])  # another job's run, still writing
    try:
        killed = data / f"{temp_prefix('model.bin', dead_pid())}abcdefgh{TEMP_SUFFIX}"
        running = data / f"{temp_prefix('model.bin', live.pid)}ijklmnop{TEMP_SUFFIX}"
        long_name = data / f"{temp_prefix('n' * 250, dead_pid())}qrstuvwx{TEMP_SUFFIX}"
        other_host = data / f".model.bin.not-{socket.gethostname()}.{dead_pid()}.abcdefgh{TEMP_SUFFIX}"
        final = data / "model.bin"
        for path in (killed, running, long_name, other_host, final):
            path.write_bytes(b"x")
        env = {"PATH": os.environ["PATH"], "MPISTAGE_SCRATCH_ROOT": str(scratch),
               "SLURM_JOB_ID": "7", "SLURM_JOB_UID": str(os.getuid())}
        run = subprocess.run(["bash", str(EPILOG)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert sorted(p.name for p in scratch.iterdir()) == ["data", "job-8"]
        assert sorted(p.name for p in data.iterdir()) == sorted(
            p.name for p in (running, other_host, final))
    finally:
        live.kill()
        live.wait()
