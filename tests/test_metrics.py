"""app.metrics: naming conventions, bounded labels, isolated registries, batch histograms."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError

from app import __version__
from app.decoding import Reason
from app.metrics import (
    LATENCY_BUCKETS,
    BatchHistogram,
    CallbackGauge,
    WorkerMetrics,
    exported_series,
    retry_cause,
)
from app.moments import MOMENT_TYPES
from app.processor import Status
from app.state.store import ConflictError

# Label names with a small, fixed set of values. Anything else (a customer or product id,
# free text) would make the number of series grow with the traffic.
BOUNDED_LABELS = {
    "topic", "event_type", "reason", "status", "moment", "cause", "result", "operation", "partition",
    "version", "python", "label", "model",
}  # fmt: skip


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return samples(registry)[(name, tuple(sorted(labels.items())))]


def test_names_units_and_labels_follow_the_conventions() -> None:
    metrics = WorkerMetrics(runtime=False)
    families = list(metrics.registry.collect())
    assert len(families) >= 20
    for family in families:
        assert family.name.startswith("micromoments_"), family.name
        assert family.documentation, family.name
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_records")), family.name
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            assert set(sample.labels) - {"le"} <= BOUNDED_LABELS, sample
    metrics.consumed({("clickstream.events", 0): 3})
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= BOUNDED_LABELS, sample


def test_registries_are_isolated() -> None:
    first, second = WorkerMetrics(runtime=False), WorkerMetrics(runtime=False)
    first.dead_letters.inc(5)
    assert value(first.registry, "micromoments_dead_letters_total") == 5
    assert value(second.registry, "micromoments_dead_letters_total") == 0


def test_known_labels_start_at_zero() -> None:
    registry = WorkerMetrics(runtime=False).registry
    for moment in (m.name for m in MOMENT_TYPES):
        assert value(registry, "micromoments_triggers_published_total", moment=moment) == 0
        assert value(registry, "micromoments_suppressed_total", moment=moment, reason="cooldown") == 0
    for status in Status:
        assert value(registry, "micromoments_events_processed_total", status=status.value) == 0
    for reason in Reason:
        assert value(registry, "micromoments_events_rejected_total", reason=reason.value) == 0
    assert value(registry, "micromoments_redis_errors_total", operation="save") == 0


def test_build_info_and_runtime_collectors() -> None:
    registry = WorkerMetrics().registry
    found = samples(registry)
    ((_, labels),) = [key for key in found if key[0] == "micromoments_build_info"]
    assert dict(labels)["version"] == __version__
    if Path("/proc/self/stat").exists():  # the process collector reads /proc
        assert ("process_cpu_seconds_total", ()) in found
    assert any(name.startswith("python_gc_") for name, _ in found)


def test_counting_helpers() -> None:
    metrics = WorkerMetrics(runtime=False)
    metrics.consumed({("clickstream.events", 1): 4, ("search.events", 11): 2, ("clickstream.events", -1): 1})
    metrics.acknowledged(["frustration", "frustration", "local_intent"], dead_letters=2, repartitioned=["t"])
    registry = metrics.registry
    consumed = "micromoments_events_consumed_total"
    assert value(registry, consumed, topic="clickstream.events", event_type="product_view") == 4
    assert value(registry, consumed, topic="search.events", event_type="search") == 2
    assert value(registry, consumed, topic="clickstream.events", event_type="invalid") == 1
    assert value(registry, "micromoments_triggers_published_total", moment="frustration") == 2
    assert value(registry, "micromoments_triggers_published_total", moment="local_intent") == 1
    assert value(registry, "micromoments_dead_letters_total") == 2
    assert value(registry, "micromoments_events_repartitioned_total", topic="t") == 1


def test_batch_histogram_agrees_with_prometheus_client() -> None:
    rng = random.Random(7)
    values = [round(rng.uniform(0, 0.06), 4) for _ in range(500)] + [0.025, 0.025, 0.0, 99.0]
    ours, reference = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_seconds", "x", LATENCY_BUCKETS, ours)
    plain = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS, registry=reference)
    batch.observe_many(values[:200])
    for v in values[200:300]:
        batch.observe(v, 1)
    batch.observe(values[300], 0)  # nothing
    for v in values[300:]:
        batch.observe(v)
    for v in values:
        plain.observe(v)

    def histogram(registry: CollectorRegistry) -> dict[str, float]:
        return {
            f"{name}{dict(labels).get('le', '')}": round(v, 9)
            for (name, labels), v in samples(registry).items()
            if not name.endswith("_created")
        }

    assert histogram(ours) == histogram(reference)
    assert batch.count == len(values)
    # A value on a bound counts in that bound's bucket (le: less than or equal).
    assert histogram(ours)["x_seconds_bucket0.025"] - histogram(ours)["x_seconds_bucket0.02"] >= 2


def test_batch_histogram_counts_weighted_observations() -> None:
    registry = CollectorRegistry()
    histogram = BatchHistogram("y_seconds", "y", [0.01, 0.1], registry)
    histogram.observe(0.05, 1000)
    histogram.observe(0.5, 10)
    assert value(registry, "y_seconds_bucket", le="0.01") == 0
    assert value(registry, "y_seconds_bucket", le="0.1") == 1000
    assert value(registry, "y_seconds_bucket", le="+Inf") == 1010
    assert value(registry, "y_seconds_count") == 1010
    assert value(registry, "y_seconds_sum") == pytest.approx(55.0)
    with pytest.raises(ValueError, match="distinct"):
        BatchHistogram("z_seconds", "z", [0.1, 0.1], registry)


def test_callback_gauge_reads_its_source_on_each_scrape() -> None:
    registry = CollectorRegistry()
    gauge = CallbackGauge("lag_records", "lag", ["topic", "partition"], registry)
    assert not [k for k in samples(registry) if k[0] == "lag_records"]
    lags = {("a", "0"): 5.0}
    gauge.source = lambda: list(lags.items())
    assert value(registry, "lag_records", topic="a", partition="0") == 5
    lags[("a", "0")] = 7.0
    assert value(registry, "lag_records", topic="a", partition="0") == 7


def test_exported_series() -> None:
    names = exported_series(WorkerMetrics().registry)
    assert {
        "micromoments_events_consumed_total",  # a labelled counter with no child yet
        "micromoments_processing_latency_seconds_bucket",
        "micromoments_processing_latency_seconds_count",
        "micromoments_redis_request_duration_seconds_sum",
        "micromoments_consumer_lag_records",
        "micromoments_build_info",
        "python_gc_collections_total",
    } <= names
    assert "micromoments_processing_latency_seconds_created" not in names  # a batch histogram has none
    assert "micromoments_events_consumed" not in names


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (ConflictError(["c1"]), "conflict"),
        (RedisConnectionError("refused"), "redis"),
        (ConnectionRefusedError(), "io"),
        (RuntimeError(), "other"),
    ],
)
def test_retry_causes(error: BaseException, cause: str) -> None:
    assert retry_cause(error) == cause


def test_kafka_errors_are_a_retry_cause() -> None:
    from aiokafka.errors import KafkaTimeoutError
    from faust.exceptions import ProducerSendError

    assert retry_cause(KafkaTimeoutError()) == "kafka"
    assert retry_cause(ProducerSendError()) == "kafka"


def test_readme_documents_every_metric() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for family in WorkerMetrics(runtime=False).registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"| `{name}` |" in readme, f"the README's metrics table lacks {name}"
