"""Faust's data directory: one per worker process, gone when the process is.

Faust wants a directory of its own even with in-memory tables. One left behind
by every start fills ``/tmp`` (a pod's ``emptyDir`` on Kubernetes), so each
process gets ``<tmp>/micromoments-faust/<pid>``, removed when the process exits
normally; those of processes that died without a chance to clean up (SIGKILL,
OOM) are removed by the next process to start on the machine.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

ROOT_NAME = "micromoments-faust"


def process_datadir(root: Path | None = None) -> Path:
    """This process's data directory, created, after removing those of dead processes."""
    base = root or Path(tempfile.gettempdir()) / ROOT_NAME
    base.mkdir(exist_ok=True)
    for entry in base.iterdir():
        if entry.name.isdigit() and not _alive(int(entry.name)):
            shutil.rmtree(entry, ignore_errors=True)
    mine = base / str(os.getpid())
    mine.mkdir(exist_ok=True)
    atexit.register(shutil.rmtree, mine, True)
    return mine


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one of another user's counts: its directory is not ours to remove)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
