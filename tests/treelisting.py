"""What the tree tests compare: every entry below a directory, as the copy must hold it."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def listing(top: Path) -> dict[str, tuple]:
    """Everything under ``top``: type, bytes or link target, mode, mtime."""
    seen = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = ("l", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            what = ("d", None)
        else:
            what = ("f", path.read_bytes())
        seen[str(path.relative_to(top))] = (*what, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return seen
