"""The detector as a Faust batch agent: records in; triggers, dead letters and state out.

For each fetch:

1. align and route: records are grouped by partition number — partition N of
   every input topic and of the repartition topic holds the same customers, one
   *stream* — and released in record-timestamp order across topics and fetches
   (:mod:`app.worker.alignment`); each is decoded. Undecodable ones become
   dead letters; events keyed by something other than their customer id go to
   the repartition topic, keyed by customer, to come back on the right stream;
2. run the core over every stream (one state load for the whole fetch);
3. publish triggers, dead letters and re-keyed events, and wait until the broker
   has acknowledged every one of them;
4. save the states (one atomic write for the whole fetch), then commit offsets.

So offsets never pass an event whose triggers or state are not safe. After a
crash the uncommitted tail is processed again: events already saved are
duplicates and change nothing, the others give triggers with the same ids.
Transient Kafka and Redis failures are retried with backoff, the batch kept
in hand; a version conflict (another worker wrote a customer meanwhile)
reloads the streams and redoes the batch. What happens is counted in
:mod:`app.metrics`, a few increments per batch (:mod:`app.worker.instruments`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from typing import Any, Final, cast

import msgspec
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.types import TP
from redis.exceptions import RedisError

from app.confirmations import confirmation
from app.decoding import Rejection, decode_event
from app.detection import Detection
from app.events import Event
from app.metrics import WorkerMetrics, retry_cause
from app.pipeline import Batch, Pipeline
from app.privacy import redact
from app.processor import Status
from app.settings import Settings
from app.state.store import ConflictError
from app.triggers import CONTENT_TYPE, TriggerWriter, encode
from app.worker.alignment import Aligner
from app.worker.faust_batch import BatchApp, BatchConsumer, RecordBatch
from app.worker.instruments import FetchTimes, account_completed, account_routed
from app.worker.learning import training_records

log = logging.getLogger(__name__)

TRIGGER_HEADERS: Final = [("content-type", CONTENT_TYPE.encode())]
RETRYABLE: Final = (KafkaError, ProducerSendError, RedisError, OSError)
FIRST_RETRY_S: Final = 0.1
LAST_RETRY_S: Final = 5.0
MAX_DETAIL: Final = 1024


class Routed(msgspec.Struct, gc=False):
    """A fetch sorted out: events per stream (with their records), and what goes elsewhere."""

    events: dict[str, list[Event]] = msgspec.field(default_factory=dict)
    records: dict[str, list[ConsumerRecord]] = msgspec.field(default_factory=dict)
    dead: list[tuple[ConsumerRecord, str, str]] = msgspec.field(default_factory=list)
    misrouted: list[tuple[ConsumerRecord, bytes]] = msgspec.field(default_factory=list)
    # (topic, event Kind code) -> misrouted records, for the metrics (the others are in `events`).
    consumed: Counter[tuple[str, int]] = msgspec.field(default_factory=Counter)


def stream_of(partition: int) -> str:
    return f"p{partition}"


class DetectorAgent:
    def __init__(
        self,
        app: BatchApp,
        settings: Settings,
        pipeline: Pipeline,
        *,
        source: str,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics if metrics is not None else WorkerMetrics(runtime=False)
        self._fetch_times = FetchTimes()
        self.writer = TriggerWriter(source, pipeline.detector.policy.subject)
        self._order = {
            topic: i for i, topic in enumerate([*settings.input_topics, settings.topic_repartition])
        }
        self._busy = asyncio.Lock()
        # Partition -> records waiting for their turn in event-time order.
        self._aligners: dict[int, Aligner[ConsumerRecord]] = {}
        # Next offset to read, per input partition, of what has been fetched.
        self._fetched: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        # Input partitions not fetched from while this many of their records wait to be aligned.
        self._pause_at = settings.batch_max
        self._paused: set[TP] = set()
        self._waited = 0.0
        self._left_at = time.monotonic()
        self.max_wait = settings.align_max_wait_ms / 1000
        app.batch_agent(list(self._order), self)
        # Faust's signal types do not admit a receiver's own parameters; it sends (revoked,).
        app.on_partitions_revoked.connect(cast(Any, self._on_partitions_revoked))

    async def __call__(self, fetch: RecordBatch) -> None:
        async with self._busy:
            now = self._waiting_clock()
            fetched_at = time.monotonic()
            for tp, records in fetch.items():
                self._aligner(tp.partition).add(tp.topic, records, now)
                self._fetched[tp] = records[-1].offset + 1
                self._fetch_times.add(tp, records[-1].offset, fetched_at)
            try:
                released = self._release(now)
                if released:
                    await self._handle(released)
                self._flow_control()
            finally:
                self._left_at = time.monotonic()

    def _waiting_clock(self) -> float:
        """Seconds spent waiting for fetches, not processing them: what aligners wait on."""
        now = time.monotonic()
        self._waited += now - self._left_at
        self._left_at = now
        return self._waited

    async def _handle(self, released: dict[int, list[ConsumerRecord]]) -> None:
        started = time.monotonic()
        fetched = self._fetch_times.released(released.values())
        routed = self.route(released)
        account_routed(self.metrics, routed, int(time.time() * 1000))
        in_hand = {TP(r.topic, r.partition) for records in released.values() for r in records}
        delay = FIRST_RETRY_S
        while True:
            try:
                batch, acknowledged = await self._process(routed)
                break
            except (ConflictError, *RETRYABLE) as exc:
                # Nothing of the batch was saved: reload the streams and redo it.
                self.metrics.batch_retries.labels(retry_cause(exc)).inc()
                log.warning("batch failed, redoing it in %.1f s: %r", delay, exc)
                self.pipeline.close(routed.events)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY_S)
                if not in_hand <= self._consumer.assignment():
                    self.metrics.batches.labels("abandoned").inc()
                    log.info("partitions revoked while retrying; their new owner takes the batch over")
                    return
        account_completed(self.metrics, routed, batch, fetched, acknowledged, started)
        offsets = {tp: o for tp, o in self._committable().items() if self._committed.get(tp) != o}
        if offsets:
            committed = await self._consumer.commit_offsets(offsets)
            self.metrics.offset_commits.labels("ok" if committed else "failed").inc()
            if committed:
                self._committed.update(offsets)

    def _aligner(self, partition: int) -> Aligner[ConsumerRecord]:
        aligner = self._aligners.get(partition)
        if aligner is None:
            aligner = self._aligners[partition] = Aligner(
                list(self._order), max_wait=self.max_wait, max_buffered=8 * self.settings.batch_max
            )
        return aligner

    def _release(self, now: float) -> dict[int, list[ConsumerRecord]]:
        """Per partition, the records whose turn has come in event-time order."""
        released = {}
        for partition, aligner in self._aligners.items():
            if len(aligner):

                def caught_up(topic: str, partition: int = partition) -> bool:
                    return self._consumer.lag(TP(topic, partition)) == 0

                records = aligner.release(caught_up, now)
                if records:
                    released[partition] = records
        return released

    def _flow_control(self) -> None:
        """Stop fetching topic-partitions whose records pile up in an aligner; resume them once drained.

        A backlog's fetches can bring thousands of records of one topic before the first
        of another topic of the same partition. Without a pause, they would pile up until
        the aligner's ``max_buffered`` forced them out of event-time order, and the other
        topic's events, older, would then be dropped as late. A paused topic-partition's
        fetched records wait in the consumer; a topic with nothing waiting is never paused,
        so the topic that holds a stream back is always fetched. With at most ``batch_max``
        records per fetch, an aligner stays within ``2 * batch_max`` records per topic,
        within its ``max_buffered``. While the flow is stopped (a rebalance), pausing is Faust's.
        """
        if not self._consumer.flow_active:
            return
        full: set[TP] = set()
        drained: set[TP] = set()
        for partition, aligner in self._aligners.items():
            for topic, waiting in aligner.sizes().items():
                (full if waiting >= self._pause_at else drained).add(TP(topic, partition))
        pause, resume = full - self._paused, self._paused & drained
        if pause:
            self._consumer.pause_partitions(pause)
            self._paused |= pause
        if resume:
            self._consumer.resume_partitions(resume)
            self._paused -= resume

    def _committable(self) -> dict[TP, int]:
        """Next offset to read per partition: past what is processed, short of what waits."""
        offsets = dict(self._fetched)
        for partition, aligner in self._aligners.items():
            for topic, offset in aligner.next_offsets().items():
                offsets[TP(topic, partition)] = offset
        return offsets

    def route(self, released: dict[int, list[ConsumerRecord]]) -> Routed:
        routed = Routed()
        repartition = self.settings.topic_repartition
        for partition, records in sorted(released.items()):
            stream = stream_of(partition)
            events = routed.events.setdefault(stream, [])
            kept = routed.records.setdefault(stream, [])
            for record in records:
                decoded = decode_event(record.value or b"")
                if isinstance(decoded, Rejection):
                    routed.dead.append((record, decoded.reason.value, decoded.detail))
                    continue
                key = decoded.customer_id.encode()
                if record.key != key and record.topic != repartition:
                    routed.misrouted.append((record, key))
                    routed.consumed[record.topic, decoded.kind] += 1
                    continue
                events.append(decoded)
                kept.append(record)
        return routed

    async def _process(self, routed: Routed) -> tuple[Batch, float]:
        """The batch, and when the broker had acknowledged its triggers (time.monotonic)."""
        batch = await self.pipeline.run(routed.events)
        settings = self.settings
        dead = list(self._dead_letters(routed, batch))
        sent = [
            *self._records(settings.topic_triggers, batch.detections),
            *self._records(settings.topic_holdout, batch.held_out),
            *dead,
            *self._repartitioned(routed),
            *self._training(batch),
        ]
        await asyncio.gather(*[await send for send in sent])
        acknowledged = time.monotonic()
        self.metrics.acknowledged(
            (d.moment for d in batch.detections), len(dead), (r.topic for r, _ in routed.misrouted)
        )
        await self.pipeline.commit(batch)
        # Only once the erasure is saved; if this is lost, reprocessing erases and confirms again.
        await asyncio.gather(*[await send for send in self._confirmations(batch)])
        for request in batch.forgotten:
            log.info(
                "customer %s forgotten: state and deadlines erased, confirmed on %s (request event %s)",
                redact(request.customer_id),
                settings.topic_confirmations,
                request.event_id,
            )
        return batch, acknowledged

    def _records(self, topic: str, detections: list[Detection]) -> Iterable[Awaitable[Awaitable[Any]]]:
        producer = self.app.producer
        for detection in detections:
            key, value = self.writer.record(detection)
            yield producer.send(topic, key, value, None, None, TRIGGER_HEADERS)

    def _training(self, batch: Batch) -> Iterable[Awaitable[Awaitable[Any]]]:
        """Labelled examples for the learners (only when this deployment learns)."""
        models = self.pipeline.detector.models
        if models is None:
            return
        producer, topic = self.app.producer, self.settings.topic_training
        for key, value in training_records(batch.examples, segments=models.segmenter is not None):
            yield producer.send(topic, key, value, None, None, None)

    def _confirmations(self, batch: Batch) -> Iterable[Awaitable[Awaitable[Any]]]:
        producer, topic, subject = self.app.producer, self.settings.topic_confirmations, self.writer.subject
        for request in batch.forgotten:
            event = confirmation(request, source=self.writer.source, subject=subject(request.customer_id))
            yield producer.send(topic, event["subject"].encode(), encode(event), None, None, TRIGGER_HEADERS)

    def _dead_letters(self, routed: Routed, batch: Batch) -> Iterable[Awaitable[Awaitable[Any]]]:
        dead = list(routed.dead)
        for stream, outcome in batch.outcomes.items():
            for status, record in zip(outcome.statuses, routed.records[stream], strict=True):
                if status is Status.TOO_FAR_AHEAD:
                    dead.append((record, status.value, "occurred_at is too far ahead of the stream's clock"))
        producer, topic = self.app.producer, self.settings.topic_dlq
        for record, reason, detail in dead:
            headers = [
                *(record.headers or ()),
                ("mm.dlq.reason", reason.encode()),
                ("mm.dlq.detail", detail[:MAX_DETAIL].encode()),
                ("mm.dlq.topic", record.topic.encode()),
                ("mm.dlq.partition", str(record.partition).encode()),
                ("mm.dlq.offset", str(record.offset).encode()),
            ]
            yield producer.send(topic, record.key, record.value, None, _seconds(record), headers)

    def _repartitioned(self, routed: Routed) -> Iterable[Awaitable[Awaitable[Any]]]:
        producer, topic = self.app.producer, self.settings.topic_repartition
        for record, key in routed.misrouted:
            headers = [*(record.headers or ()), ("mm.source.topic", record.topic.encode())]
            yield producer.send(topic, key, record.value, None, _seconds(record), headers)

    @property
    def _consumer(self) -> BatchConsumer:
        consumer = self.app.consumer
        assert isinstance(consumer, BatchConsumer)
        return consumer

    async def _on_partitions_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        # Wait for the batch in hand: it commits its own offsets, and nothing of a
        # revoked partition may be written after its new owner starts. Records still
        # waiting are dropped uncommitted: whoever owns the partition next reads them again.
        async with self._busy:
            partitions = {tp.partition for tp in revoked}
            for partition in partitions:
                aligner = self._aligners.pop(partition, None)
                if aligner is not None:
                    aligner.clear()
            for tp in revoked:
                self._fetched.pop(tp, None)
                self._committed.pop(tp, None)
            self._fetch_times.forget(revoked)
            # The consumer forgets pauses of revoked partitions itself.
            self._paused -= {TP(tp.topic, tp.partition) for tp in revoked}
            self.pipeline.close({stream_of(p) for p in partitions})


def _seconds(record: ConsumerRecord) -> float | None:
    return record.timestamp / 1000 if record.timestamp is not None else None
