"""The detector as a Faust batch agent: records in; triggers, dead letters and state out.

For each fetch:

1. align and route: records are grouped by partition number — partition N of
   every input topic and of the repartition topic holds the same customers, one
   *stream* — and released in record-timestamp order across topics and fetches
   (:mod:`app.worker.alignment`); each is decoded. Undecodable ones become
   dead letters; events keyed by something other than their customer id go to
   the repartition topic, keyed by customer, to come back on the right stream;
2. run the core over every stream (one state load for the whole fetch), with
   what only the shell knows: how far a lagging topic has come, the wall clock
   (no event is from the future), and, for a stream that has had nothing to read
   for a while, the event time of the deployment's other streams;
3. publish triggers, dead letters (invalid, late, too far ahead, or failed
   events) and re-keyed events, and wait until the broker has acknowledged
   every one of them;
4. save the states (one atomic write for the whole fetch), then commit offsets
   (at least once: at most every ``MM_KAFKA_COMMIT_INTERVAL_MS``).

So offsets never pass an event whose triggers or state are not safe. After a
crash the uncommitted tail is read again: records the saved states reflect
(each stream's checkpoint says up to where) are skipped, the others give
triggers with the same ids.
Transient Kafka and Redis failures are retried with backoff, the batch kept
in hand; a version conflict (another worker wrote a customer meanwhile)
reloads the streams and redoes the batch. No record can stop the worker: one
whose processing raises is dead-lettered (``internal_error``) and the batch
goes on without it (:class:`app.pipeline.Pipeline`). What happens is counted
in :mod:`app.metrics`, a few increments per batch (:mod:`app.worker.instruments`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, Final, TypeVar, cast

import msgspec
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from faust.exceptions import ProducerSendError
from faust.types import TP
from redis.exceptions import RedisError

from app.confirmations import confirmation
from app.decoding import Rejection, decode_event
from app.events import Event
from app.metrics import WorkerMetrics, retry_cause
from app.pipeline import Batch, Pipeline
from app.privacy import pseudonym, redact
from app.processor import Outcome, Status, describe_error
from app.settings import Settings
from app.state.store import ConflictError, Reconciled
from app.triggers import CONTENT_TYPE, TriggerWriter, encode, format_time
from app.worker.alignment import Aligner
from app.worker.faust_batch import BatchApp, BatchConsumer, RecordBatch
from app.worker.instruments import FetchTimes, account_completed, account_routed
from app.worker.learning import FORGET_HEADER, SEGMENTS, forget_records, training_records
from app.worker.transactions import Transactions

log = logging.getLogger(__name__)
T = TypeVar("T")

TRIGGER_HEADERS: Final = [("content-type", CONTENT_TYPE.encode())]
RETRYABLE: Final = (KafkaError, ProducerSendError, RedisError, OSError)
FIRST_RETRY_S: Final = 0.1
LAST_RETRY_S: Final = 5.0
MAX_DETAIL: Final = 1024
# How often quiet streams are looked for, and the stream clocks of other workers read.
QUIET_CHECK_S: Final = 1.0
# At least once, a worker that has had nothing new to process for this long commits what it
# has processed, whatever the commit interval: its lag then reads as it is, and a crash while
# idle leaves nothing to read again.
IDLE_COMMIT_S: Final = 0.5
CLOCKS_REFRESH_S: Final = 5.0
# Failures logged with their traceback per batch; the rest are only counted.
LOGGED_FAILURES: Final = 5


class Arrival(msgspec.Struct, gc=False):
    """A fetched record, decoded as it arrives, and aligned by its event's time.

    Not by the record's timestamp: a producer that stamps one record with the wall
    clock would otherwise hold its topic back behind it. What is no event waits for
    nothing: it takes the time of the record before it.
    """

    record: ConsumerRecord
    decoded: Event | Rejection
    timestamp: int

    @property
    def offset(self) -> int:
        return int(self.record.offset)


class Output(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A record to publish, and the stream whose input caused it (whose transaction it is in)."""

    stream: str
    topic: str
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: list[tuple[str, bytes]] | None = None


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


