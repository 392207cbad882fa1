"""The right to be forgotten, from the outside: send a request, or erase at once.

The worker handles ``forget`` requests from the privacy topic in order with the
customer's own events (see ``StreamProcessor``) and confirms each on the
confirmations topic. :func:`erase_now` is for when no worker runs.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from app.settings import Settings
from app.state.redis import RedisStateStore
from app.triggers import format_time
from app.worker.feed import new_producer


async def request_forget(settings: Settings, customer: str, *, request_id: str | None = None) -> str:
    """Publish a ``forget`` request for ``customer``; returns its event id."""
    event_id = str(uuid.uuid4())
    event = {
        "event_id": event_id,
        "customer_id": customer,
        "event_type": "forget",
        "occurred_at": format_time(int(datetime.now(UTC).timestamp() * 1000)),
        **({"request_id": request_id} if request_id else {}),
    }
    producer = new_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_privacy, orjson.dumps(event), key=customer.encode())
    finally:
        await producer.stop()
    return event_id


async def erase_now(settings: Settings, customer: str) -> bool:
    """Erase ``customer`` from Redis directly; True if anything was held."""
    store = RedisStateStore.from_url(settings.redis_url, prefix=settings.redis_prefix)
    try:
        return await store.forget(customer)
    finally:
        await store.close()
