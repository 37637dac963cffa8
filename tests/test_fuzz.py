"""A small run of the property-based fuzzer (``tests/fuzz.sh``) on every push.

The fuzzer is one MPI job of 9 ranks that draws randomised transfers and checks every
node's bytes and status against what the options promise (see ``tests/fuzz.py``); this
test runs a few dozen of them (about 20 s on 2 cores), a new seed each time, so that CI
keeps exploring; ``bash tests/fuzz.sh 1000`` is the thorough run (README).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = (shutil.which("mpiexec", path=str(Path(sys.executable).parent))
           or shutil.which("mpiexec"))
#: Transfers per CI run: enough that every algorithm, fault and outcome comes up in most
#: runs (Hypothesis starts with the simplest cases), few enough to take seconds.
TRANSFERS = 100


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
@pytest.mark.skipif(shutil.which("bash") is None, reason="tests/fuzz.sh needs bash")
def test_randomised_transfers_keep_every_promise() -> None:
    run = subprocess.run(["bash", str(ROOT / "tests" / "fuzz.sh"), str(TRANSFERS)],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    lines = run.stdout.strip().splitlines()
    # stderr has the seed (FUZZ_SEED=… repeats the run) and each mismatch's --case.
    assert lines and lines[-1] == f"{TRANSFERS} transfers, 0 mismatches", run.stderr[-20000:]
    assert run.returncode == 0, run.stderr[-20000:]
