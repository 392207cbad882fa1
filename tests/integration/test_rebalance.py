"""Rebalances under faults: a zombie worker fenced off, and a retrying batch that lets its partitions go.

Each test pre-produces a realistic backlog, then runs two workers against one group:

- a worker paused (SIGSTOP) past the session timeout while another takes its partitions over,
  then resumed: every write it then tries on those partitions is refused (the new owner's
  claim on each stream), and counted; the triggers still equal replay's, none lost;
- a worker whose batch keeps failing (Redis hung) while another joins: it gives its partitions
  up at once instead of holding the rebalance until Redis is back.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from chaos import compare, shop, with_ticks
from faults import STALL, planted
from harness import (
    TIMEOUT,
    WorkerProcess,
    Workers,
    create_topics,
    isolated_env,
    partition_of,
    produce,
    replay,
    run,
    settings_of,
    wait_consumed,
    wait_for_records,
    write_jsonl,
)
from redis import Redis as SyncRedis

from app.embedded import LOOPBACK, Broker, EmbeddedRedis
from app.worker.agent import stream_of


@pytest.fixture
def own_redis(redis_server: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, to pause (``redis_server`` first: skip or fail as all do)."""
    with EmbeddedRedis(appendfsync="always") as server:
        yield server


def wait_until(what: str, done: object, within: float = TIMEOUT) -> float:
    """Seconds until ``done()`` holds; fail after ``within``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if done():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {within} s")


def stopped(worker: WorkerProcess) -> bool:
    """Whether the worker's process is stopped (SIGSTOP), from /proc."""
    return Path(f"/proc/{worker.process.pid}/stat").read_text().split(") ", 1)[1].startswith("T")


@pytest.mark.parametrize(
    ("guarantee", "commit_interval_ms"),
    # A minute between commits: the successor reads again much of what the zombie saved,
    # and must skip all of it.
    [("at_least_once", "100"), ("at_least_once", "60000"), ("exactly_once", "100")],
)
def test_a_paused_worker_is_fenced_off_when_it_wakes_and_nothing_is_lost(
    guarantee: str,
    commit_interval_ms: str,
    broker: Broker,
    own_redis: EmbeddedRedis,
    workers: Workers,
    tmp_path: Path,
) -> None:
    lines = shop(20_000, 1_500, seed=21)
    # Half-way through, an event on which the first worker stops itself, its batch done and about
    # to be saved, as a long GC pause would: it is paused past its session, another takes over.
    middle = orjson.loads(lines[len(lines) // 2]) | {"event_id": f"{STALL}-1", "customer_id": f"{STALL}-c"}
    lines = with_ticks([*lines[: len(lines) // 2], orjson.dumps(middle), *lines[len(lines) // 2 :]])
    with planted():
        expected = replay(write_jsonl(tmp_path / "in.jsonl", lines), tmp_path)
    env = isolated_env(
        broker,
        own_redis,
        "zombie",
        MM_BATCH_MAX="300",
        MM_PROCESSING_GUARANTEE=guarantee,
        MM_KAFKA_COMMIT_INTERVAL_MS=commit_interval_ms,
    )
    settings = settings_of(env)
    run(create_topics(settings))
    run(produce(settings, lines))
    zombie = workers.start(env, faults=True)
    wait_until("the first worker stalls", lambda: stopped(zombie))
    try:
        successor = workers.start(env)
        # It takes every partition once the paused one's session has expired, and works on.
        wait_until("the successor's partitions", lambda: successor.said("assigned partitions [0, 1, 2, 3]"))
        run(
            wait_for_records(
                broker.bootstrap, settings.topic_triggers, len(expected.triggers) // 2, workers, TIMEOUT
            )
        )
        # And has claimed the stream the zombie stalled in (its epoch moved on past the
        # zombie's claim): the zombie's pending save includes that stream, so it must be refused.
        # (Streams are claimed with their first batch: others may not be claimed yet.)
        stalled = stream_of(partition_of(middle["customer_id"].encode()))
        claimed = lambda: claimed_twice(own_redis, settings.redis_prefix, stalled)  # noqa: E731
        wait_until("the successor's claim", claimed, 60)
    finally:
        zombie.resume()
    # Awake, the zombie finishes its batch: its save is refused (the successor claimed the
    # stream meanwhile), counted; then it gives the batch up.
    refused = lambda: zombie.metrics("micromoments_state_conflicts_total") > 0  # noqa: E731
    wait_until("the zombie's writes are refused", refused, 60)
    run(wait_consumed(settings, workers))
    report = compare("zombie", settings, broker, expected)
    report.dead_expected = Counter(p["reason"] for p in expected.problems)
    print(report)
    assert not report.lost
    assert not report.extra
    assert not report.changed, "a trigger published twice carries the same bytes"
    assert report.dead == report.dead_expected, "and nothing dead-lettered that replay applies"
    if guarantee == "exactly_once":
        # Its producer fenced too: nothing of what it sent awake is read committed.
        assert report.duplicated == 0, str(report)


def claimed_twice(redis: EmbeddedRedis, prefix: str, stream: str) -> bool:
    """Whether ``stream`` has been claimed twice: by the first worker, then by its successor."""
    client = SyncRedis(host=LOOPBACK, port=redis.port)
    try:
        return int(client.get(f"{prefix}:epoch:{{{stream}}}") or 0) >= 2
    finally:
        client.close()


def test_a_batch_retrying_while_redis_hangs_gives_its_partitions_up_at_once(
    broker: Broker, own_redis: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    lines = with_ticks(shop(8_000, 600, seed=22))
    expected = replay(write_jsonl(tmp_path / "in.jsonl", lines), tmp_path)
    env = isolated_env(broker, own_redis, "revoke", MM_BATCH_MAX="300", MM_REDIS_TIMEOUT_S="1")
    settings = settings_of(env)
    run(create_topics(settings))
    run(produce(settings, lines))
    first = workers.start(env)
    run(wait_for_records(broker.bootstrap, settings.topic_triggers, 1, workers, TIMEOUT))
    own_redis.pause()
    try:
        wait_until("the batch retries", lambda: first.said("batch failed, redoing it"), 30)
        second = workers.start(env)
        # The group rebalances while Redis still hangs: the retrying batch lets go of what is revoked.
        took = wait_until(
            "a rebalance",
            lambda: second.said("assigned partitions [") and not second.said("assigned partitions []"),
            30,
        )
        assert first.said("partitions revoked while retrying") or first.said(
            "partitions revoked while processing"
        )
        print(f"the second worker had partitions {took:.1f} s after it started, Redis still hung")
    finally:
        own_redis.resume()
    run(wait_consumed(settings, workers))
    report = compare("revoke", settings, broker, expected)
    report.dead_expected = Counter(p["reason"] for p in expected.problems)
    print(report)
    assert report.ok, str(report)
