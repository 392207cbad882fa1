"""The strawman for bench/stream_worker.py: a plain Faust agent, one message at a time.

For every message: decode it, read the customer's window from Redis (one awaited
round trip), run the same detection core, write the window back (queued on the
same connection, not awaited) and publish the triggers. No batching, no event
time across customers, no delivery guarantees beyond Faust's defaults. Run as

    python bench/naive_agent.py worker  (configured by the MM_* variables it shares with the real worker)
"""

from __future__ import annotations

import asyncio
import tempfile

import faust
import redis.asyncio as aioredis

from app.config import load_catalogue
from app.decoding import Rejection, decode_event
from app.detector import Detector
from app.settings import load_settings
from app.state.codec import decode_state, encode_state
from app.triggers import CONTENT_TYPE, encode, to_cloudevent
from app.window import CustomerState

settings = load_settings()
app = faust.App(
    f"{settings.group_id}-naive",
    broker=f"kafka://{settings.kafka_bootstrap}",
    broker_session_timeout=settings.kafka_session_timeout,
    broker_heartbeat_interval=settings.kafka_session_timeout / 4,
    broker_commit_interval=0.5,
    value_serializer="raw",
    key_serializer="raw",
    web_enabled=False,
    store="memory://",
    datadir=tempfile.mkdtemp(prefix="micromoments-naive-"),
)
inputs = app.topic(*settings.input_topics, key_type=bytes, value_type=bytes)
triggers = app.topic(settings.topic_triggers, key_type=bytes, value_type=bytes)
redis = aioredis.Redis.from_url(settings.redis_url, single_connection_client=True)
detector = Detector(load_catalogue())
source = detector.catalogue.trigger.source
pending: set[asyncio.Task[object]] = set()


@app.agent(inputs)
async def detect(stream: faust.StreamT[bytes]) -> None:
    async for value in stream:
        event = decode_event(value)
        if isinstance(event, Rejection):
            continue
        key = f"naive:{{{event.customer_id}}}"
        blob = await redis.get(key)
        state = decode_state(blob) if blob else CustomerState(customer_id=event.customer_id)
        observation = detector.observe(state, event, event.ts)
        write = asyncio.create_task(redis.set(key, encode_state(state)))
        pending.add(write)
        write.add_done_callback(pending.discard)
        for detection in observation.detections:
            await triggers.send(
                key=event.customer_id.encode(),
                value=encode(to_cloudevent(detection, source=source)),
                headers={"content-type": CONTENT_TYPE.encode()},
            )


if __name__ == "__main__":
    app.main()
