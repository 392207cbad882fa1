"""Publish events to the input topics as producers should: keyed by customer, stamped with event time.

Used by ``micromoments dev``'s traffic generator, the benchmarks and the tests.
Records carry ``occurred_at`` as their Kafka timestamp, which the worker uses
to merge the three input topics in event-time order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from app.events import CONSENT_TYPES, PRIVACY_TYPES, PURCHASE_TYPES, SEARCH_TYPES
from app.settings import Settings
from app.worker.kafka import client_options


def topic_for(event_type: object, settings: Settings) -> str:
    if event_type in SEARCH_TYPES:
        return settings.topic_search
    if event_type in PURCHASE_TYPES:
        return settings.topic_purchase
    if event_type in CONSENT_TYPES:
        return settings.topic_consent
    if event_type in PRIVACY_TYPES:
        return settings.topic_privacy
    return settings.topic_clickstream


def new_producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    defaults = {
        "acks": "all",
        "linger_ms": settings.kafka_linger_ms,
        "enable_idempotence": settings.kafka_idempotence,
    }
    return AIOKafkaProducer(**client_options(settings), **{**defaults, **options})


async def publish(
    producer: AIOKafkaProducer,
    settings: Settings,
    events: Iterable[bytes | dict[str, Any]],
    *,
    wait: bool = True,
) -> int:
    """Send ``events`` (JSON bytes or dicts) to their topics; with ``wait``, until all are acknowledged.

    Lines that are not JSON objects are still sent, unkeyed, to the clickstream topic:
    the worker must dead-letter them, and tests rely on that.
    """
    pending = []
    for event in events:
        raw = event if isinstance(event, bytes) else orjson.dumps(event)
        try:
            fields = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fields = None
        if not isinstance(fields, dict):
            pending.append(await producer.send(settings.topic_clickstream, raw))
            continue
        customer = fields.get("customer_id")
        pending.append(
            await producer.send(
                topic_for(fields.get("event_type"), settings),
                raw,
                key=customer.encode() if isinstance(customer, str) else None,
                timestamp_ms=_event_time_ms(fields.get("occurred_at")),
            )
        )
    if wait:
        await asyncio.gather(*pending)
    return len(pending)


def _event_time_ms(occurred_at: object) -> int | None:
    if not isinstance(occurred_at, str):
        return None
    try:
        return int(datetime.fromisoformat(occurred_at).timestamp() * 1000)
    except ValueError:
        return None
