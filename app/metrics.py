"""The worker's Prometheus metrics: one :class:`WorkerMetrics` per worker, on its own registry.

Conventions (https://prometheus.io/docs/practices/naming/): every name starts
with ``micromoments_``; counters end in ``_total``; durations are in seconds
(``_seconds``); sizes are counts of records (``_records``). Labels take values
from small fixed sets only — topic names from the settings, event types from
the schema's closed list, reason codes, moment names, partition numbers —
never a customer id, a product id or free text, so the number of series stays
bounded whatever the traffic.

Nothing here is global: a :class:`WorkerMetrics` owns a
:class:`~prometheus_client.CollectorRegistry`, which the HTTP server exposes
(:mod:`app.worker.http`) and each test creates afresh. Counters whose labels
are known in advance (statuses, reasons, moments) start at zero, so rates and
alert expressions see them before the first event.

Every metric is built on the same registry by :class:`WorkerMetrics`, so that
:func:`exported_series` — which the tests check every dashboard and alert query
against — sees them all.
"""

from __future__ import annotations

import platform
import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from app import __version__
from app.decoding import Reason
from app.events import Kind
from app.moments import MOMENT_TYPES
from app.processor import Status

NAMESPACE: Final = "micromoments"
INF: Final = float("inf")

# Consume -> triggers acknowledged; the objective is a p99 under 25 ms, so the buckets
# are dense around it (alerts compare against the 0.025 bucket).
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# now - occurred_at: from a healthy second to a backlog of days.
EVENT_TIME_LAG_BUCKETS: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 24 * 3600.0, 7 * 24 * 3600.0,
)  # fmt: skip
REDIS_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
BATCH_RECORD_BUCKETS: Final = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
)  # fmt: skip
BATCH_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# How prometheus_client writes a bucket bound ("0.025", "+Inf"), so both kinds of histogram agree.
_le: Callable[[float], str] = floatToGoString

# The event_type label of records that could not be decoded into an event.
INVALID_TYPE: Final = "invalid"
# Why a detector candidate did not become a trigger: the detector's reasons
# (app.detector.Detector._decide), then the engagement policy's (app.policy).
SUPPRESSION_REASONS: Final = (
    "below_threshold", "cooldown", "suppressed", "no_consent", "frequency_cap", "quiet_hours", "expired",
)  # fmt: skip

# Why a deadline was dropped instead of fired (app.processor.Outcome.dropped).
DEADLINE_DROP_REASONS: Final = ("no_state", "internal_error")
# What made a batch fail and be redone (see retry_cause).
RETRY_CAUSES: Final = ("conflict", "redis", "kafka", "io", "other")
# The state store calls timed by app.worker.instruments.MeteredStore.
STORE_OPERATIONS: Final = ("load", "save", "checkpoint", "forget", "ping")


class BatchHistogram:
    """A histogram fed many observations at once: ``observe(value, count)`` and ``observe_many``.

    A fetch holds thousands of records that share one latency; observing each
    through :class:`prometheus_client.Histogram` would cost a lock and a bucket
    search per record. This keeps plain bucket counts and renders them on a
    scrape as an ordinary histogram (``_bucket``, ``_sum``, ``_count``).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = sorted(float(b) for b in buckets if b != INF)
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct and not only +Inf")
        self.name = name
        self.documentation = documentation
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float, count: int = 1) -> None:
        """``count`` observations of ``value``."""
        if count <= 0:
            return
        index = bisect_left(self.bounds, value)  # the first bound >= value: the `le` bucket
        with self._lock:
            self._counts[index] += count
            self._sum += value * count

    def observe_many(self, values: Iterable[float], weight: int = 1) -> None:
        """Each of ``values``, ``weight`` times (a sample standing for ``weight`` times as many)."""
        bounds = self.bounds
        counts = [0] * len(self._counts)
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        with self._lock:
            for i, n in enumerate(counts):
                self._counts[i] += n * weight
            self._sum += total * weight

    @property
    def count(self) -> int:
        return sum(self._counts)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, n in zip([*self.bounds, INF], counts, strict=True):
            cumulative += n
            buckets.append((_le(bound), float(cumulative)))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


Sample = tuple[Sequence[str], float]


class CallbackGauge:
    """A gauge whose samples are read on each scrape from ``source`` (label values, value)."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.source: Callable[[], Iterable[Sample]] = lambda: ()
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in self.source():
            family.add_metric(list(labels), value)
        yield family


