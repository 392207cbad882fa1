"""``micromoments dev``, the README's first command: the whole stack on one machine, on either broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from harness import ROOT

from app.embedded import EmbeddedBroker, EmbeddedRedis

pytestmark = pytest.mark.integration


def run_dev(*args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    return subprocess.run(
        # Daytime in the generator's time zones: at night quiet hours would hold every trigger back.
        [
            sys.executable,
            "-m",
            "app.cli",
            "dev",
            "--duration",
            "20",
            "--rate",
            "200",
            "--speed",
            "60",
            "--start",
            "2026-11-25T12:00:00Z",
            *args,
        ],
        env=base,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def assert_ran(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    summary = re.search(r"stopped: ([\d,]+) events sent, ([\d,]+) triggers", done.stderr)
    assert summary, done.stderr[-3000:]
    sent, triggers = (int(n.replace(",", "")) for n in summary.groups())
    assert sent > 1_000
    assert triggers > 0
    # One line per trigger printed as it arrived: time, moment, customer, score.
    assert len(done.stdout.splitlines()) == triggers
    assert "state redis://127.0.0.1:" in done.stderr, "redis-server is installed: the stack uses it"


def test_dev_runs_the_stack_on_the_embedded_broker(
    embedded_broker: EmbeddedBroker, redis_server: EmbeddedRedis
) -> None:
    # The session's servers are asked for only so that a machine without them skips (or fails
    # with CI=true) as every integration test does: the stack starts servers of its own.
    assert_ran(run_dev())


def test_dev_runs_the_stack_on_apache_kafka(kafka_jars: None, redis_server: EmbeddedRedis) -> None:
    done = run_dev("--broker", "kafka")
    assert_ran(done)
    assert "starting Apache Kafka" in done.stderr
