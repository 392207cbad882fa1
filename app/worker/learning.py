"""Online learning in the streaming worker: one learner per model, scorers everywhere.

- Workers publish every labelled example to the training topic, keyed by its
  moment (and again under the key ``segments``, for the segmenter), so all of a
  model's examples land in one partition.
- The :class:`Learner` in each worker (or, with ``MM_LEARNER=false`` on the workers,
  in ``micromoments learner`` processes of its own) consumes that topic in a consumer
  group of its own: Kafka gives each partition to exactly one member, so exactly one
  learner updates each model, whatever the number of workers. It resumes from
  the model's latest snapshot, learns, and every ``snapshot_every`` examples (or
  ``snapshot_interval_s`` seconds) stores a signed snapshot one version up,
  holding the model and the training-topic offset it has learnt up to; then it
  commits its offsets. Each example is learnt exactly once: after a crash, the
  examples after the last snapshot are read again, and those before it (stored,
  not yet committed) are recognised by that offset and skipped. A snapshot is a
  compare-and-set on the version, the safety net under the group's assignment:
  a learner that finds its model moved on elsewhere reloads it. A learner that is
  stopped stores what it has learnt before it leaves the group.
- The :class:`Refresher` in each worker checks the stored versions every
  ``refresh`` seconds and swaps newer models into the detector's scorer, so a
  new version takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from app.learning.config import LearningConfig
from app.learning.features import behaviour
from app.learning.labels import LabelledExample
from app.learning.model import MomentModel
from app.learning.models import Models, learn_examples
from app.learning.segments import Segmenter
from app.metrics import Sample, WorkerMetrics
from app.settings import Settings
from app.state.model_store import Learnt, ModelStore
from app.worker.kafka import client_options, isolation_level

log = logging.getLogger(__name__)

SEGMENTS: Final = "segments"
# The header of a training record that is a tombstone: its value is a forgotten customer's pseudonym.
FORGET_HEADER: Final = ("mm.kind", b"forget")
# Ids of the last examples learnt, kept per model to skip a redone batch's copies: a
# worker redoes at most a few batches of examples, far fewer than this.
RECENT_IDS: Final = 8192
# Examples learnt between two returns to the event loop: learning is CPU work on the
# detector's loop, so a backlog must not hold its batches up (about 10 ms at a time).
LEARN_AT_ONCE: Final = 64
# How long a stopping learner may take to store what it has learnt: a Redis that does not
# answer must not hold a shutdown up (the examples are then learnt again from the topic).
STOP_SNAPSHOT_S: Final = 10.0
FIRST_RESTART_S: Final = 1.0
LAST_RESTART_S: Final = 30.0
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LabelledExample)


def training_records(examples: Iterable[LabelledExample], segments: bool) -> list[tuple[bytes, bytes]]:
    """(key, value) records for the training topic: each example for its moment, and for segments.

    Without the candidate's time, which learners do not need: an example names its customer
    by a keyed pseudonym only, and an exact timestamp is as good as a name to whoever knows
    when the customer was active.
    """
    records = []
    for example in examples:
        value = _encoder.encode(msgspec.structs.replace(example, ts=0))
        records.append((example.moment.encode(), value))
        if segments:
            records.append((SEGMENTS.encode(), value))
    return records


def forget_records(subjects: Iterable[str], models: Iterable[str]) -> list[tuple[bytes, bytes]]:
    """Tombstones for the training topic: one per model (so on each model's partition) per subject.

    A learner drops the examples of a subject it has a tombstone of; they carry
    :data:`FORGET_HEADER`.
    """
    return [(model.encode(), subject.encode()) for subject in subjects for model in models]


@dataclass
class _Held:
    """A model in a learner's hands: its stored version, how far it has learnt, what it learnt last."""

    model: Any
    version: int
    partition: int | None
    offset: int
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    dirty: bool = False

    def __post_init__(self) -> None:
        self._seen = set(self.recent)

    def seen(self, example_id: int) -> bool:
        return example_id in self._seen

    def learnt(self, example_id: int, partition: int, offset: int) -> None:
        if len(self.recent) == self.recent.maxlen:
            self._seen.discard(self.recent[0])
        self.recent.append(example_id)
        self._seen.add(example_id)
        self.partition, self.offset, self.dirty = partition, offset + 1, True


class Learner:
    """Learns the models from the training topic and stores their snapshots in Redis.

    Parameters
    ----------
    settings
        The worker's settings: the training topic, its group (``<MM_GROUP_ID>.learner``).
    config
        The models' configuration.
    store
        Where snapshots are stored, versioned (compare-and-set).
    metrics
        Where the models' quality and snapshots are counted, if anywhere.
    """

    def __init__(
        self,
        settings: Settings,
        config: LearningConfig,
        store: ModelStore,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.store = store
        self.metrics = metrics
        self._models: dict[str, _Held] = {}
        self._offsets: dict[TopicPartition, int] = {}
        # Pseudonyms of customers forgotten (training tombstones seen): their examples are skipped.
        self._forgotten: set[str] = set()
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()
        # model -> examples read from this fetch, learnt together before anything is stored
        self._waiting: dict[str, list[LabelledExample]] = {}
        # A fetch is learnt and snapshotted whole before partitions may be handed over.
        self._busy = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        """Learn until cancelled, then store what was learnt; what was not stored is read again next time."""
        self._forget_unsaved()
        consumer = self._consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=f"{self.settings.group_id}.learner",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.kafka_session_timeout * 1000),
            heartbeat_interval_ms=int(self.settings.kafka_session_timeout * 250),
            fetch_max_wait_ms=100,
            # Exactly once: examples of a batch whose transaction was aborted are not learnt.
            isolation_level=isolation_level(self.settings),
        )
        consumer.subscribe([self.settings.topic_training], listener=_Handover(self))
        try:
            # Inside: a start that fails or is cancelled still closes the client's connections.
            await consumer.start()
            while True:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=LEARN_AT_ONCE)
                async with self._busy:
                    assigned = consumer.assignment()
                    for tp, records in fetched.items():
                        if tp not in assigned:
                            continue  # handed over meanwhile: its new owner reads them
                        for record in records:
                            await self._learn_record(
                                tp.partition, record.offset, record.key, record.value, record.headers
                            )
                        self._offsets[tp] = records[-1].offset + 1
                    self._learn_waiting()
                    if self._snapshot_due():
                        await self.snapshot()
        except asyncio.CancelledError:
            await self._store_before_stopping()
            raise
        finally:
            await consumer.stop()

    async def _store_before_stopping(self) -> None:
        """Store what was learnt, so that whoever takes the partitions over need not learn it again."""

        async def store() -> None:
            async with self._busy:
                await self.snapshot()

        try:
            # wait_for, not asyncio.timeout: this task is being cancelled already, and
            # asyncio.timeout would report its expiry as that cancellation.
            await asyncio.wait_for(store(), STOP_SNAPSHOT_S)
        except Exception as exc:
            log.warning("could not store what was learnt before stopping (%r): it is learnt again", exc)
        else:
            log.info("stored what was learnt before stopping")

    def assignment(self) -> set[TopicPartition]:
        """The training partitions this learner holds now; none before it has joined the group."""
        if self._consumer is None:
            return set()
        assigned: set[TopicPartition] = self._consumer.assignment()
        return assigned

    def _snapshot_due(self) -> bool:
        if not any(held.dirty for held in self._models.values()):
            return False
        return (
            self._since_snapshot >= self.settings.snapshot_every
            or time.monotonic() - self._snapshot_at >= self.settings.snapshot_interval_s
        )

    async def _learn_record(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        if FORGET_HEADER in headers:
            # A forgotten customer: whatever of theirs comes after is not learnt.
            self._forgotten.add((value or b"").decode())
            return
        try:
            example = _decoder.decode(value or b"")
        except msgspec.DecodeError as exc:
            # Only workers write this topic; skip a record they could not have written.
            log.error("skipping a training record that is not a labelled example: %s", exc)
            return
        name = (key or example.moment.encode()).decode()
        held = await self._model(name)
        if held.partition == partition and offset < held.offset:
            return  # learnt already: stored, but the offsets not committed before a crash
        if example.id and held.seen(example.id):
            return  # published again by a worker that redid its batch
        if example.subject and example.subject in self._forgotten:
            return  # its customer was forgotten since
        self._waiting.setdefault(name, []).append(example)
        held.learnt(example.id, partition, offset)
        self._since_snapshot += 1

    def _learn_waiting(self) -> None:
        """Each model learns the examples read for it, in order, as one batch."""
        for name, examples in self._waiting.items():
            model = self._models[name].model
            if name == SEGMENTS:
                for example in examples:
                    model.learn_one(behaviour(example.features))
                continue
            learn_examples(model, examples)
        self._waiting.clear()

    async def _model(self, name: str) -> _Held:
        held = self._models.get(name)
        if held is None:
            stored = await self.store.load(name)
            if stored is None:
                held = _Held(self._fresh(name), 0, None, 0)
            elif stored.learnt is None:
                # Unreadable here (the key was rotated, River changed): waiting for it to become
                # readable would stop learning for good. Take the model over, afresh, one version up.
                log.warning(
                    "model %s: the stored version %d cannot be used (%s); taking it over with a fresh"
                    " model, to be stored as version %d",
                    name,
                    stored.version,
                    stored.refused,
                    stored.version + 1,
                )
                if self.metrics is not None:
                    self.metrics.model_snapshots.labels("taken_over").inc()
                held = _Held(self._fresh(name), stored.version, None, 0)
            else:
                learnt = stored.learnt
                recent = deque(learnt.recent, maxlen=RECENT_IDS)
                held = _Held(learnt.model, stored.version, learnt.partition, learnt.offset, recent)
            self._models[name] = held
            log.info("learning %s from version %d", name, held.version)
        return held

    def _fresh(self, name: str) -> Any:
        return Segmenter(self.config.segments) if name == SEGMENTS else MomentModel(self.config.model)

    async def snapshot(self) -> None:
        """Store every changed model one version up, with how far it has learnt; then commit offsets.

        The offset in the snapshot makes learning exactly-once: after a crash between the
        two, the records read again are recognised and skipped.
        """
        self._learn_waiting()
        for name, held in sorted(self._models.items()):
            if not held.dirty:
                continue
            learnt = Learnt(held.model, held.partition, held.offset, tuple(held.recent))
            taken = await self.store.save(name, learnt, held.version + 1)
            if self.metrics is not None:
                self.metrics.model_snapshots.labels("stored" if taken is None else "conflict").inc()
            if taken is not None:
                log.warning("model %s moved on to version %d elsewhere: reloading it", name, taken)
                await self._start_over()
                return
            held.version += 1
            held.dirty = False
        if self._offsets and self._consumer is not None:
            try:
                await self._consumer.commit(dict(self._offsets))
            except KafkaError as exc:
                # Harmless: the snapshots say how far each model has learnt.
                log.info("could not commit the learner's offsets (%r); they are committed next time", exc)
        self._offsets.clear()
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()

    def quality(self) -> dict[str, dict[str, float | None]]:
        """Per model in hand: examples learnt, and for a moment's model its AUC, log loss, drift alarms."""
        out: dict[str, dict[str, float | None]] = {}
        for name, held in self._models.items():
            model = held.model
            out[name] = {"examples": float(model.examples_seen)}
            if isinstance(model, MomentModel):
                out[name].update(
                    auc=model.auc, log_loss=model.log_loss, drift_alarms=float(model.drift_alarms)
                )
        return out

    def _forget_unsaved(self) -> None:
        self._models.clear()
        self._waiting.clear()
        self._offsets.clear()
        self._since_snapshot = 0
        self._snapshot_at = time.monotonic()

    async def _start_over(self) -> None:
        self._forget_unsaved()
        if self._consumer is not None:
            for tp in self._consumer.assignment():
                committed = await self._consumer.committed(tp)
                if committed is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, committed)