def _partition_of(stream: str) -> int:
    return int(stream[1:])


def _customer_key(arrival: Arrival) -> bytes | None:
    """Whose an arrival is, for the aligner: its record's key, the customer id as producers key it."""
    key: bytes | None = arrival.record.key
    return key


def _parked_in(routed: Routed, stream: str, outcome: Outcome) -> dict[int, ConsumerRecord]:
    """The records of the events the batch parked on ``stream``, by the event object's id."""
    events, records = routed.events.get(stream, []), routed.records.get(stream, [])
    return {
        id(event): record
        for event, status, record in zip(events, outcome.statuses, records, strict=True)
        if status is Status.PARKED
    }


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
        # Exactly once: per stream, a transactional producer and a reconcile on claim.
        self.transactions: Transactions | None = None
        if settings.processing_guarantee == "exactly_once":
            self.transactions = Transactions(settings)
            pipeline.on_claim = self._claimed
            pipeline.undo = True
        self._fetch_times = FetchTimes()
        self.writer = TriggerWriter(source, pipeline.policy.subject)
        # The core builds each trigger's record as it routes it: one it cannot build
        # fails only the event that made it.
        pipeline.render = self.writer.record
        self._order = {
            topic: i for i, topic in enumerate([*settings.input_topics, settings.topic_repartition])
        }
        self._busy = asyncio.Lock()
        # Partitions being revoked, and a signal for the batch in hand to give them up (see
        # _unless_revoked): the revocation handler waits for it.
        self._revoked: set[TP] = set()
        self._revoking = asyncio.Event()
        self._saving = False
        self._claiming: asyncio.Future[None] | None = None
        # Partition -> records waiting for their turn in event-time order.
        self._aligners: dict[int, Aligner[Arrival]] = {}
        # Time of the latest event fetched per topic-partition (see Arrival).
        self._last_time: dict[TP, int] = {}
        # Next offset to read, per input partition, of what has been fetched.
        self._fetched: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        # At least once: the offsets processed as of the last batch done, committed once
        # _commit_at (monotonic) has come: at most every commit interval (see _commit_offsets).
        self._processed: dict[TP, int] = {}
        self._commit_every = settings.kafka_commit_interval_ms / 1000
        self._commit_at = 0.0
        # When the last batch was done (time.monotonic).
        self._handled_at = 0.0
        # Partition -> the records of its parked events (too far ahead, waiting for the
        # stream's time; by the event object's id), kept uncommitted until decided.
        self._parked: dict[int, dict[int, ConsumerRecord]] = {}
        # Input partitions not fetched from while this many of their records wait to be aligned.
        self._pause_at = settings.batch_max
        self._paused: set[TP] = set()
        self._waited = 0.0
        self._left_at = time.monotonic()
        self.max_wait = settings.align_max_wait_ms / 1000
        # Partition -> how far its topics that are behind have come (see Aligner.hold).
        self._holds: dict[int, int] = {}
        # Partition -> when records of it last went to the core (time.monotonic).
        self._released_at: dict[int, float] = {}
        self._idle_after = settings.idle_partition_ms / 1000
        self._quiet_checked = 0.0
        # Stream -> its clock as another worker last saved it; refreshed now and then.
        self._clocks: dict[str, int] = {}
        self._clocks_read = 0.0
        app.batch_agent(list(self._order), self)
        # Faust's signal types do not admit a receiver's own parameters; it sends (revoked,).
        app.on_partitions_revoked.connect(cast(Any, self._on_partitions_revoked))
        app.on_partitions_assigned.connect(cast(Any, self._on_partitions_assigned))
        app.on_before_shutdown.connect(cast(Any, self._on_shutdown))

    async def __call__(self, fetch: RecordBatch) -> None:
        async with self._busy:
            now = self._waiting_clock()
            fetched_at = time.monotonic()
            assigned = self._consumer.assignment() if fetch else set()
            for tp, records in fetch.items():
                if tp not in assigned:
                    # Fetched before its partition was revoked: its new owner reads it. Taken here,
                    # it would be applied after later records of it, and claim the stream back.
                    continue
                self._aligner(tp.partition).add(tp.topic, self._arrivals(tp, records), now)
                # The consumer's position, which passes a transaction's marker after its last record
                # (a topic written exactly once): committed short of it, the partition would show lag.
                self._fetched[tp] = max(records[-1].offset + 1, self._consumer.next_offset(tp) or 0)
                self._fetch_times.add(tp, records[-1].offset, fetched_at)
            try:
                released = self._release(now)
                quiet = await self._quiet_streams(released)
                if released or quiet:
                    await self._handle(released, quiet)
                if self._processed and self._commit_due(bool(fetch)):
                    await self._commit_offsets()
                self._flow_control()
            finally:
                self._left_at = time.monotonic()

    def _commit_due(self, fetched: bool) -> bool:
        """Whether to commit the offsets processed: the interval is up, or nothing new came."""
        now = time.monotonic()
        return now >= self._commit_at or (not fetched and now - self._handled_at >= IDLE_COMMIT_S)

    def _arrivals(self, tp: TP, records: Sequence[ConsumerRecord]) -> list[Arrival]:
        arrivals = []
        last = self._last_time.get(tp, 0)
        for record in records:
            decoded = decode_event(record.value or b"")
            if not isinstance(decoded, Rejection):
                last = decoded.ts
            arrivals.append(Arrival(record, decoded, last))
        self._last_time[tp] = last
        return arrivals

    def _waiting_clock(self) -> float:
        """Seconds spent waiting for fetches, not processing them: what aligners wait on."""
        now = time.monotonic()
        self._waited += now - self._left_at
        self._left_at = now
        return self._waited

    async def _handle(self, released: dict[int, list[Arrival]], quiet: dict[str, int]) -> None:
        """Process released records, and move quiet streams to the deployment's time ``quiet``."""
        started = time.monotonic()
        records = [[arrival.record for arrival in arrivals] for arrivals in released.values()]
        fetched = self._fetch_times.released(records)
        routed = self.route(released)
        account_routed(self.metrics, routed, int(time.time() * 1000))
        in_hand = {TP(r.topic, r.partition) for batch in records for r in batch}
        holds = {stream_of(p): self._holds[p] for p in released if p in self._holds}
        delay = FIRST_RETRY_S
        while True:
            try:
                done = await self._unless_revoked(self._process(routed, quiet, holds), in_hand)
                if done is None:
                    return
                batch, acknowledged = done
                break
            except (ConflictError, *RETRYABLE) as exc:
                self.metrics.batch_retries.labels(retry_cause(exc)).inc()
                log.warning("batch failed, redoing it in %.1f s: %r", delay, exc)
                await self._undone([*routed.events, *quiet], exc)
                if not await self._unless_revoked(_slept(delay), in_hand, waiting=True):
                    return
                delay = min(delay * 2, LAST_RETRY_S)
        account_completed(self.metrics, routed, batch, fetched, acknowledged, started)
        self._handled_at = time.monotonic()
        if self.transactions is None:  # else the offsets went with the transactions
            # Taken now: records fetched later (or of a batch given up) are not processed.
            self._processed.update(self._committable())

    async def _commit_offsets(self, partitions: set[TP] | None = None) -> None:
        """At least once: commit the offsets processed (of ``partitions``; by default, all).

        Saved states record where their input stands, so the records a worker reads again
        for want of a commit (after a crash, or by a partition's next owner) are skipped,
        not applied twice: committing less often costs only re-reading them.
        """
        pending = {tp: o for tp, o in self._processed.items() if partitions is None or tp in partitions}
        offsets = {tp: o for tp, o in pending.items() if self._committed.get(tp) != o}
        if offsets:
            committed = await self._consumer.commit_offsets(offsets)
            self.metrics.offset_commits.labels("ok" if committed else "failed").inc()
            if not committed:
                return
            self._committed.update(offsets)
        for tp in pending:
            del self._processed[tp]
        if partitions is None:
            self._commit_at = time.monotonic() + self._commit_every

    async def _undone(self, streams: list[str], failure: Exception) -> None:
        """Ready the streams for their batch to be redone after ``failure``.

        At least once, nothing of the batch was saved (a save is all or nothing, and
        comes after the output is out): the streams are reloaded. Exactly once, the
        transactions are aborted; unless another worker has fenced this one off, the
        streams are claimed again, which reconciles their state with what Kafka has
        committed (the save may have happened, and the commit too, or not).
        """
        if self.transactions is None:
            self.pipeline.reset(streams)
            return
        await self.transactions.abort(streams)
        fenced = isinstance(failure, ProducerFenced) or (
            isinstance(failure, ConflictError) and bool(failure.streams)
        )
        if fenced:
            # A zombie: the new owner has the streams; this worker waits for its revocation.
            self.pipeline.reset(streams)
        else:
            self.pipeline.reclaim(streams)

    async def _unless_revoked(
        self, work: Coroutine[Any, Any, T], in_hand: set[TP], *, waiting: bool = False
    ) -> T | None:
        """``work``'s result; or None, ``work`` cancelled, if partitions in hand are revoked meanwhile.

        A batch holds the lock the revocation handler waits for: were it left to finish (or to
        retry while Redis is away), the group could not rebalance until it did. Its records are
        uncommitted, so the new owner reads them again. A save under way is let finish: it is
        refused if the new owner has claimed the stream since, and otherwise its events are
        duplicates to the new owner.
        """
        task = asyncio.ensure_future(work)
        revoking = asyncio.ensure_future(self._revoking.wait())
        try:
            while True:
                if self._saving:
                    # A save under way is let finish (Redis answers within MM_REDIS_TIMEOUT_S):
                    # refused, it is counted as such; done, its batch is.
                    await asyncio.wait({task})
                    return task.result()
                if in_hand & self._revoked or not in_hand <= self._consumer.assignment():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    self.metrics.batches.labels("abandoned").inc()
                    log.info(
                        "partitions revoked while %s; their new owner takes the batch over",
                        "retrying" if waiting else "processing",
                    )
                    return None
                done, _ = await asyncio.wait({task, revoking}, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    return task.result()
                revoking = asyncio.ensure_future(self._revoking.wait())
                await asyncio.sleep(0)
        finally:
            revoking.cancel()

    def _aligner(self, partition: int) -> Aligner[Arrival]:
        aligner = self._aligners.get(partition)
        if aligner is None:
            aligner = self._aligners[partition] = Aligner(
                list(self._order),
                max_wait=self.max_wait,
                max_buffered=8 * self.settings.batch_max,
                voter=_customer_key,
            )
        return aligner

    def _release(self, now: float) -> dict[int, list[Arrival]]:
        """Per partition, the records whose turn has come in event-time order."""
        released = {}
        for partition, aligner in self._aligners.items():
            if len(aligner):

                def caught_up(topic: str, partition: int = partition) -> bool | None:
                    lag = self._consumer.lag(TP(topic, partition))
                    return None if lag is None else lag == 0

                records = aligner.release(caught_up, now)
                if records:
                    released[partition] = records
                    self._released_at[partition] = time.monotonic()
                    hold = aligner.hold(caught_up)
                    if hold is None:
                        self._holds.pop(partition, None)
                    else:
                        self._holds[partition] = hold
        return released

    async def _quiet_streams(self, released: dict[int, list[Arrival]]) -> dict[str, int]:
        """Streams with nothing to read for a while, whose deadlines the deployment's time has passed.

        A stream's clock moves with its own events only; a partition that falls quiet
        (or whose customers all left) would hold its abandoned carts and deferred
        triggers until traffic comes back. As Flink does with idle sources, such a
        stream follows the others instead: its clock is moved to the median of the
        deployment's stream clocks (those of this worker, and those other workers
        saved), never back.
        """
        now = time.monotonic()
        if now - self._quiet_checked < QUIET_CHECK_S:
            return {}
        self._quiet_checked = now
        if now - self._clocks_read >= CLOCKS_REFRESH_S:
            self._clocks_read = now
            try:
                self._clocks = await self.pipeline.store.clocks()
            except RETRYABLE as exc:
                log.info("could not read the other streams' clocks (%r): trying again later", exc)
        clocks = {**self._clocks, **self.pipeline.clocks}
        if not clocks:
            return {}
        deployment = statistics.median_low(clocks.values())
        quiet = {}
        for partition in {tp.partition for tp in self._consumer.assignment() if tp.topic in self._order}:
            stream = stream_of(partition)
            if partition in released or not self.pipeline.is_open(stream):
                continue
            aligner = self._aligners.get(partition)
            if aligner is not None and len(aligner):
                continue
            if now - self._released_at.get(partition, 0.0) < self._idle_after:
                continue
            if any(self._consumer.lag(TP(topic, partition)) != 0 for topic in self._order):
                continue
            if self.pipeline.processor(stream).due((), deployment):
                log.info(
                    "stream %s has been quiet for %.0f s: its clock follows the deployment's, %s",
                    stream,
                    now - self._released_at.get(partition, now),
                    format_time(deployment),
                )
                quiet[stream] = deployment
        return quiet

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

    def _committable(self, parked: dict[int, dict[int, ConsumerRecord]] | None = None) -> dict[TP, int]:
        """Next offset to read per partition: past what is processed, short of what waits.

        What waits: records in an aligner, and parked events (too far ahead of their stream's
        time; those held, or ``parked``), which are in no checkpoint, so that whoever owns the
        partition next (this worker after a crash, or another) reads them again.
        """
        offsets = dict(self._fetched)
        for partition, aligner in self._aligners.items():
            for topic, offset in aligner.next_offsets().items():
                offsets[TP(topic, partition)] = offset
        for records in (self._parked if parked is None else parked).values():
            for record in records.values():
                tp = TP(record.topic, record.partition)
                offsets[tp] = min(offsets.get(tp, record.offset), record.offset)
        return offsets

    def _parked_after(self, routed: Routed, batch: Batch) -> dict[int, dict[int, ConsumerRecord]]:
        """The parked records held once ``batch`` is done: with those it parked, less those it decided."""
        after = {partition: dict(records) for partition, records in self._parked.items()}
        for stream, outcome in batch.outcomes.items():
            partition = _partition_of(stream)
            kept = after.setdefault(partition, {})
            kept.update(_parked_in(routed, stream, outcome))
            for event, _, _ in outcome.unparked:
                kept.pop(id(event), None)
            if not kept:
                del after[partition]
        return after

    def _positions(
        self, batch: Batch, parked: dict[int, dict[int, ConsumerRecord]]
    ) -> dict[str, dict[str, int]]:
        """Per stream of ``batch``, where its input stands once saved (see Pipeline.positions)."""
        partitions = {_partition_of(stream): stream for stream in batch.outcomes}
        positions: dict[str, dict[str, int]] = {}
        for tp, offset in self._committable(parked).items():
            stream = partitions.get(tp.partition)
            if stream is not None:
                positions.setdefault(stream, {})[tp.topic] = offset
        return positions

    def _applied_before(self, routed: Routed) -> Routed:
        """``routed`` less the records its streams' saved states already reflect (see Pipeline.positions).

        Records read again after a crash or a rebalance, whose offsets had not been committed:
        their effects are saved and their outputs sent. Skipped, rather than judged again (a
        customer's event too old for the window to recognise would otherwise look late).
        """
        positions = {stream: self.pipeline.positions(stream) for stream in routed.events}

        def fresh(record: ConsumerRecord) -> bool:
            stream = positions.get(stream_of(record.partition), {})
            return bool(record.offset >= stream.get(record.topic, 0))

        kept = Routed(consumed=routed.consumed)
        for stream, events in routed.events.items():
            pairs = [(e, r) for e, r in zip(events, routed.records[stream], strict=True) if fresh(r)]
            kept.events[stream] = [e for e, _ in pairs]
            kept.records[stream] = [r for _, r in pairs]
        kept.dead = [entry for entry in routed.dead if fresh(entry[0])]
        kept.misrouted = [entry for entry in routed.misrouted if fresh(entry[0])]
        return kept

    def route(self, released: dict[int, list[Arrival]]) -> Routed:
        routed = Routed()
        repartition = self.settings.topic_repartition
        for partition, arrivals in sorted(released.items()):
            stream = stream_of(partition)
            events = routed.events.setdefault(stream, [])
            kept = routed.records.setdefault(stream, [])
            for arrival in arrivals:
                record, decoded = arrival.record, arrival.decoded
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

    async def _process(
        self, routed: Routed, quiet: dict[str, int], holds: dict[str, int]
    ) -> tuple[Batch, float]:
        """The batch, and when the broker had acknowledged its triggers (time.monotonic)."""
        await self.pipeline.open([*routed.events, *quiet])
        routed = self._applied_before(routed)
        batch = await self.pipeline.run(routed.events, advance=quiet, holds=holds)
        self._log_failures(batch)
        dead = list(self._dead_letters(routed, batch))
        outputs = [
            *self._triggers(batch),
            *dead,
            *self._repartitioned(routed),
            *self._training(batch),
        ]
        parked = self._parked_after(routed, batch)
        positions = self._positions(batch, parked)
        if self.transactions is None:
            await self._published(outputs)
            acknowledged = time.monotonic()
            await self._saved(batch, positions)
            # Only once the erasure is saved; if this is lost, reprocessing erases and confirms again.
            await self._published(self._confirmations(batch))
        else:
            # Output, confirmations and offsets in one transaction per stream; the state saved
            # (with its undo) before the transactions commit: see app.worker.transactions.
            await self.transactions.begin(batch.outcomes)
            await self._published(outputs)
            acknowledged = time.monotonic()
            await self._saved(batch, positions)
            await self._published(self._confirmations(batch))
            await self.transactions.commit(
                {
                    stream: {TopicPartition(topic, _partition_of(stream)): o for topic, o in moved.items()}
                    for stream, moved in positions.items()
                }
            )
        self.metrics.acknowledged(
            (d.moment for d in batch.detections), len(dead), (r.topic for r, _ in routed.misrouted)
        )
        self._parked = parked
        for request in batch.forgotten:
            log.info(
                "customer %s forgotten: state and deadlines erased, confirmed on %s (request event %s)",
                redact(request.customer_id),
                self.settings.topic_confirmations,
                request.event_id,
            )
        return batch, acknowledged

    async def _saved(self, batch: Batch, positions: dict[str, dict[str, int]]) -> None:
        self._saving = True
        try:
            await self.pipeline.commit(batch, positions)
        finally:
            self._saving = False

    async def _published(self, outputs: Iterable[Output]) -> None:
        """Send ``outputs`` and wait until the broker has them (each in its stream's transaction)."""
        if self.transactions is None:
            send = self.app.producer.send
            sent = [
                await send(o.topic, o.key, o.value, None, _seconds(o.timestamp_ms), o.headers)
                for o in outputs
            ]
        else:
            producer = self.transactions.producer
            sent = [
                await producer(o.stream).send(
                    o.topic, o.value, key=o.key, timestamp_ms=o.timestamp_ms, headers=o.headers
                )
                for o in outputs
            ]
        await asyncio.gather(*sent)

    async def _claimed(self, stream: str, epoch: int) -> None:
        """Exactly once: fence earlier producers of the stream, then bring its state in line with
        the input Kafka has committed for it (undoing a save whose transaction never committed)."""
        assert self.transactions is not None
        await self.transactions.claim(stream)
        partition = _partition_of(stream)
        inputs = [TopicPartition(topic, partition) for topic in self._order]
        committed = await self.transactions.committed(stream, inputs)
        found = await self.pipeline.store.reconcile(stream, epoch, committed)
        if found is Reconciled.ROLLED_BACK:
            log.info("stream %s: its last save's transaction had not committed; the save is undone", stream)
        elif found is Reconciled.AHEAD:
            log.info("stream %s: its state reflects input past the committed offsets, skipped", stream)
        elif found is Reconciled.BEHIND:
            log.error(
                "stream %s: the stored state reflects less than the committed input (was Redis"
                " restored from an older copy?); the records in between are not applied",
                stream,
            )

    def _triggers(self, batch: Batch) -> Iterable[Output]:
        settings = self.settings
        for stream, outcome in batch.outcomes.items():
            for key, value in outcome.triggers:
                yield Output(stream, settings.topic_triggers, key, value, None, TRIGGER_HEADERS)
            for key, value in outcome.held_out_records:
                yield Output(stream, settings.topic_holdout, key, value, None, TRIGGER_HEADERS)

    def _log_failures(self, batch: Batch) -> None:
        """What raised while the batch ran (the events skipped, the deadlines dropped), with tracebacks,
        and the states that could not be read."""
        for error in batch.errors[:LOGGED_FAILURES]:
            log.error("skipped after a failure: %s", describe_error(error), exc_info=error)
        if len(batch.errors) > LOGGED_FAILURES:
            log.error("... and %d more failures in this batch", len(batch.errors) - LOGGED_FAILURES)
        for customer in batch.unreadable:
            log.error(
                "customer %s: the stored state is of no schema this worker reads; started afresh",
                redact(customer),
            )
        if batch.unreadable:
            self.metrics.states_unreadable.inc(len(batch.unreadable))

    def _training(self, batch: Batch) -> Iterable[Output]:
        """Labelled examples for the learners, and tombstones of forgotten customers (when learning)."""
        models = self.pipeline.detector.models
        if models is None:
            return
        topic = self.settings.topic_training
        key = self.settings.pseudonym_key.encode() if self.settings.pseudonym_key else b""
        names = [*models.moments, *([SEGMENTS] if models.segmenter is not None else [])]
        for stream, outcome in batch.outcomes.items():
            for name, value in training_records(outcome.examples, segments=models.segmenter is not None):
                yield Output(stream, topic, name, value)
            if outcome.forgotten:
                subjects = [pseudonym(request.customer_id, key) for request in outcome.forgotten]
                for name, subject in forget_records(subjects, names):
                    yield Output(stream, topic, name, subject, None, [FORGET_HEADER])

    def _confirmations(self, batch: Batch) -> Iterable[Output]:
        topic, subject = self.settings.topic_confirmations, self.writer.subject
        for stream, outcome in batch.outcomes.items():
            for request in outcome.forgotten:
                event = confirmation(request, source=self.writer.source, subject=subject(request.customer_id))
                yield Output(stream, topic, event["subject"].encode(), encode(event), None, TRIGGER_HEADERS)

    def _dead_letters(self, routed: Routed, batch: Batch) -> Iterable[Output]:
        settings = self.settings
        dead = [(record, reason, detail, settings.topic_dlq) for record, reason, detail in routed.dead]
        for stream, outcome in batch.outcomes.items():
            records = routed.records.get(stream, [])
            decided = [
                (status, record, outcome.failures.get(i, ""))
                for i, (status, record) in enumerate(zip(outcome.statuses, records, strict=True))
            ]
            if outcome.unparked:
                parked = {
                    **self._parked.get(_partition_of(stream), {}),
                    **_parked_in(routed, stream, outcome),
                }
                decided += [(status, parked[id(event)], why) for event, status, why in outcome.unparked]
            for status, record, why in decided:
                if status is Status.TOO_FAR_AHEAD:
                    dead.append((record, status.value, _AHEAD, settings.topic_dlq))
                elif status is Status.LATE:
                    dead.append((record, status.value, _LATE, settings.late_topic))
                elif status is Status.INTERNAL_ERROR:
                    dead.append((record, status.value, why, settings.topic_dlq))
        for record, reason, detail, topic in dead:
            headers = [
                *(record.headers or ()),
                ("mm.dlq.reason", reason.encode()),
                ("mm.dlq.detail", detail[:MAX_DETAIL].encode()),
                ("mm.dlq.topic", record.topic.encode()),
                ("mm.dlq.partition", str(record.partition).encode()),
                ("mm.dlq.offset", str(record.offset).encode()),
            ]
            stream = stream_of(record.partition)
            yield Output(stream, topic, record.key, record.value, record.timestamp, headers)

    def _repartitioned(self, routed: Routed) -> Iterable[Output]:
        topic = self.settings.topic_repartition
        for record, key in routed.misrouted:
            headers = [*(record.headers or ()), ("mm.source.topic", record.topic.encode())]
            yield Output(stream_of(record.partition), topic, key, record.value, record.timestamp, headers)

    @property
    def _consumer(self) -> BatchConsumer:
        consumer = self.app.consumer
        assert isinstance(consumer, BatchConsumer)
        return consumer

    async def _on_partitions_assigned(self, sender: Any, assigned: set[TP], **_: Any) -> None:
        partitions = sorted({tp.partition for tp in assigned if tp.topic in self._order})
        log.info("assigned partitions %s of the input topics", partitions)
        if self.transactions is not None and partitions:
            # Claimed at once, not with their first batch: a transaction an earlier owner left
            # open holds back every read_committed consumer of its partitions until it is aborted,
            # which the claim does. Apart from the rebalance, which must not wait for it.
            self._claiming = asyncio.ensure_future(self._claim_assigned(partitions))

    async def _claim_assigned(self, partitions: list[int]) -> None:
        async with self._busy:
            assigned = {tp.partition for tp in self._consumer.assignment() if tp.topic in self._order}
            streams = [stream_of(p) for p in partitions if p in assigned]
            try:
                await self.pipeline.open(streams)
            except (ConflictError, *RETRYABLE) as exc:
                log.warning("could not claim %s now (%r): with their first batch, then", streams, exc)

    async def _on_shutdown(self, sender: Any, **_: Any) -> None:
        if self.transactions is not None:
            await self.transactions.close()
        elif self._processed:
            async with self._busy:
                await self._commit_quietly(None)

    async def _commit_quietly(self, partitions: set[TP] | None) -> None:
        """Commit what is processed before letting partitions go; should that fail, the next
        owner reads the records again and skips those the states reflect."""
        try:
            await self._commit_offsets(partitions)
        except RETRYABLE as exc:
            log.info("could not commit offsets before letting partitions go (%r)", exc)

    async def _on_partitions_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        # The batch in hand gives up revoked partitions at once (see _unless_revoked); one that
        # holds none goes on and commits its own offsets. Records still waiting are dropped
        # uncommitted: whoever owns the partition next reads them again.
        self._revoked |= {TP(tp.topic, tp.partition) for tp in revoked}
        self._revoking.set()
        self._revoking.clear()
        async with self._busy:
            if self._processed:
                await self._commit_quietly({TP(tp.topic, tp.partition) for tp in revoked})
            partitions = {tp.partition for tp in revoked}
            for partition in partitions:
                aligner = self._aligners.pop(partition, None)
                if aligner is not None:
                    aligner.clear()
                self._holds.pop(partition, None)
                self._released_at.pop(partition, None)
                self._parked.pop(partition, None)
            for tp in revoked:
                self._fetched.pop(tp, None)
                self._committed.pop(tp, None)
                self._processed.pop(tp, None)
                self._last_time.pop(TP(tp.topic, tp.partition), None)
            self._fetch_times.forget(revoked)
            # The consumer forgets pauses of revoked partitions itself.
            self._paused -= {TP(tp.topic, tp.partition) for tp in revoked}
            self.pipeline.close({stream_of(p) for p in partitions})
            if self.transactions is not None:
                # An open transaction of theirs is aborted when the new owner claims the stream.
                await self.transactions.drop({stream_of(p) for p in partitions})
            self._revoked -= {TP(tp.topic, tp.partition) for tp in revoked}


_AHEAD: Final = "occurred_at is too far ahead of the stream's time, which did not come to it"
_LATE: Final = (
    "occurred_at is more than the allowed lateness behind its customer's latest event"
    " (or, for a customer with nothing held, the stream's time)"
)


async def _slept(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return True


def _seconds(timestamp_ms: int | None) -> float | None:
    """A record timestamp as Faust's producer takes it."""
    return timestamp_ms / 1000 if timestamp_ms is not None else None
