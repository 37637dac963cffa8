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


def rsync_differences(source: Path, copy: Path) -> list[str]:
    """What ``rsync -rlptD --checksum`` would change to make ``copy`` hold ``source``
    (contents, links, modes, mtimes; a dry run, so nothing is changed): the outside
    check that a staged tree is what ``cp -a``/``rsync`` would have made.  Skips the
    calling test where rsync is not installed (CI installs it)."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (the outside check of staged trees)")
    done = subprocess.run(
        ["rsync", "-rlptD", "--checksum", "--itemize-changes", "--dry-run",
         f"{source}/", f"{copy}/"], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()
