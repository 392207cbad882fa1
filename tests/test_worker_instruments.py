"""app.worker.instruments: fetch times, batch accounting and the timed state store, on real objects."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence

import orjson
import pytest
from aiokafka import ConsumerRecord
from faust.types import TP
from helpers import raw
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from app.config import load_catalogue
from app.decoding import Rejection, decode_event
from app.detector import Detector
from app.embedded import EmbeddedRedis
from app.events import Kind
from app.metrics import WorkerMetrics
from app.pipeline import Pipeline
from app.policy import Policy
from app.state.memory import MemoryStateStore
from app.state.redis import RedisStateStore
from app.state.store import Checkpoint, ConflictError, StreamSave, Versioned
from app.worker.agent import Routed
from app.worker.instruments import FetchTimes, MeteredStore, account_completed, account_routed


def record(
    topic: str, partition: int, offset: int, value: bytes = b"{}", key: bytes | None = None
) -> ConsumerRecord:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value),
        headers=[],
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise KeyError((name, labels))


def test_fetch_times_follow_records_across_fetches() -> None:
    times = FetchTimes()
    a0, b0 = TP("a", 0), TP("b", 0)
    times.add(a0, 4, at=10.0)  # offsets 0-4
    times.add(b0, 1, at=10.0)  # offsets 0-1
    times.add(a0, 9, at=11.0)  # offsets 5-9
    # Aligned: a0's first three and all of b0 leave now; the rest of a0 waits.
    first = times.released([[record("a", 0, o) for o in (0, 1, 2)] + [record("b", 0, o) for o in (0, 1)]])
    assert sorted(first) == [(10.0, 5)]
    assert len(times) == 2  # a0's first fetch is not all out yet; its second is untouched
    later = times.released([[record("a", 0, o) for o in range(3, 10)]])
    assert sorted(later) == [(10.0, 2), (11.0, 5)]
    assert len(times) == 0
    times.add(a0, 12, at=12.0)
    times.forget([a0])
    assert times.released([[record("a", 0, 11)]]) == []


async def test_routed_and_completed_batches_are_counted() -> None:
    catalogue = load_catalogue()
    pipeline = Pipeline(Detector(catalogue), Policy(catalogue.policy), MemoryStateStore())
    events = [
        raw("search", "0s", customer="c1", query="cheap headphones"),
        raw("product_view", "1m", customer="c1", product_id="p1", category="tv", price=499.0),
        raw("product_view", "1m", customer="c1", product_id="p1", category="tv", price=499.0),
    ]
    events[2]["event_id"] = events[1]["event_id"]  # a redelivery
    routed = Routed()
    for offset, fields in enumerate(events):
        rec = record("clicks", 0, offset, orjson.dumps(fields), b"c1")
        decoded = decode_event(rec.value)
        assert not isinstance(decoded, Rejection)
        routed.events.setdefault("p0", []).append(decoded)
        routed.records.setdefault("p0", []).append(rec)
    routed.dead.append((record("clicks", 0, 3, b"{nope"), "not_json", "..."))
    # A search keyed by someone else, on its way to the repartition topic.
    routed.misrouted.append((record("search", 0, 0, b"{}", b"x"), b"c9"))
    routed.consumed["search", Kind.of("search")] += 1
    metrics = WorkerMetrics(runtime=False)
    registry = metrics.registry
    account_routed(metrics, routed, now_ms=decoded.ts + 90_000)

    batch = await pipeline.run(routed.events)
    account_completed(
        metrics, routed, batch, [(100.0, 3), (100.5, 1)], acknowledged_at=100.75, started_at=0.0
    )
    assert value(registry, "micromoments_events_consumed_total", topic="clicks", event_type="search") == 1
    assert (
        value(registry, "micromoments_events_consumed_total", topic="clicks", event_type="product_view") == 2
    )
    assert value(registry, "micromoments_events_consumed_total", topic="clicks", event_type="invalid") == 1
    assert value(registry, "micromoments_events_consumed_total", topic="search", event_type="search") == 1
    assert value(registry, "micromoments_events_processed_total", status="applied") == 2
    assert value(registry, "micromoments_events_processed_total", status="duplicate") == 1
    assert value(registry, "micromoments_events_rejected_total", reason="not_json") == 1
    # A search for cheap headphones is a price-comparison candidate: a trigger, or suppressed.
    detections = Counter(d.moment for d in batch.detections)
    suppressed = sum((outcome.suppressed for outcome in batch.outcomes.values()), Counter[tuple[str, str]]())
    assert detections or suppressed
    for moment, n in detections.items():
        assert value(registry, "micromoments_detections_total", moment=moment) == n
    for (moment, reason), n in suppressed.items():
        assert value(registry, "micromoments_suppressed_total", moment=moment, reason=reason) == n
    # Event-time lag: 90 s for the last events, 150 s for the first.
    assert value(registry, "micromoments_event_time_lag_seconds_count") == 3
    assert value(registry, "micromoments_event_time_lag_seconds_sum") == pytest.approx(90 + 90 + 150)
    # Latency per record: three fetched at 100.0, one at 100.5, all acknowledged at 100.75.
    assert value(registry, "micromoments_processing_latency_seconds_count") == 4
    assert value(registry, "micromoments_processing_latency_seconds_sum") == pytest.approx(3 * 0.75 + 0.25)
    assert value(registry, "micromoments_processing_latency_seconds_bucket", le="0.25") == 1
    assert value(registry, "micromoments_batch_records_sum") == 5
    assert value(registry, "micromoments_batches_total", result="completed") == 1


class Failing:
    """A store whose calls fail as a broken Redis connection does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def load(self, customers: Collection[str]) -> dict[str, Versioned]:
        raise self.error

    async def save(self, saves: Sequence[StreamSave]) -> None:
        raise self.error

    async def checkpoint(self, stream: str) -> Checkpoint:
        raise self.error

    async def deadlines(
        self, stream: str, after: int | None = None, until: int | None = None
    ) -> dict[str, int]:
        raise self.error

    async def forget(self, customer: str) -> bool:
        raise self.error

    async def close(self) -> None: ...


