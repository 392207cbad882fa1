"""``micromoments feed``: live synthetic traffic to the input topics, as producers should send it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from test_prometheus import read_topic

from app import cli
from app.embedded import EmbeddedBroker
from app.settings import Settings, load_settings
from app.worker.feed import topic_for
from app.worker.kafka import ensure_topics

pytestmark = pytest.mark.integration


def test_feed_sends_keyed_time_stamped_events(
    embedded_broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    suffix = uuid.uuid4().hex[:8]
    env = {
        "MM_KAFKA_BOOTSTRAP": embedded_broker.bootstrap,
        "MM_KAFKA_IDEMPOTENCE": "false",
        "MM_PARTITIONS": "2",
    }
    for field in Settings.__struct_fields__:
        if field.startswith("topic_"):  # topics of this test's own
            env[f"MM_{field.upper()}"] = f"{field[len('topic_') :]}-{suffix}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(env)
    asyncio.run(ensure_topics(settings))

    # Fast: 2,000 events/s of wall-clock time, event time 100x faster, from noon UTC (no offset given).
    feed = ["feed", "--events", "60", "--rate", "2000", "--speed", "100", "--seed", "3"]
    assert cli.main([*feed, "--start", "2026-11-25T12:00:00"]) == 0

    records = [r for topic in settings.input_topics for r in asyncio.run(read_topic(settings, topic))]
    assert len(records) == 60
    for record in records:
        event = orjson.loads(record.value)
        assert record.key == event["customer_id"].encode()
        assert record.topic == topic_for(event["event_type"], settings)
        assert record.timestamp == int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)
    assert {r.topic for r in records} >= {settings.topic_clickstream}
    noon = datetime(2026, 11, 25, 12, tzinfo=UTC)
    times = sorted(datetime.fromisoformat(orjson.loads(r.value)["occurred_at"]) for r in records)
    assert noon <= times[0]
    assert times[-1] < noon + timedelta(hours=1)


def test_feed_refuses_a_rate_of_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["feed", "--rate", "0"]) == 2
    assert "--rate and --speed must be positive" in capsys.readouterr().err
