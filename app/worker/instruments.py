"""What the worker measures, kept out of the agent: fetch times, batch accounting, a timed state store.

- :class:`FetchTimes` remembers when each fetched record arrived, so a batch
  can report, per record, the time from its fetch to its triggers' acknowledgement
  — alignment waits included (records may wait in an aligner across fetches).
- :func:`account_routed` and :func:`account_completed` turn a batch into counter
  increments, a handful per batch rather than one per event.
- :class:`MeteredStore` is a :class:`~app.state.store.StateStore` that times every
  call of the store it wraps and counts its errors.
- :func:`watch_consumer` and :func:`readiness` read the Faust consumer for the
  lag gauges and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord
from faust.types import TP
from redis.exceptions import RedisError

from app.metrics import WorkerMetrics
from app.processor import Status
from app.state.redis import RedisStateStore
from app.state.store import Checkpoint, ConflictError, Reconciled, StateStore, StreamSave, Versioned

if TYPE_CHECKING:
    from app.pipeline import Batch
    from app.worker.agent import Routed
    from app.worker.faust_batch import BatchApp

# How long /readyz waits for the store's answer.
PING_TIMEOUT_S = 2.0
# Events per stream and batch whose event-time lag is observed (a systematic sample, weighted).
LAG_SAMPLE = 256
_WHERE = attrgetter("topic", "partition", "offset")
_TOPIC = attrgetter("topic")
_KIND = attrgetter("kind")


class FetchTimes:
    """Per topic-partition, when each run of fetched offsets arrived (a monotonic clock)."""

    def __init__(self) -> None:
        self._marks: dict[TP, deque[tuple[int, float]]] = {}

    def add(self, tp: TP, last_offset: int, at: float) -> None:
        """Records of ``tp`` up to ``last_offset`` (since the previous mark) were fetched ``at``."""
        marks = self._marks.get(tp)
        if marks is None:
            marks = self._marks[tp] = deque()
        marks.append((last_offset, at))

    def released(self, batches: Iterable[Sequence[ConsumerRecord]]) -> list[tuple[float, int]]:
        """(fetch time, number of records) of records leaving for processing; forgets them.

        Records of one topic-partition leave in offset order, so each mark is passed
        once: the cost is per fetch, not per record.
        """
        offsets: dict[tuple[str, int], list[int]] = {}
        for records in batches:
            for topic, partition, offset in map(_WHERE, records):
                found = offsets.get((topic, partition))
                if found is None:
                    found = offsets[topic, partition] = []
                found.append(offset)
        counts: Counter[float] = Counter()
        for tp, found in offsets.items():
            marks = self._marks.get(TP(*tp))
            found.sort()
            i = 0
            while marks and i < len(found):
                last, at = marks[0]
                j = bisect_right(found, last, i)
                counts[at] += j - i
                i = j
                if found[-1] < last:
                    break  # the rest of this fetch still waits
                marks.popleft()
        return list(counts.items())

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._marks.pop(TP(tp.topic, tp.partition), None)

    def __len__(self) -> int:
        return sum(len(marks) for marks in self._marks.values())


def account_routed(metrics: WorkerMetrics, routed: Routed, now_ms: int) -> None:
    """Records read (by topic and type) and the events' event-time lag, once per batch.

    The lag is observed on a systematic sample of at most about ``LAG_SAMPLE`` events per
    stream, each counting for the events it stands for: the histogram's shape at a
    fraction of the cost (``events_consumed_total`` has the exact counts).
    """
    consumed: Counter[tuple[str, int]] = Counter(routed.consumed)  # re-keyed ones
    for stream, events in routed.events.items():
        consumed.update(zip(map(_TOPIC, routed.records[stream]), map(_KIND, events), strict=True))
        step = max(1, len(events) // LAG_SAMPLE)
        metrics.event_time_lag.observe_many(
            (max(0, now_ms - event.ts) / 1000 for event in events[::step]), weight=step
        )
    consumed.update((record.topic, -1) for record, _, _ in routed.dead)
    metrics.consumed(consumed)


def account_completed(
    metrics: WorkerMetrics,
    routed: Routed,
    batch: Batch,
    fetched: Iterable[tuple[float, int]],
    acknowledged_at: float,
    started_at: float,
) -> None:
    """A batch is done (published, saved, committed): what the detector made of it, and how long it took."""
    statuses: Counter[Status] = Counter()
    suppressed: Counter[tuple[str, str]] = Counter()
    dropped: Counter[str] = Counter()
    for outcome in batch.outcomes.values():
        statuses.update(outcome.statuses)
        suppressed.update(outcome.suppressed)
        dropped.update(outcome.dropped)
    metrics.add(metrics.events_processed, {status.value: n for status, n in statuses.items()})
    metrics.add(metrics.deadlines_dropped, dropped)
    rejected = Counter(reason for _, reason, _ in routed.dead)
    rejected[Status.TOO_FAR_AHEAD.value] += statuses[Status.TOO_FAR_AHEAD]
    metrics.add(metrics.events_rejected, rejected)
    metrics.add(metrics.detections, Counter(d.moment for d in batch.detections))
    metrics.add(metrics.suppressed, suppressed)
    metrics.add(metrics.held_out, Counter(d.moment for d in batch.held_out))
    deferred = sum(outcome.deferred for outcome in batch.outcomes.values())
    if deferred:
        metrics.deferred.inc(deferred)
    if batch.forgotten:
        metrics.forgotten.inc(len(batch.forgotten))
    metrics.add(
        metrics.training_examples,
        Counter((e.moment, "positive" if e.label else "negative") for e in batch.examples),
    )
    records = 0
    for at, n in fetched:
        metrics.processing_latency.observe(max(0.0, acknowledged_at - at), n)
        records += n
    size = sum(len(r) for r in routed.records.values()) + len(routed.dead) + len(routed.misrouted)
    metrics.batch_records.observe(size)
    metrics.batch_duration.observe(time.monotonic() - started_at)
    metrics.batches.labels("completed").inc()


class MeteredStore:
    """A :class:`StateStore` that times each call of ``inner`` and counts failures, by operation."""

    def __init__(self, inner: StateStore, metrics: WorkerMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def _timed(self, operation: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        except ConflictError:
            self.metrics.state_conflicts.inc()
            raise
        except (TimeoutError, RedisError, OSError):
            self.metrics.redis_errors.labels(operation).inc()
            raise
        finally:
            self.metrics.redis_duration.labels(operation).observe(time.perf_counter() - started)

    async def load(self, customers: Mapping[str, Collection[str]]) -> dict[str, Versioned]:
        result: dict[str, Versioned] = await self._timed("load", self.inner.load(customers))
        return result

    async def save(self, saves: Sequence[StreamSave]) -> None:
        await self._timed("save", self.inner.save(saves))

    async def checkpoint(self, stream: str) -> Checkpoint:
        result: Checkpoint = await self._timed("checkpoint", self.inner.checkpoint(stream))
        return result

    async def deadlines(
        self, stream: str, after: int | None = None, until: int | None = None
    ) -> dict[str, int]:
        result: dict[str, int] = await self._timed("checkpoint", self.inner.deadlines(stream, after, until))
        return result

    async def claim(self, stream: str) -> int:
        result: int = await self._timed("checkpoint", self.inner.claim(stream))
        return result

    async def reconcile(self, stream: str, epoch: int, committed: Mapping[str, int | None]) -> Reconciled:
        result: Reconciled = await self._timed("checkpoint", self.inner.reconcile(stream, epoch, committed))
        self.metrics.reconciliations.labels(result.value).inc()
        return result

    async def clocks(self) -> dict[str, int]:
        result: dict[str, int] = await self._timed("checkpoint", self.inner.clocks())
        return result

    async def forget(self, customer: str) -> bool:
        result: bool = await self._timed("forget", self.inner.forget(customer))
        return result

    async def ping(self) -> None:
        """Raise unless the store answers within ``PING_TIMEOUT_S`` (a store in memory always does)."""
        if isinstance(self.inner, RedisStateStore):
            await self._timed("ping", asyncio.wait_for(self.inner.client.ping(), PING_TIMEOUT_S))

    async def close(self) -> None:
        await self.inner.close()


def assignment(app: BatchApp) -> set[TP]:
    """The partitions of the worker's topics assigned to it now; empty before the consumer runs.

    Faust's own internal topic (its assignor's leader topic) is left out.
    """
    from faust.exceptions import ConsumerNotStarted

    if not app.started:
        return set()
    try:
        assigned = app.consumer.assignment()
    except ConsumerNotStarted:
        return set()
    return {tp for tp in assigned if tp.topic in app.batch_topics}


def watch_consumer(metrics: WorkerMetrics, app: BatchApp) -> None:
    """Fill the consumer lag and assignment gauges from ``app``'s consumer on each scrape."""

    def lags() -> Iterable[tuple[Sequence[str], float]]:
        tps = assignment(app)
        if not tps:
            return
        lag = app.consumer.lag  # type: ignore[attr-defined]  # BatchConsumer's
        for tp in sorted(tps):
            records = lag(tp)
            if records is not None:
                yield (tp.topic, str(tp.partition)), float(records)

    metrics.consumer_lag.source = lags
    metrics.assigned_partitions.source = lambda: [((), float(len(assignment(app))))]


Check = Callable[[], Awaitable[tuple[bool, str]]]


def readiness(app: BatchApp, store: MeteredStore) -> Mapping[str, Check]:
    """The checks of ``/readyz``: partitions assigned, and the state store answering."""

    async def partitions() -> tuple[bool, str]:
        count = len(assignment(app))
        return count > 0, f"{count} assigned"

    async def state_store() -> tuple[bool, str]:
        try:
            await store.ping()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"[:200]
        return True, "ok"

    return {"partitions": partitions, "store": state_store}