async def test_metered_store_times_calls_and_counts_errors() -> None:
    metrics = WorkerMetrics(runtime=False)
    registry = metrics.registry
    store = MeteredStore(MemoryStateStore(), metrics)
    assert await store.load({"p0": ["c1"]}) == {}
    assert (await store.checkpoint("p0")).clock is None
    await store.ping()  # in memory: always there
    assert value(registry, "micromoments_redis_request_duration_seconds_count", operation="load") == 1
    assert value(registry, "micromoments_redis_request_duration_seconds_count", operation="checkpoint") == 1

    broken = MeteredStore(Failing(RedisConnectionError("refused")), metrics)
    with pytest.raises(RedisConnectionError):
        await broken.save([])
    assert value(registry, "micromoments_redis_errors_total", operation="save") == 1
    assert value(registry, "micromoments_redis_request_duration_seconds_count", operation="save") == 1

    conflicted = MeteredStore(Failing(ConflictError(["c1"])), metrics)
    with pytest.raises(ConflictError):
        await conflicted.save([])
    assert value(registry, "micromoments_state_conflicts_total") == 1
    assert value(registry, "micromoments_redis_errors_total", operation="save") == 1  # not a Redis error


async def test_ping_reaches_redis(redis_server: EmbeddedRedis) -> None:
    metrics = WorkerMetrics(runtime=False)
    store = MeteredStore(RedisStateStore.from_url(redis_server.url), metrics)
    try:
        await store.ping()
    finally:
        await store.close()
    assert value(metrics.registry, "micromoments_redis_request_duration_seconds_count", operation="ping") == 1
    # Nobody listens here: the ping fails, and counts as an error.
    nowhere = MeteredStore(RedisStateStore.from_url("redis://127.0.0.1:1/0"), metrics)
    try:
        with pytest.raises((RedisConnectionError, OSError)):
            await nowhere.ping()
    finally:
        await nowhere.close()
    assert value(metrics.registry, "micromoments_redis_errors_total", operation="ping") == 1


def test_event_time_lag_of_a_large_batch_is_sampled_and_weighted() -> None:
    metrics = WorkerMetrics(runtime=False)
    events = [decode_event(orjson.dumps(raw("page_view", f"{i}s", customer=f"c{i}"))) for i in range(1000)]
    routed = Routed()
    routed.events["p0"] = [e for e in events if not isinstance(e, Rejection)]
    routed.records["p0"] = [record("clicks", 0, i) for i in range(1000)]
    latest = routed.events["p0"][-1].ts
    account_routed(metrics, routed, now_ms=latest + 60_000)
    registry = metrics.registry
    assert (
        value(registry, "micromoments_events_consumed_total", topic="clicks", event_type="page_view") == 1000
    )
    # Every 3rd event (1000 // 256), each standing for 3: 334 x 3 observations.
    assert value(registry, "micromoments_event_time_lag_seconds_count") == 1002
    # Lags from 60 s to 1059 s; their mean is kept.
    mean = value(registry, "micromoments_event_time_lag_seconds_sum") / 1002
    assert mean == pytest.approx(559.5, abs=2)
    assert value(registry, "micromoments_event_time_lag_seconds_bucket", le="30.0") == 0
    assert value(registry, "micromoments_event_time_lag_seconds_bucket", le="600.0") == pytest.approx(
        3 * 181, abs=3
    )
