"""Exactly-once output: one transactional producer per stream, and the group's committed offsets.

Each stream (partition N of the input topics) gets a producer whose transactional id
is the group's and the stream's, ``<group>-pN``, as each task of Kafka Streams had
one under ``exactly_once``. Whoever claims a stream starts its producer, and Kafka
then fences every earlier producer of that id — a worker that lost the partition but
does not know it yet — and completes or aborts the transaction it left open. After
that, the offsets committed for the stream's partitions are final, and the state
store can be reconciled with them (:meth:`app.state.store.StateStore.reconcile`).

A batch's output on a stream (triggers, holdout records, dead letters, re-keyed
events, training examples and erasure confirmations, all caused by the stream's
records) and the stream's next offsets go in one transaction: consumers reading
``read_committed`` see all of it, once, or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from app.settings import Settings
from app.worker.kafka import client_options

log = logging.getLogger(__name__)

# How long stopping a producer (its pending sends flushed) may take before it is left behind.
STOP_WITHIN_S = 10.0


class Transactions:
    """The transactional producers of the streams this worker has claimed.

    Parameters
    ----------
    settings
        Connection settings, the group id and the producer's tuning.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producers: dict[str, AIOKafkaProducer] = {}
        # Streams whose producer is in a transaction.
        self._open: set[str] = set()
        self._admin: AIOKafkaAdminClient | None = None

    def transactional_id(self, stream: str) -> str:
        return f"{self.settings.group_id}-{stream}"

    async def claim(self, stream: str) -> None:
        """Start the stream's producer, fencing off earlier ones; any of ours first goes."""
        await self.drop([stream])
        producer = AIOKafkaProducer(
            **client_options(self.settings),
            transactional_id=self.transactional_id(stream),
            enable_idempotence=True,
            acks="all",
            linger_ms=self.settings.kafka_linger_ms,
            max_request_size=2_000_000,
        )
        await producer.start()
        try:
            # Waits for the producer id: Kafka has then fenced the earlier producers of this
            # id and ended their transactions. The transaction is the stream's next batch's.
            await producer.begin_transaction()
        except BaseException:
            await _stopped(producer)
            raise
        self._producers[stream] = producer
        self._open.add(stream)

    async def begin(self, streams: Iterable[str]) -> None:
        """A transaction on each of ``streams`` (claimed), unless one is under way."""
        for stream in streams:
            if stream not in self._open:
                await self._producers[stream].begin_transaction()
                self._open.add(stream)

    def producer(self, stream: str) -> AIOKafkaProducer:
        """The stream's producer (see :meth:`begin`)."""
        return self._producers[stream]

    def claimed(self, stream: str) -> bool:
        return stream in self._producers

    async def commit(self, offsets: Mapping[str, Mapping[TopicPartition, int]]) -> None:
        """Commit each stream's transaction, with the stream's next offsets for the group."""

        async def one(stream: str, next_offsets: Mapping[TopicPartition, int]) -> None:
            producer = self._producers[stream]
            if next_offsets:
                await producer.send_offsets_to_transaction(dict(next_offsets), self.settings.group_id)
            self._open.discard(stream)
            await producer.commit_transaction()

        await asyncio.gather(*(one(stream, next_offsets) for stream, next_offsets in offsets.items()))

    async def abort(self, streams: Iterable[str]) -> None:
        """Abort the streams' transactions where that can still be done; what cannot, Kafka aborts
        once the stream is claimed again."""
        for stream in streams:
            producer = self._producers.get(stream)
            if producer is not None and stream in self._open:
                self._open.discard(stream)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.abort_transaction(), STOP_WITHIN_S)

    async def drop(self, streams: Iterable[str]) -> None:
        """Abort the streams' transactions and stop their producers (revoked partitions; or to claim
        afresh)."""
        streams = list(streams)
        await self.abort(streams)
        await asyncio.gather(*(_stopped(p) for s in streams if (p := self._producers.pop(s, None))))

    async def committed(self, stream: str, partitions: Sequence[TopicPartition]) -> dict[str, int | None]:
        """The group's committed offset of each of the stream's ``partitions``, by topic (None: none)."""
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**client_options(self.settings))
            await self._admin.start()
        found: dict[Any, Any] = await self._admin.list_consumer_group_offsets(
            self.settings.group_id, partitions=list(partitions)
        )
        committed: dict[str, int | None] = {tp.topic: None for tp in partitions}
        for tp, meta in found.items():
            if meta is not None and meta.offset >= 0:
                committed[tp.topic] = meta.offset
        return committed

    async def close(self) -> None:
        await self.drop(list(self._producers))
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None


async def _stopped(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), STOP_WITHIN_S)
    except Exception as exc:
        log.warning("a transactional producer did not stop cleanly: %r", exc)
