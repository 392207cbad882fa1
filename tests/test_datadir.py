"""Faust's data directories do not pile up in /tmp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.worker.datadir import process_datadir

ROOT = Path(__file__).resolve().parents[1]


def test_a_process_removes_its_directory_when_it_exits(tmp_path: Path) -> None:
    code = (
        f"import pathlib, app.worker.datadir as d; print(d.process_datadir(pathlib.Path({str(tmp_path)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    made = Path(done.stdout.strip())
    assert made.parent == tmp_path
    assert not made.exists()


def test_directories_of_dead_processes_are_removed_by_the_next_start(tmp_path: Path) -> None:
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    killed.wait()
    (tmp_path / str(killed.pid)).mkdir()  # as a SIGKILLed worker leaves it
    (tmp_path / str(os.getppid())).mkdir()  # a live process's
    mine = process_datadir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([str(os.getppid()), mine.name])
    assert mine.name == str(os.getpid())