class WorkerMetrics:
    """Every metric the worker exports; see the README's Operations section for each one's meaning."""

    def __init__(self, registry: CollectorRegistry | None = None, *, runtime: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        if runtime:
            # process_* (CPU, memory, file descriptors), python_info and python_gc_*.
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

        def name(suffix: str) -> str:
            return f"{NAMESPACE}_{suffix}"

        moments = [m.name for m in MOMENT_TYPES]
        self.build_info = Gauge(
            name("build_info"),
            "Always 1; the version running, as labels.",
            ["version", "python"],
            registry=reg,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)

        # --- input ------------------------------------------------------------------------
        self.events_consumed = Counter(
            name("events_consumed_total"),
            "Records read from the input and repartition topics, by topic and event type"
            f" ({INVALID_TYPE!r}: not a valid event).",
            ["topic", "event_type"],
            registry=reg,
        )
        self.events_rejected = Counter(
            name("events_rejected_total"),
            "Events dead-lettered as invalid, by reason code (of completed batches).",
            ["reason"],
            registry=reg,
        )
        self.events_processed = Counter(
            name("events_processed_total"),
            "Events the detector was given, by what it did with them: applied, duplicate"
            " (already applied: a redelivery), late (more than the allowed lateness behind its"
            " customer's latest event, dead-lettered), timestamp_out_of_range (too far ahead,"
            " dead-lettered), forgotten, or internal_error (processing it raised: dead-lettered,"
            " the batch went on without it).",
            ["status"],
            registry=reg,
        )
        self.events_repartitioned = Counter(
            name("events_repartitioned_total"),
            "Events re-keyed by customer through the repartition topic (acknowledged sends),"
            " by source topic.",
            ["topic"],
            registry=reg,
        )
        self.event_time_lag = BatchHistogram(
            name("event_time_lag_seconds"),
            "Wall-clock time minus occurred_at of each event when the worker consumed it.",
            EVENT_TIME_LAG_BUCKETS,
            reg,
        )

        # --- output -----------------------------------------------------------------------
        self.detections = Counter(
            name("detections_total"),
            "Micro-moments detected, by moment (once per completed batch).",
            ["moment"],
            registry=reg,
        )
        self.triggers_published = Counter(
            name("triggers_published_total"),
            "Trigger events acknowledged by the broker, by moment; a batch redone after a"
            " failure publishes its triggers again (same ids).",
            ["moment"],
            registry=reg,
        )
        self.suppressed = Counter(
            name("suppressed_total"),
            "Detector candidates that did not become triggers, by moment and reason.",
            ["moment", "reason"],
            registry=reg,
        )
        self.dead_letters = Counter(
            name("dead_letters_total"),
            "Messages written to the dead-letter topic (acknowledged sends).",
            registry=reg,
        )
        self.states_unreadable = Counter(
            name("states_unreadable_total"),
            "Stored customer states this worker could not read (written by an unknown state schema):"
            " each customer started afresh, logged.",
            registry=reg,
        )
        self.deadlines_dropped = Counter(
            name("deadlines_dropped_total"),
            "Deadlines (abandoned carts, outcomes, ends of quiet hours) dropped instead of fired,"
            " by reason: no_state (the customer's state was erased or had expired), internal_error"
            " (firing it raised).",
            ["reason"],
            registry=reg,
        )

        # --- engagement policy and privacy ----------------------------------------------------
        self.held_out = Counter(
            name("held_out_total"),
            "Detections kept from the customer as the holdout group (published to the holdout"
            " topic, to measure lift), by moment.",
            ["moment"],
            registry=reg,
        )
        self.deferred = Counter(
            name("deferred_total"),
            "Triggers deferred to the end of the customer's quiet hours (released later, or dropped).",
            registry=reg,
        )
        self.forgotten = Counter(
            name("customers_forgotten_total"),
            "Right-to-be-forgotten requests carried out: state erased and confirmation published.",
            registry=reg,
        )

        # --- online learning ------------------------------------------------------------------
        self.training_examples = Counter(
            name("training_examples_total"),
            "Labelled outcomes published for the learners, by moment and label (positive, negative).",
            ["moment", "label"],
            registry=reg,
        )
        self.model_version = CallbackGauge(
            name("model_version"),
            "Version of each model this worker scores with (0: warming up, the rules decide).",
            ["model"],
            reg,
        )
        self.model_examples = CallbackGauge(
            name("model_examples"),
            "Examples learnt by each model this worker's learner owns.",
            ["model"],
            reg,
        )
        self.model_auc = CallbackGauge(
            name("model_auc"),
            "Progressive (predict, then learn) ROC AUC of each moment model this worker learns.",
            ["model"],
            reg,
        )
        self.model_log_loss = CallbackGauge(
            name("model_log_loss"),
            "Progressive log loss of each moment model this worker learns.",
            ["model"],
            reg,
        )
        self.model_drift_alarms = CallbackGauge(
            name("model_drift_alarms"),
            "Concept-drift alarms raised (ADWIN on the model's errors) since each model was created.",
            ["model"],
            reg,
        )
        self.model_snapshots = Counter(
            name("model_snapshots_total"),
            "Model snapshots stored by this worker's learner, by result: stored, conflict (another"
            " learner had moved the model on; this one reloads), or taken_over (the stored one could"
            " not be used here, after a key rotation or a River upgrade: learnt afresh, one version up).",
            ["result"],
            registry=reg,
        )

        # --- latency and batches ----------------------------------------------------------
        self.processing_latency = BatchHistogram(
            name("processing_latency_seconds"),
            "Per record: from the fetch that brought it to the worker to the broker's"
            " acknowledgement of its batch's triggers, dead letters and re-keyed events.",
            LATENCY_BUCKETS,
            reg,
        )
        self.batch_records = Histogram(
            name("batch_records"),
            "Records per batch handed to the detector (after event-time alignment).",
            buckets=BATCH_RECORD_BUCKETS,
            registry=reg,
        )
        self.batch_duration = Histogram(
            name("batch_duration_seconds"),
            "Time to process one batch: decode, detect, publish, save, commit (retries included).",
            buckets=BATCH_DURATION_BUCKETS,
            registry=reg,
        )
        self.batches = Counter(
            name("batches_total"),
            "Batches handled, by result: completed, or abandoned (partitions revoked while"
            " retrying: the new owner redoes them).",
            ["result"],
            registry=reg,
        )
        self.batch_retries = Counter(
            name("batch_retries_total"),
            "Batches that failed and are redone after a backoff, by cause.",
            ["cause"],
            registry=reg,
        )
        self.offset_commits = Counter(
            name("offset_commits_total"),
            "Offset commits to the consumer group, by result (ok, failed).",
            ["result"],
            registry=reg,
        )

        # --- state store --------------------------------------------------------------------
        self.redis_duration = Histogram(
            name("redis_request_duration_seconds"),
            "State store (Redis) calls, by operation; failed calls included.",
            ["operation"],
            buckets=REDIS_BUCKETS,
            registry=reg,
        )
        self.redis_errors = Counter(
            name("redis_errors_total"),
            "State store (Redis) calls that failed (connection, timeout, server error), by operation.",
            ["operation"],
            registry=reg,
        )
        self.state_conflicts = Counter(
            name("state_conflicts_total"),
            "Batch saves refused because another worker wrote one of its customers meanwhile.",
            registry=reg,
        )
        self.reconciliations = Counter(
            name("reconciliations_total"),
            "Streams claimed with exactly-once processing, by what their stored state was against the"
            " input committed: consistent, rolled_back (the last save's transaction had not committed),"
            " ahead (saved while at least once) or behind (the store lost writes).",
            ["result"],
            registry=reg,
        )

        # --- consumer and process -------------------------------------------------------
        self.consumer_lag = CallbackGauge(
            name("consumer_lag_records"),
            "Records on the broker not yet fetched by this worker, per assigned partition.",
            ["topic", "partition"],
            reg,
        )
        self.assigned_partitions = CallbackGauge(
            name("assigned_partitions"),
            "Topic-partitions assigned to this worker.",
            [],
            reg,
        )
        self.event_loop_lag = Gauge(
            name("event_loop_lag_seconds"),
            "How late the event loop last ran a timer: time a batch or a blocking call held the loop.",
            registry=reg,
        )

        # Known label values start at zero.
        for status in Status:
            self.events_processed.labels(status.value)
        for why in DEADLINE_DROP_REASONS:
            self.deadlines_dropped.labels(why)
        for reason in Reason:
            self.events_rejected.labels(reason.value)
        for moment in moments:
            self.detections.labels(moment)
            self.triggers_published.labels(moment)
            for why in SUPPRESSION_REASONS:
                self.suppressed.labels(moment, why)
        for moment in moments:
            self.held_out.labels(moment)
            for label in ("positive", "negative"):
                self.training_examples.labels(moment, label)
        for result in ("stored", "conflict", "taken_over"):
            self.model_snapshots.labels(result)
        for result in ("completed", "abandoned"):
            self.batches.labels(result)
        for cause in RETRY_CAUSES:
            self.batch_retries.labels(cause)
        for result in ("ok", "failed"):
            self.offset_commits.labels(result)
        for operation in STORE_OPERATIONS:
            self.redis_duration.labels(operation)
            self.redis_errors.labels(operation)

    # --- batch accounting helpers (see app.worker.instruments) -------------------------------

    @staticmethod
    def add(counter: Counter, counts: Mapping[Any, int]) -> None:
        """Increment ``counter``'s children by ``counts`` (label value, or tuple of them -> n)."""
        for labels, n in counts.items():
            if n:
                values = labels if isinstance(labels, tuple) else (labels,)
                counter.labels(*values).inc(n)

    def consumed(self, counts: Mapping[tuple[str, int], int]) -> None:
        """Records read, as (topic, event Kind code, or -1 for invalid) -> n."""
        names = Kind.NAMES
        for (topic, kind), n in counts.items():
            self.events_consumed.labels(topic, names[kind] if kind >= 0 else INVALID_TYPE).inc(n)

    def acknowledged(self, moments: Iterable[str], dead_letters: int, repartitioned: Iterable[str]) -> None:
        """A batch's sends were acknowledged: triggers (their moments), dead letters, re-keyed events."""
        self.add(self.triggers_published, Tally(moments))
        if dead_letters:
            self.dead_letters.inc(dead_letters)
        self.add(self.events_repartitioned, Tally(repartitioned))


def retry_cause(exc: BaseException) -> str:
    """A small fixed label for why a batch failed (the exception types are many)."""
    from redis.exceptions import RedisError

    from app.state.store import ConflictError

    if isinstance(exc, ConflictError):
        return "conflict"
    if isinstance(exc, RedisError):
        return "redis"
    if type(exc).__module__.split(".")[0] in ("aiokafka", "kafka", "faust"):
        return "kafka"
    if isinstance(exc, OSError):
        return "io"
    return "other"


_SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_series(registry: CollectorRegistry) -> set[str]:
    """The names of every series ``registry`` exports (``micromoments_x_total``, ``..._bucket``…).

    What a PromQL query can select; the tests check the dashboard's and the alert
    rules' queries against it. A family with no sample yet (labelled, no child
    created) counts with the series names its type gives.
    """
    names: set[str] = set()
    for family in registry.collect():
        if family.samples:
            names.update(sample.name for sample in family.samples)
        else:
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
    return names


__all__ = [
    "BatchHistogram",
    "CallbackGauge",
    "WorkerMetrics",
    "exported_series",
    "retry_cause",
]
