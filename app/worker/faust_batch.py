"""Faust with batch agents: whole fetches for the topics that ask for them.

Faust delivers every message through its conductor, a channel queue and the
stream, awaiting ``wait_first(callback(message), suspend_flow.wait())`` per
message — about 220 µs of overhead per message on our machines, so a bare
agent that only parses JSON tops out near 4,500 messages/s. A *batch agent*
receives each fetch of its topics at once instead, as aiokafka returns it
(``{TopicPartition: [ConsumerRecord, ...]}``); other topics, if any, keep
Faust's normal path. Everything else stays Faust's: group membership and the
co-partitioning assignor, rebalance handling, the producer, the worker's
lifecycle, and the stall detector (kept fed with inbound times).

The whole change, kept small and tested in ``tests/integration/test_faust_batch.py``:

- :class:`BatchConsumer` overrides one method, ``_wait_next_records``, to route
  records of batch topics to the batch agent before Faust sees them;
- its consumer thread lowers aiokafka's ``fetch_max_wait_ms``, which Faust
  hard-codes to 1,500 ms: brokers that do not wake a waiting fetch when data
  arrives (the embedded one) would otherwise add up to that much latency; and
  reads ``read_committed`` when asked (Faust does only with its own transactions);
- :class:`BatchProducer` makes the producer's idempotence a setting (Faust
  enables it only inside transactions);
- :class:`QuietWorker` leaves out Faust's terminal spinner, which at log levels
  from WARNING up sets the root logger to DEBUG so as to spin on every record:
  every library's debug record (aiokafka logs each request) would then be built,
  on every fetch and produce, only to be thrown away.

A batch agent owns its offsets: it commits, through :meth:`BatchConsumer.commit_offsets`,
only what it has fully processed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import faust
from aiokafka import ConsumerRecord
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

RecordBatch = Mapping[TP, Sequence[ConsumerRecord]]
BatchAgent = Callable[[RecordBatch], Awaitable[None]]


class BatchApp(faust.App):
    """A Faust app that can run batch agents; see the module docstring."""

    def __init__(
        self,
        *args: Any,
        fetch_max_wait_ms: int = 10,
        idempotence: bool = True,
        read_committed: bool = False,
        **kwargs: Any,
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.idempotence = idempotence
        # Whether the consumer skips records of aborted transactions (exactly once).
        self.read_committed = read_committed
        self.batch_topics: frozenset[str] = frozenset()
        self._batch_agent: BatchAgent | None = None
        super().__init__(*args, **kwargs)

    def batch_agent(self, topics: Sequence[str], agent: BatchAgent) -> None:
        """Deliver every fetch of ``topics`` to ``agent``, one call per fetch."""
        if self._batch_agent is not None:
            raise RuntimeError("this app already has a batch agent")
        self._batch_agent = agent
        self.batch_topics = frozenset(topics)
        # Registering the topics is what makes the consumer subscribe to them.
        self.topics.add(self.topic(*topics, key_type=bytes, value_type=bytes))

    async def deliver(self, batch: RecordBatch) -> None:
        assert self._batch_agent is not None
        monitor = self.monitor
        await self._batch_agent(batch)
        if not batch:
            return
        if monitor is not None:
            # Faust's stall detector watches these; they prove the partitions are moving.
            now = time.monotonic()
            for tp in batch:
                monitor.stream_inbound_time[tp] = now

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self, loop=self.loop)


class BatchConsumer(faust_aiokafka.Consumer):
    async def _wait_next_records(self, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's signature)
        records, active = await super()._wait_next_records(timeout)
        app = cast(BatchApp, self.app)
        if app.batch_topics and self.flow_active:
            fetched = records or {}
            batch = {tp: rs for tp, rs in fetched.items() if tp.topic in app.batch_topics}
            if batch:
                records = {tp: rs for tp, rs in fetched.items() if tp.topic not in app.batch_topics}
            # Called on empty fetches too: an agent may hold records back, waiting on time.
            await app.deliver(batch)
        return records, active

    def lag(self, tp: TP) -> int | None:
        """Records of ``tp`` on the broker not yet handed out by this consumer; None if unknown."""
        state = self._state(tp)
        if state is None or state.highwater is None or not state.has_valid_position:
            return None
        return max(0, int(state.highwater) - int(state.position))

    def next_offset(self, tp: TP) -> int | None:
        """The next offset of ``tp`` this consumer hands out: past the records it has handed out,
        and past the transaction markers after them (which are no records)."""
        state = self._state(tp)
        if state is None or not state.has_valid_position:
            return None
        return int(state.position)

    def _state(self, tp: TP) -> Any:
        consumer = self._thread._consumer
        subscription = consumer._subscription.subscription if consumer is not None else None
        assignment = subscription.assignment if subscription is not None else None
        return assignment.state_value(tp) if assignment is not None else None

    async def commit_offsets(self, offsets: Mapping[TP, int]) -> bool:
        """Commit ``offsets`` (the next offset to read, per partition) for the group."""
        assigned = self.assignment()
        return await self._commit({tp: o for tp, o in offsets.items() if tp in assigned})

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        app = cast(BatchApp, self.app)
        # Read by aiokafka when the consumer starts and creates its fetcher.
        consumer._fetch_max_wait_ms = app.fetch_max_wait_ms
        if app.read_committed:
            consumer._isolation_level = "read_committed"
        return consumer


class BatchProducer(faust_aiokafka.Producer):
    def _settings_extra(self) -> Mapping[str, Any]:
        settings = dict(super()._settings_extra())
        if cast(BatchApp, self.app).idempotence:
            settings.update(acks="all", enable_idempotence=True)
        return settings


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer
    Producer = BatchProducer


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner: the root logger keeps the level asked for."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
