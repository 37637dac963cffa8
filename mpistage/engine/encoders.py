"""The root's encoders: chunks compressed in parallel, handed on in order.

One thread compresses at a few hundred MB/s (zstd level 3); a link of 10 Gbit/s takes
more than that even at a ratio of 3, and on a node whose cores are shared (the emulated
cluster: 8 ranks on 2 cores) one thread is what limits a compressed run.  zstandard and
lz4 release the GIL, so a few threads, each with its own codec, encode that many chunks
at once; the reader queues each chunk's future in order and the engine takes them in
that order (:class:`mpistage.engine.reader.ChunkSource`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .codec import Codec
from .codec import make as make_codec

#: Most encoder threads: past this the link, not the root, is the limit on any link we
#: know, and each thread's codec holds a few MB of state.
MAX_ENCODERS = 4


def encoder_count() -> int:
    """Encoder threads for this process: its usable cores, at most :data:`MAX_ENCODERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_ENCODERS, cores))


class Encoders:
    """A pool of threads, each with its own instance of codec ``name``."""

    def __init__(self, name: str, threads: int | None = None) -> None:
        self.name = name
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=threads or encoder_count(),
                                        thread_name_prefix="mpistage-encoder")

    def _codec(self) -> Codec:
        codec = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = make_codec(self.name)
        return codec

    def submit(self, work: Callable[[Codec], None]) -> Future[None]:
        """Run ``work(codec)`` on an encoder thread, with that thread's codec."""
        return self._pool.submit(lambda: work(self._codec()))

    def close(self) -> None:
        """No more work; threads end once theirs is done (not waited for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
