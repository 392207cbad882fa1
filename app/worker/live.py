"""Live synthetic traffic to Kafka: ``micromoments feed`` (docker-compose's traffic generator).

Events of :class:`~app.traffic.TrafficGenerator` are sent as producers should
(:func:`app.worker.feed.publish`: keyed by customer, stamped with event time)
at ``rate`` events per second of wall-clock time. Event time starts now and runs
``speed`` times faster than the clock, so a 30-minute cart timeout shows up
within minutes at ``speed=20``; at ``speed=1`` the traffic looks like a real shop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from app.settings import Settings
from app.traffic import TrafficGenerator
from app.worker.feed import new_producer, publish


async def feed_live(
    settings: Settings,
    *,
    rate: float,
    speed: float = 1.0,
    customers: int = 1000,
    seed: int = 1,
    count: int | None = None,
    on_sent: Callable[[int], None] | None = None,
    start: datetime | None = None,
) -> int:
    """Send ``count`` events (forever if None) paced as above; the number sent, once acknowledged.

    Event time starts at ``start`` (default: now).
    """
    if rate <= 0 or speed <= 0:
        raise ValueError("rate and speed must be positive")
    started = time.time()
    begins = started if start is None else start.timestamp()
    generator = TrafficGenerator(
        seed=seed,
        customers=customers,
        events_per_second=rate / speed,
        start=datetime.fromtimestamp(begins, UTC),
        diurnal=False,
    )
    producer = new_producer(settings)
    await producer.start()
    sent = 0
    try:
        for event in generator.events(count=count):
            event_time = datetime.fromisoformat(event["occurred_at"]).timestamp()
            wait = (event_time - begins) / speed - (time.time() - started)
            if wait > 0:
                await asyncio.sleep(wait)
            await publish(producer, settings, [event], wait=False)
            sent += 1
            if on_sent is not None:
                on_sent(sent)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
