"""``micromoments dev``: the whole stack on one machine, no Docker, nothing to install.

Starts the embedded Kafka-compatible broker (or, with ``--broker kafka``, Apache
Kafka: :mod:`app.apache_kafka`) and ``redis-server`` (or, if it is not on PATH,
the in-memory store, with a warning), the worker as a child
process, and a synthetic traffic generator whose event time runs ``speed``
times faster than the wall clock, so a 30-minute cart timeout shows up within
a couple of minutes. Triggers are printed as they arrive. Ctrl-C (or
``--duration``) stops everything, in order, leaving no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer

from app.apache_kafka import ApacheKafka, cache_dir
from app.embedded import Broker, EmbeddedBroker, EmbeddedRedis, ServerUnavailable, child_process
from app.settings import Settings, load_settings
from app.worker.kafka import client_options, ensure_topics
from app.worker.live import feed_live

# The embedded broker assigns partitions after half the session timeout: keep it short.
DEV_SESSION_TIMEOUT_S = 3
DEV_PARTITIONS = 4


class DevStack:
    def __init__(
        self,
        *,
        rate: float,
        speed: float,
        customers: int,
        seed: int,
        json: bool,
        out: IO[str],
        broker: str = "embedded",
        start: datetime | None = None,
    ) -> None:
        self.broker = broker
        self.start = start
        self.rate = rate
        self.speed = speed
        self.customers = customers
        self.seed = seed
        self.json = json
        self.out = out
        self.sent = 0
        self.triggers: Counter[str] = Counter()
        self.dead_letters = 0

    def say(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def run(self, duration: float | None) -> int:
        with ExitStack() as stack:
            broker = self._broker(stack)
            redis_url = self._redis(stack)
            env = {
                "MM_KAFKA_BOOTSTRAP": broker.bootstrap,
                "MM_REDIS_URL": redis_url,
                "MM_KAFKA_IDEMPOTENCE": "true" if broker.transactions else "false",
                "MM_KAFKA_SESSION_TIMEOUT": str(DEV_SESSION_TIMEOUT_S),
                "MM_PARTITIONS": str(DEV_PARTITIONS),
                "MM_METRICS_PORT": "0",
                "MM_LOG_LEVEL": "warning",
                # Models learnt here live and die with this Redis: a throwaway signing key will do,
                # and so will a throwaway key to name customers with in it.
                "MM_MODEL_KEY": os.environ.get("MM_MODEL_KEY") or secrets.token_urlsafe(32),
                "MM_PSEUDONYM_KEY": os.environ.get("MM_PSEUDONYM_KEY") or secrets.token_urlsafe(32),
            }
            settings = load_settings({**_mm_variables(), **env})
            asyncio.run(ensure_topics(settings))
            log = Path(tempfile.mkstemp(prefix="micromoments-worker-", suffix=".log")[1])
            stack.enter_context(
                child_process([sys.executable, "-m", "app.cli", "worker"], {**os.environ, **env}, log)
            )
            self.say(f"broker {broker.bootstrap} | state {redis_url} | worker log {log}")
            self.say(f"traffic: {self.rate:g} events/s, event time x{self.speed:g}; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(self._traffic_and_triggers(settings, duration))
            self.say(self.summary())
        return 0

    def _broker(self, stack: ExitStack) -> Broker:
        if self.broker == "embedded":
            return stack.enter_context(EmbeddedBroker())
        if not (cache_dir() / "libs").is_dir():
            self.say("fetching Apache Kafka from Maven Central (once: it is cached for later runs)...")
        self.say("starting Apache Kafka (KRaft, one node)...")
        return stack.enter_context(ApacheKafka())

    def _redis(self, stack: ExitStack) -> str:
        try:
            EmbeddedRedis.binary()
        except ServerUnavailable:
            self.say(
                "warning: redis-server is not on PATH; the worker keeps state in memory"
                " (lost when it stops). Install Redis to try the real thing."
            )
            return "memory://"
        return stack.enter_context(EmbeddedRedis()).url

    async def _traffic_and_triggers(self, settings: Settings, duration: float | None) -> None:
        tasks = [asyncio.create_task(self._generate(settings)), asyncio.create_task(self._tail(settings))]
        try:
            done, _ = await asyncio.wait(tasks, timeout=duration, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _generate(self, settings: Settings) -> None:
        def sent(count: int) -> None:
            self.sent = count

        await feed_live(
            settings,
            rate=self.rate,
            speed=self.speed,
            customers=self.customers,
            seed=self.seed,
            on_sent=sent,
            start=self.start,
        )

    async def _tail(self, settings: Settings) -> None:
        consumer = AIOKafkaConsumer(
            settings.topic_triggers,
            settings.topic_dlq,
            **client_options(settings),
            auto_offset_reset="latest",
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        try:
            async for record in consumer:
                if record.topic == settings.topic_dlq:
                    self.dead_letters += 1
                    headers = dict(record.headers or ())
                    self.show(f"dead letter: {headers.get('mm.dlq.reason', b'?').decode()}")
                    continue
                trigger = orjson.loads(record.value)
                self.triggers[trigger["data"]["moment"]] += 1
                self.show(record.value.decode() if self.json else _one_line(trigger))
        finally:
            await consumer.stop()

    def show(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def summary(self) -> str:
        moments = ", ".join(f"{m} {n}" for m, n in self.triggers.most_common()) or "none"
        return (
            f"stopped: {self.sent:,} events sent, {sum(self.triggers.values()):,} triggers"
            f" ({moments}), {self.dead_letters} dead letters"
        )


def _one_line(trigger: dict[str, Any]) -> str:
    data = trigger["data"]
    return (
        f"{trigger['time'][11:19]}  {data['moment']:<20} {trigger['subject']:<12} "
        f"{data['score']:.2f}  {data['journey_stage']:<13} {data['explanation']}"
    )


def _mm_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("MM_")}
