"""Short chaos runs (see chaos.py): real broker, real redis-server, real workers, faults, against replay.

``bench/chaos.py`` runs the same at full size. Here each run asserts that nothing is
lost and nothing unexpected is published: every trigger id replay gives, none it
does not, each with replay's bytes; every record replay does not apply dead-lettered
once, for replay's reason. Duplicates are allowed: delivery is at least once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from chaos import (
    BAD,
    chaos_run,
    kills,
    reason_of,
    redis_paused,
    redis_restarted,
    shop,
    with_bad_records,
    with_planted_faults,
    with_slow_topic,
    with_ticks,
    with_ties,
    with_wrong_clocks,
    without_partition_for,
)
from harness import PARTITIONS, Workers, replay, write_jsonl

from app.embedded import Broker, EmbeddedRedis


@pytest.fixture(scope="module")
def durable_redis(redis_server: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    """A redis-server of the module's own that writes every change to disk before answering.

    Killed and restarted by the faults; ``redis_server`` is asked for first only so that a
    machine without redis-server skips (or, with CI=true, fails) as every integration test does.
    """
    with EmbeddedRedis(appendfsync="always") as server:
        yield server


def test_every_kind_of_bad_input_is_dead_lettered_and_changes_nothing_else(
    broker: Broker, durable_redis: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    rng = random.Random(10)
    # Devices whose clocks are wrong: three events in a row each, far or a little ahead, or behind.
    clean = with_wrong_clocks(
        shop(8_000, 500, seed=10),
        rng,
        ahead=[timedelta(days=800), timedelta(days=9), timedelta(hours=5)],
        behind=[timedelta(days=3), timedelta(hours=2)],
    )
    lines, planted = with_planted_faults(clean, per_kind=20, rng=rng)
    lines, expected = with_bad_records(lines, per_kind=60, rng=rng)
    report = chaos_run(
        "bad-input",
        lines,
        broker=broker,
        redis=durable_redis,
        workers=workers,
        directory=tmp_path,
        faults_planted=True,
    )
    print(report)
    assert report.ok, str(report)
    assert report.expected > 200, "enough triggers to compare"
    for kind in BAD:
        assert report.dead[reason_of(kind)] >= expected[reason_of(kind)], kind
    # Each kind of failure in the core was met, and went to the dead-letter topic saying what raised.
    assert report.failures.keys() == {
        "PlantedFault: detection of",
        "PlantedFault: the policy",
        "PlantedFault: the trigger",
    }, report.failures
    assert report.dead["internal_error"] <= planted
    assert report.dead["late"] > 0, "the devices behind"
    assert report.dead["timestamp_out_of_range"] >= 3 + expected["timestamp_out_of_range"], "800 days ahead"
    # And every customer's triggers are those of the input without any of it (the events that
    # made the core raise are copies, under ids of their own, of real ones).
    assert report.published == set(
        replay(write_jsonl(tmp_path / "clean.jsonl", with_ticks(clean)), tmp_path).triggers
    )
    workers.check_alive()


def test_workers_killed_at_random_lose_nothing(
    broker: Broker, durable_redis: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    lines, _ = with_bad_records(shop(30_000, 2_000, seed=11), per_kind=10, rng=random.Random(11))
    report = chaos_run(
        "kills",
        lines,
        broker=broker,
        redis=durable_redis,
        workers=workers,
        directory=tmp_path,
        fault=kills(3, pause=(1.0, 3.0)),
        env={"MM_BATCH_MAX": "500"},
        seed=11,
    )
    print(report)
    assert report.ok, str(report)
    assert len(report.notes) == 3


@pytest.mark.parametrize("fault", ["paused", "restarted"])
def test_redis_down_loses_nothing(
    fault: str, broker: Broker, durable_redis: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    lines = shop(15_000, 1_000, seed=12)
    report = chaos_run(
        f"redis-{fault}",
        lines,
        broker=broker,
        redis=durable_redis,
        workers=workers,
        directory=tmp_path,
        fault=redis_paused(4.0, after=1.0) if fault == "paused" else redis_restarted(down=2.0, after=1.0),
        env={"MM_BATCH_MAX": "500"},
    )
    print(report)
    assert report.ok, str(report)
    workers.check_alive()


def test_a_slow_topic_is_waited_for_not_overtaken(
    broker: Broker, durable_redis: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    lines = with_slow_topic(shop(10_000, 800, seed=13), random.Random(13), count=40, size=400_000)
    report = chaos_run(
        "slow-topic", lines, broker=broker, redis=durable_redis, workers=workers, directory=tmp_path
    )
    print(report)
    assert report.ok, str(report)
    assert report.dead == Counter({"too_large": 40}), "no valid event is late"


def test_a_partition_quiet_for_longer_than_the_skew_and_ties_across_topics(
    broker: Broker, durable_redis: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    # Ten days of traffic; partition 1's customers stay away from day 1 to day 9. And a fifth
    # of the events share their time with their customer's previous event, whatever the topic.
    lines = shop(12_000, 600, seed=14, days=10)
    lines = without_partition_for(lines, 1, PARTITIONS, timedelta(days=1), timedelta(days=9))
    lines = with_ties(lines, random.Random(14), share=0.2)
    report = chaos_run(
        "quiet-and-ties", lines, broker=broker, redis=durable_redis, workers=workers, directory=tmp_path
    )
    print(report)
    assert report.ok, str(report)
    assert not report.dead, "nothing rejected, nothing late"
