"""Apache Kafka, the production engine: broker restarts mid-run, SASL/SCRAM, the server's own life.

Each test here runs a broker of its own (app.apache_kafka.ApacheKafka), since it stops,
kills or locks it down; the rest of the suite shares the session's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from chaos import broker_restarted, chaos_run, compare, kills, shop, with_ticks
from faults import CRASH, CRASH_MARKER, planted
from harness import (
    ROOT,
    Workers,
    create_topics,
    isolated_env,
    produce,
    replay,
    run,
    settings_of,
    wait_consumed,
    write_jsonl,
)
from test_embedded import alive

from app.apache_kafka import ApacheKafka
from app.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration

USER, PASSWORD = "mm-worker", "a-password-only-this-test-knows"
EXACTLY_ONCE_EVENTS = 200_000
EXACTLY_ONCE_KILLS = 10


@pytest.fixture
def own_kafka(kafka_jars: None) -> Iterator[ApacheKafka]:
    with ApacheKafka() as server:
        yield server


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_the_worker_rides_out_a_broker_restart_and_loses_nothing(
    how: str, own_kafka: ApacheKafka, redis_server: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    # Enough traffic that the broker goes down while the worker is busy with it.
    lines = shop(60_000, 3_000, seed=31)
    report = chaos_run(
        f"kafka-{how}",
        lines,
        broker=own_kafka,
        redis=redis_server,
        workers=workers,
        directory=tmp_path,
        fault=broker_restarted(own_kafka, how),
    )
    print(report)
    assert report.ok, str(report)
    assert workers.started[0].said("assigned partitions"), "the worker ran before the restart"


@pytest.fixture(scope="module")
def scram_kafka(kafka_jars: None) -> Iterator[ApacheKafka]:
    with ApacheKafka(scram_users={USER: PASSWORD}) as server:
        yield server


def scram_env(broker: ApacheKafka, redis: EmbeddedRedis, password: str) -> dict[str, str]:
    return isolated_env(
        broker,
        redis,
        "scram",
        MM_KAFKA_BOOTSTRAP=broker.sasl_bootstrap,
        MM_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        MM_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        MM_KAFKA_SASL_USERNAME=USER,
        MM_KAFKA_SASL_PASSWORD=password,
    )


def test_the_worker_logs_in_with_scram_sha_512(
    scram_kafka: ApacheKafka, redis_server: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    lines = with_ticks(shop(3_000, 200, seed=32))
    expected = replay(write_jsonl(tmp_path / "in.jsonl", lines), tmp_path)
    env = scram_env(scram_kafka, redis_server, PASSWORD)
    settings = settings_of(env)
    run(create_topics(settings))
    run(produce(settings, lines))
    workers.start(env)
    # Watched and read back on the broker's PLAINTEXT listener: what the worker did over SASL.
    watched = settings_of(
        {**env, "MM_KAFKA_BOOTSTRAP": scram_kafka.bootstrap, "MM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    )
    run(wait_consumed(watched, workers))
    report = compare("scram", watched, scram_kafka, expected)
    assert report.ok, str(report)


def test_wrong_credentials_stop_the_worker_naming_the_settings(
    scram_kafka: ApacheKafka, redis_server: EmbeddedRedis
) -> None:
    env = scram_env(scram_kafka, redis_server, "not-the-password")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    message = done.stderr.strip().splitlines()[-1]
    assert "refused the credentials" in message
    assert "MM_KAFKA_SASL_USERNAME" in message
    assert "MM_KAFKA_SASL_PASSWORD" in message
    assert "not-the-password" not in done.stderr + done.stdout, "a secret is never printed"


# A parent that starts Kafka, says the broker's pid, and waits to be killed.
PARENT = """
import time
from app.apache_kafka import ApacheKafka
server = ApacheKafka().start()
print(server._process.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_kafka_stops_when_its_parent_is_killed(kafka_jars: None) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert parent.stdout is not None
    server = int(parent.stdout.readline())
    assert alive(server)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    # SIGTERM: a clean shutdown, which takes Kafka a few seconds.
    deadline = time.monotonic() + 60
    while alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(server), "Kafka outlived the process that started it"


def test_exactly_once_through_ten_kills_each_trigger_is_read_once(
    broker: ApacheKafka, redis_server: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    lines = shop(EXACTLY_ONCE_EVENTS, EXACTLY_ONCE_EVENTS // 40, seed=33)
    report = chaos_run(
        "exactly-once",
        lines,
        broker=broker,
        redis=redis_server,
        workers=workers,
        directory=tmp_path,
        fault=kills(EXACTLY_ONCE_KILLS, pause=(2.0, 6.0)),
        env={"MM_PROCESSING_GUARANTEE": "exactly_once"},
        seed=34,
        within=600.0,
    )
    print(report)
    # Read as a read_committed consumer reads: replay's trigger ids, each once, same bytes.
    assert report.ok, str(report)
    assert report.duplicated == 0, str(report)
    assert report.dead_duplicated == 0, str(report)
    assert sum("SIGKILL" in note for note in report.notes) == EXACTLY_ONCE_KILLS


def test_a_crash_between_the_save_and_the_commit_is_undone_and_nothing_is_read_twice(
    broker: ApacheKafka, redis_server: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    lines = shop(20_000, 1_000, seed=35)
    # Half-way through, the first worker dies (SIGKILL) just after it has saved a batch, before
    # the batch's transaction commits: Redis holds the batch's states, Kafka has neither its
    # output nor its offsets.
    half = len(lines) // 2
    crash = orjson.loads(lines[half]) | {"event_id": f"{CRASH}-1", "customer_id": f"{CRASH}-c"}
    lines = with_ticks([*lines[:half], orjson.dumps(crash), *lines[half:]])
    with planted():
        expected = replay(write_jsonl(tmp_path / "in.jsonl", lines), tmp_path)
    marker = tmp_path / "crashed"
    env = isolated_env(
        broker,
        redis_server,
        "crash",
        MM_PROCESSING_GUARANTEE="exactly_once",
        MM_BATCH_MAX="300",
        **{CRASH_MARKER: str(marker)},
    )
    settings = settings_of(env)
    run(create_topics(settings))
    run(produce(settings, lines))
    first = workers.start(env, faults=True)
    deadline = time.monotonic() + 120
    while first.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.process.returncode == -signal.SIGKILL, "the planted crash happened"
    assert marker.exists()
    first.stopping = True
    second = workers.start(env, faults=True)
    run(wait_consumed(settings, workers))
    # The next owner found the stream's state ahead of what Kafka had committed, undid that
    # save, and redid the batch: read committed, every trigger is there once, with replay's bytes.
    assert second.said("the save is undone")
    report = compare("crash", settings, broker, expected)
    report.dead_expected = Counter(p["reason"] for p in expected.problems)
    print(report)
    assert report.ok, str(report)
    assert report.duplicated == 0, str(report)
