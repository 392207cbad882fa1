"""``app.worker.faust_batch`` on the embedded broker: batch agents next to an ordinary Faust agent.

The app runs in the test's own event loop: ``await app.start()`` starts what a
Faust worker would (producer, consumer and its thread, agents, the conductor,
the monitor) and ``await app.stop()`` stops it; no ``faust.Worker`` is needed,
since the worker only adds signal handling, logging set-up and a loop of its
own (``execute_from_commandline`` would block the test).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import TP
from harness import committed_offsets

from app.embedded import EmbeddedBroker
from app.worker.faust_batch import BatchApp, BatchConsumer, BatchProducer, RecordBatch

PER_PARTITION = 60
PLAIN_MESSAGES = 7
FETCH_MAX_WAIT_MS = 37


def new_app(broker: EmbeddedBroker, datadir: Path, **options: Any) -> BatchApp:
    return BatchApp(
        f"faust-batch-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{broker.bootstrap}",
        broker_session_timeout=3.0,
        broker_heartbeat_interval=0.75,
        broker_request_timeout=90.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=2,
        topic_allow_declare=False,
        store="memory://",
        web_enabled=False,
        datadir=str(datadir),
        **options,
    )


class Received:
    def __init__(self) -> None:
        self.calls: list[RecordBatch] = []
        self.plain: list[bytes] = []
        self.lag_after: dict[TP, int | None] = {}
        self.commits: list[bool] = []


# One app for the module's tests: starting one takes seconds (the group join).
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def prepare(broker: EmbeddedBroker, batch_topics: list[str], plain: str) -> dict[TP, list[bytes]]:
    """Create the topics (2 partitions each) and fill them before the app starts."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 2, 1) for t in [*batch_topics, plain]])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await producer.start()
    sent: dict[TP, list[bytes]] = {}
    try:
        for topic in batch_topics:
            for partition in (0, 1):
                values = [f"{topic}/{partition}/{i}".encode() for i in range(PER_PARTITION)]
                sent[TP(topic, partition)] = values
                for value in values:
                    await producer.send(topic, value, partition=partition)
        for i in range(PLAIN_MESSAGES):
            await producer.send(plain, f"plain-{i}".encode(), partition=i % 2)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(
    embedded_broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[BatchApp, Received, dict[TP, list[bytes]]]]:
    suffix = uuid.uuid4().hex[:8]
    batch_a, batch_b, plain = f"batch-a-{suffix}", f"batch-b-{suffix}", f"plain-{suffix}"
    sent = await prepare(embedded_broker, [batch_a, batch_b], plain)
    app = new_app(
        embedded_broker,
        tmp_path_factory.mktemp("faust"),
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        idempotence=False,
    )
    received = Received()

    async def batch_agent(batch: RecordBatch) -> None:
        if not batch:
            return
        received.calls.append(batch)
        consumer = app.consumer
        assert isinstance(consumer, BatchConsumer)
        for tp in batch:
            received.lag_after[tp] = consumer.lag(tp)
        # A batch agent owns its offsets.
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        received.commits.append(await consumer.commit_offsets(offsets))

    app.batch_agent([batch_a, batch_b], batch_agent)

    @app.agent(app.topic(plain, key_type=bytes, value_type=bytes, value_serializer="raw"))
    async def plain_agent(stream: Any) -> None:
        async for value in stream:
            received.plain.append(value)

    await app.start()
    try:
        yield app, received, sent
    finally:
        await app.stop()


async def until(condition: Any, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_batch_agent_gets_whole_fetches_and_plain_agent_keeps_fausts_path(
    running: tuple[BatchApp, Received, dict[TP, list[bytes]]], embedded_broker: EmbeddedBroker
) -> None:
    app, received, sent = running
    total = sum(len(values) for values in sent.values())

    def delivered() -> int:
        return sum(len(records) for batch in received.calls for records in batch.values())

    await until(lambda: delivered() >= total and len(received.plain) >= PLAIN_MESSAGES)
    await asyncio.sleep(0.5)  # anything extra would show up now

    # Every call is one fetch: records per partition of the batch topics, in offset order.
    got: dict[TP, list[bytes]] = {}
    for batch in received.calls:
        assert batch, "empty fetches are not recorded"
        for tp, records in batch.items():
            assert tp.topic in app.batch_topics
            assert isinstance(records, list)
            assert [r.topic for r in records] == [tp.topic] * len(records)
            assert [r.partition for r in records] == [tp.partition] * len(records)
            got.setdefault(tp, []).extend(r.value for r in records)
    assert got == sent, "each batch record exactly once, in order"
    # The records were there before the app started: fetches carry many of them at once.
    assert max(len(records) for batch in received.calls for records in batch.values()) > 1
    assert len(received.calls) < total

    # The plain topic went through Faust's own path, and only there.
    assert sorted(received.plain) == sorted(f"plain-{i}".encode() for i in range(PLAIN_MESSAGES))

    # Caught up: nothing on the broker that the consumer has not handed out.
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    for tp in sent:
        assert consumer.lag(tp) == 0
    assert consumer.lag(TP("no-such-topic", 0)) is None

    # The batch agent's own commits reached the group.
    assert received.commits
    assert all(received.commits)
    committed = await committed_offsets(embedded_broker.bootstrap, app.conf.id, list(sent))
    assert committed == {tp: PER_PARTITION for tp in sent}


async def test_consumer_uses_our_fetch_max_wait(running: tuple[BatchApp, Received, Any]) -> None:
    app, _, _ = running
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    await until(lambda: consumer._thread._consumer is not None)
    aiokafka_consumer = consumer._thread._consumer
    assert aiokafka_consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
    # What the running fetcher actually waits (Faust alone would have it at 1,500 ms).
    await until(lambda: getattr(aiokafka_consumer, "_fetcher", None) is not None)
    assert aiokafka_consumer._fetcher._fetch_max_wait_ms == FETCH_MAX_WAIT_MS


async def test_producer_idempotence_follows_the_app(
    running: tuple[BatchApp, Received, Any], embedded_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # The running app (idempotence=False) and its live aiokafka producer.
    app, _, _ = running
    producer = app.producer
    assert isinstance(producer, BatchProducer)
    assert "enable_idempotence" not in producer._settings_extra()
    assert producer._producer is not None
    assert producer._producer._txn_manager is None

    # An app that asks for idempotence (not started: the embedded broker lacks InitProducerId).
    idempotent = new_app(embedded_broker, tmp_path, idempotence=True).producer
    assert isinstance(idempotent, BatchProducer)
    extra = idempotent._settings_extra()
    assert extra["enable_idempotence"] is True
    assert extra["acks"] == "all"
    client = idempotent._new_producer()  # built, never started: no connection
    assert client._txn_manager is not None
