"""Embedded servers never outlive the process that started them, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from app.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration

# A parent that starts redis-server, says the server's pid, and waits to be killed.
PARENT = """
import sys, time
from app.embedded import EmbeddedRedis
server = EmbeddedRedis().start()
print(server._process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0: it has exited, its parent (init) reaps it soon.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_a_server_stops_when_its_parent_is_killed(redis_server: EmbeddedRedis) -> None:
    # The session's redis_server fixture: redis-server is installed (or CI fails there).
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    server = int(parent.stdout.readline())
    assert alive(server)
    parent.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel can tell
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(server), "redis-server outlived the process that started it"
