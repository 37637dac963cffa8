"""bench/cpu_split.py: the sorting of perf's samples into where a rank's CPU went."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import cpu_split  # noqa: E402

SCRIPT = """python 101
\tffffffff8110 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
\tffffffff8120 handle_softirqs ([kernel.kallsyms])
\tffffffff8130 __local_bh_enable_ip ([kernel.kallsyms])
\tffffffff8140 __x64_sys_sendmsg ([kernel.kallsyms])
\t7f00 __libc_sendmsg (/usr/lib/x86_64-linux-gnu/libc.so.6)

python 101
\tffffffff8150 copy_user_generic ([kernel.kallsyms])
\tffffffff8160 __x64_sys_write ([kernel.kallsyms])

python 101
\t160485 _PyEval_EvalFrameDefault (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)

python 102
\t2a0 MPIDI_progress_test (/venv/lib/python3.11/site-packages/mpich/lib/libmpi.so.12)

python 102
\t3b0 fi_tcp_progress (/venv/lib/libfabric.so.1)

python 102
\t1f0 XXH3_hashLong_128b (/venv/lib/xxhash/_xxhash.cpython-311-x86_64-linux-gnu.so)
"""


def test_each_sample_counts_where_it_fell_packet_work_first() -> None:
    counts = cpu_split.count(SCRIPT)
    # the send's sample fell in the packet work it set off: softirq, not the send's kernel
    assert counts == {"softirq": 1, "kernel": 1, "interpreter": 1, "MPI": 2, "other": 1}


def test_nothing_recorded_counts_nothing() -> None:
    assert not cpu_split.count("")