class _Handover(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another learner, store what was learnt from them."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        learner = self.learner
        async with learner._busy:
            await learner.snapshot()
            learner._forget_unsaved()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


async def keep_running(what: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run ``run`` again after a failure (Redis or Kafka away), with a growing pause, until cancelled.

    Learning is not on the detection path: while it fails, workers go on scoring
    with the models they have.
    """
    delay = FIRST_RESTART_S
    while True:
        try:
            await run()
        except Exception:
            log.exception("%s failed; restarting it in %.0f s", what, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, LAST_RESTART_S)


class Refresher:
    """Keeps a worker's scoring models at the latest stored versions."""

    def __init__(self, models: Models, store: ModelStore, every: float) -> None:
        self.models = models
        self.store = store
        self.every = every
        self.versions: dict[str, int] = {}
        # Versions stored that this process refused (another key, another River): not read again.
        self._refused: dict[str, int] = {}

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.every)

    @property
    def names(self) -> list[str]:
        return [*self.models.moments, *([SEGMENTS] if self.models.segmenter is not None else [])]

    async def refresh(self) -> None:
        for name in self.names:
            version = await self.store.version(name)
            if version <= max(self.versions.get(name, 0), self._refused.get(name, 0)):
                continue
            stored = await self.store.load(name)
            if stored is None:
                continue
            if stored.learnt is None:
                # Once per version: the model goes on as it was, until a learner stores one it can read.
                log.error(
                    "refusing the stored snapshot of model %s, version %d: %s", name, version, stored.refused
                )
                self._refused[name] = stored.version
                continue
            if name == SEGMENTS:
                self.models.segmenter = stored.learnt.model
            else:
                self.models.moments[name] = stored.learnt.model
            self.versions[name] = stored.version
            log.info("now scoring %s with version %d", name, stored.version)


def watch_learning(metrics: WorkerMetrics, refresher: Refresher | None, learner: Learner | None) -> None:
    """Point the model gauges at the versions scored with (if this process scores), and at the learner's."""
    if refresher is not None:
        metrics.model_version.source = lambda: [
            ((name,), float(refresher.versions.get(name, 0))) for name in refresher.names
        ]
    if learner is None:
        return

    def measure(field: str) -> list[Sample]:
        quality = learner.quality()
        return [
            ((name,), value) for name in sorted(quality) if (value := quality[name].get(field)) is not None
        ]

    metrics.model_examples.source = lambda: measure("examples")
    metrics.model_auc.source = lambda: measure("auc")
    metrics.model_log_loss.source = lambda: measure("log_loss")
    metrics.model_drift_alarms.source = lambda: measure("drift_alarms")
