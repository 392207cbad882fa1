"""The right to be forgotten, from the outside: send a request, or erase at once.

The worker handles ``forget`` requests from the privacy topic in order with the
customer's own events (see ``StreamProcessor``) and confirms each on the
confirmations topic. :func:`erase_now` is for when no worker runs.

Logs name customers through :func:`redact`: a short stable hash, not the id,
unless debug logging is explicitly on.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Final

import orjson

from app.settings import Settings, SettingsError
from app.triggers import format_time

REDACTED: Final = "c#"
_APP_LOG: Final = logging.getLogger("app")


def redact(customer_id: str) -> str:
    """How logs name a customer: ``c#`` and the first 8 hex digits of the id's SHA-256.

    Stable across workers and restarts, so one customer's log lines can be followed,
    without the id itself. Only when the ``app`` logger is explicitly at DEBUG
    (``MM_LOG_LEVEL=debug``) is the id logged as it is. A pseudonym, not anonymity:
    whoever can list candidate ids can hash them and compare.

    >>> redact("cust-000257")
    'c#623572ff'
    """
    if _APP_LOG.isEnabledFor(logging.DEBUG):
        return customer_id
    return REDACTED + hashlib.sha256(customer_id.encode()).hexdigest()[:8]


def pseudonym(customer_id: str, key: bytes) -> str:
    """A customer's keyed pseudonym: 32 hex digits that nobody without ``key`` can link to the id.

    Names what must outlive the customer (a tombstone's Redis key, training examples) or
    be kept apart from them. With ``key`` empty (replay, tests), merely a hash.

    >>> pseudonym("c-1", b"k" * 32) == pseudonym("c-1", b"k" * 32) != pseudonym("c-1", b"j" * 32)
    True
    """
    return hashlib.blake2b(customer_id.encode(), key=key[:64], digest_size=16).hexdigest()


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
    from app.worker.feed import new_producer  # aiokafka only when sending

    producer = new_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_privacy, orjson.dumps(event), key=customer.encode())
    finally:
        await producer.stop()
    return event_id


async def erase_now(settings: Settings, customer: str) -> bool:
    """Erase ``customer`` from Redis directly; True if anything was held."""
    from app.state.redis import RedisStateStore  # the Redis client only when erasing

    if settings.pseudonym_key is None:
        raise SettingsError("MM_PSEUDONYM_KEY is required: the workers' Redis keys are named with it")
    store = RedisStateStore.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        min_ttl_ms=settings.state_min_ttl_s * 1000,
        pseudonym_key=settings.pseudonym_key.encode(),
    )
    try:
        return await store.forget(customer)
    finally:
        await store.close()
