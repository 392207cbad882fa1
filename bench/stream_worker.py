"""Benchmark: one streaming worker end to end, against a naive Faust agent, on real servers.

For each contender (the micromoments worker, and bench/naive_agent.py):

1. throughput: pre-produce a realistic mix of events (default 200,000 for 20,000
   customers) into the embedded broker, start the worker, and time it from its
   first committed offsets until everything is committed;
2. latency: with the worker caught up, offer live traffic at fixed rates (events
   stamped with the wall clock as they are sent) and measure event-to-trigger
   latency — trigger received minus the triggering event's time — for the moments
   an event completes (cart abandonment, an absence, has no triggering event).

Prints both and their ratio. Servers (the embedded Tansu broker, or Apache Kafka with
``--broker kafka``; redis-server) run on free loopback ports and stop at the end.

    .venv/bin/python bench/stream_worker.py
    .venv/bin/python bench/stream_worker.py --broker kafka --guarantee both --rates 1000,5000,10000 \
        --skip-naive
    .venv/bin/python bench/stream_worker.py --events 50000 --customers 5000 --rates 1000 --skip-naive
    .venv/bin/python bench/stream_worker.py --learning --skip-naive   # models score, a learner learns
    .venv/bin/python bench/stream_worker.py --learner-process --skip-naive   # ... in a process of its own
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.apache_kafka import ApacheKafka
from app.embedded import Broker, EmbeddedBroker, EmbeddedRedis, child_process
from app.settings import Settings, load_settings
from app.traffic import TrafficGenerator
from app.triggers import format_time
from app.worker.feed import new_producer, publish, topic_for
from app.worker.kafka import ensure_topics, isolation_level

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
DATASET_SPAN_S = 3 * 3600
WARM_UP_S = 120


def settings_for(name: str, broker: Broker, redis: EmbeddedRedis, guarantee: str) -> dict[str, str]:
    return {
        "MM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "MM_REDIS_URL": redis.url,
        "MM_PSEUDONYM_KEY": "bench-only-pseudonym-key-of-32-characters",
        "MM_REDIS_PREFIX": name,
        "MM_KAFKA_IDEMPOTENCE": "true" if broker.transactions else "false",
        "MM_PROCESSING_GUARANTEE": guarantee,
        "MM_KAFKA_SESSION_TIMEOUT": "3",
        "MM_PARTITIONS": str(PARTITIONS),
        "MM_GROUP_ID": name,
        "MM_LOG_LEVEL": "warning",
        "MM_METRICS_PORT": "0",
        **{
            f"MM_TOPIC_{kind}": f"{name}.{kind.lower()}"
            for kind in ("CLICKSTREAM", "SEARCH", "PURCHASE", "TRIGGERS", "DLQ", "REPARTITION")
        },
    }


def dataset(events: int, customers: int, seed: int) -> list[bytes]:
    generator = TrafficGenerator(
        seed=seed, customers=customers, events_per_second=events / DATASET_SPAN_S, diurnal=False
    )
    generated = list(generator.events(count=events))
    # Shifted to end a minute ago, so the live traffic that follows is not "too far ahead" of it.
    shift = int((time.time() - 60) * 1000) - _ms(generated[-1]["occurred_at"])
    return [
        orjson.dumps({**event, "occurred_at": format_time(_ms(event["occurred_at"]) + shift)})
        for event in generated
    ]


def _ms(occurred_at: str) -> int:
    return int(datetime.fromisoformat(occurred_at).timestamp() * 1000)


def running(
    command: list[str], env: dict[str, str], log: Path
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """A contender's process, with this process's environment and the benchmark's settings."""
    return child_process(command, {**os.environ, **env}, log, cwd=ROOT, stop_within=30)


async def committed_total(reader: AIOKafkaConsumer, topics: set[str], partitions: int = PARTITIONS) -> int:
    # A consumer that never subscribes reads the group's commits without joining it
    # (the embedded broker does not answer the admin API's OffsetFetch).
    offsets = [
        await reader.committed(TopicPartition(t, p)) for t in sorted(topics) for p in range(partitions)
    ]
    return sum(offset for offset in offsets if offset)


async def measure_throughput(
    settings: Settings, group: str, total: int, process: subprocess.Popen[bytes], limit_s: float
) -> dict[str, float]:
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await reader.start()
    topics = set(settings.input_topics)
    try:
        # From the last look that saw no progress (so startup is excluded, and up to one
        # polling interval of work is counted against the worker) to the first that sees all.
        idle_until = time.monotonic()
        deadline = idle_until + limit_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}")
            done = await committed_total(reader, topics)
            now = time.monotonic()
            if done == 0:
                idle_until = now
            elif done >= total:
                return {
                    "events": total,
                    "seconds": now - idle_until,
                    "events_per_s": total / (now - idle_until),
                }
            await asyncio.sleep(0.05)
        raise TimeoutError(f"not done within {limit_s} s")
    finally:
        await reader.stop()


def live_events(
    rate: float,
    start: float,
    seed: int,
    scale: float = 1.0,
    until: float | None = None,
    customers: int = 5000,
) -> Iterator[tuple[float, dict[str, Any]]]:
    """Traffic at about ``rate`` from wall-clock ``start`` on (until ``until``, or for ever), as
    (seconds from the start, event), generated as it is read.

    Sessions begin WARM_UP_S early and only events from the start on are kept. A
    generator starts at most one session per millisecond: higher rates interleave
    several, each with ``customers`` of its own (by default 5,000, among those of the
    pre-produced dataset, who have given consent there). The rate asked of them is ``rate``
    times ``scale`` (see :func:`calibrated`).
    """
    parts = max(1, math.ceil(rate / 2500))
    until_ms = None if until is None else int(until * 1000)
    merged = heapq.merge(
        *(
            (
                (_ms(event["occurred_at"]) / 1000 - start, part, event)
                for event in TrafficGenerator(
                    seed=seed + part,
                    customers=customers,
                    events_per_second=rate * scale / parts,
                    diurnal=False,
                    start=datetime.fromtimestamp(start - WARM_UP_S, UTC),
                ).events(until_ms=until_ms)
                if _ms(event["occurred_at"]) >= start * 1000
            )
            for part in range(parts)
        ),
        key=lambda item: item[0],
    )
    for after, part, event in merged:
        yield after, {**event, "customer_id": _moved(event["customer_id"], part * customers)}


def calibrated(rate: float, seed: int, seconds: float = 60.0, customers: int = 5000) -> float:
    """The ``scale`` at which :func:`live_events` offers ``rate``, measured over ``seconds``."""
    start = time.time()
    offered = sum(1 for _ in live_events(rate, start, seed, until=start + seconds, customers=customers))
    return rate * seconds / max(1, offered)


def live_traffic(rate: float, seconds: float, seed: int) -> list[tuple[float, dict[str, Any]]]:
    """``seconds`` of traffic at ``rate`` (within a few percent): generated before the clock
    starts, so producing it costs the harness nothing at send time."""
    scale = calibrated(rate, seed, seconds)
    start = time.time()
    return list(live_events(rate, start, seed, scale, until=start + seconds))


def _moved(customer: str, by: int) -> str:
    """Customer ``cust-N`` of a generator whose customers start at ``by``: ``cust-(N + by)``."""
    return f"cust-{int(customer.removeprefix('cust-')) + by:06d}"


async def measure_latency(settings: Settings, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    # Encoded before the clock starts, all but the time: sending costs the harness (which
    # shares the cores with the worker) as little as it can.
    events = [
        (after, event["customer_id"].encode(), *encoded(settings, event, "occurred_at"))
        for after, event in live_traffic(rate, seconds, seed)
    ]
    # Read as the trigger topic's consumers read: exactly once, only what is committed.
    tail = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        fetch_max_wait_ms=5,
        isolation_level=isolation_level(settings),
    )
    await tail.start()
    partitions = [TopicPartition(settings.topic_triggers, p) for p in range(PARTITIONS)]
    tail.assign(partitions)
    await tail.seek_to_end(*partitions)
    latencies: list[float] = []
    earlier = 0
    # Event time = send time, and nothing of this run is sent before this instant.
    started = time.time() + 1

    async def collect() -> None:
        nonlocal earlier
        while True:
            batch = await tail.getmany(timeout_ms=100)
            received = time.time()
            for records in batch.values():
                for record in records:
                    trigger = orjson.loads(record.value)
                    if trigger["data"]["moment"] == "cart_abandonment":
                        continue
                    occurred = datetime.fromisoformat(trigger["time"]).timestamp()
                    if occurred < started:
                        # Not of this run: the pre-produced backlog's tail, or a trigger
                        # deferred past quiet hours and released now. Counted apart.
                        earlier += 1
                        continue
                    latencies.append((received - occurred) * 1000)

    collector = asyncio.create_task(collect())
    producer = new_producer(settings, linger_ms=0)
    await producer.start()
    await asyncio.sleep(max(0.0, started - time.time()))  # let the tail's first fetch settle
    pending = []
    behind: list[float] = []
    for after, key, topic, (head, tail_) in events:
        at = started + after
        # Event time = the moment it is sent: a trigger's lag behind its event is its latency.
        at_ms = int(at * 1000)
        wait = at - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        # Behind schedule, the harness itself adds this much to the latency measured.
        behind.append(max(0.0, -wait * 1000))
        value = head + format_time(at_ms).encode() + tail_
        pending.append(await producer.send(topic, value, key, None, at_ms))
        if len(pending) > 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await asyncio.sleep(3)  # stragglers
    collector.cancel()
    await producer.stop()
    await tail.stop()
    latencies.sort()
    return {
        "offered_per_s": len(events) / seconds,
        "triggers": len(latencies),
        "earlier_triggers": earlier,
        "send_late_p99_ms": sorted(behind)[int(len(behind) * 0.99)] if behind else 0.0,
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
    }


def encoded(settings: Settings, event: dict[str, Any], *slots: str) -> tuple[str, list[bytes]]:
    """``event``'s topic, and its JSON value cut around the fields ``slots``, to be filled in
    at send time: ``len(slots) + 1`` parts (the fields go last, in the order given)."""
    fields = {k: v for k, v in event.items() if k not in slots}
    value = orjson.dumps({**fields, **{slot: f"@@{slot}@@" for slot in slots}})
    parts = []
    for slot in slots:
        part, value = value.split(f"@@{slot}@@".encode())
        parts.append(part)
    return topic_for(event["event_type"], settings), [*parts, value]


async def preproduce(settings: Settings, lines: list[bytes]) -> None:
    await ensure_topics(settings)
    producer = new_producer(settings, max_batch_size=1 << 20, linger_ms=20)
    await producer.start()
    try:
        await publish(producer, settings, lines)
    finally:
        await producer.stop()


async def contender(
    name: str,
    command: list[str],
    group: str,
    args: argparse.Namespace,
    broker: Broker,
    redis: EmbeddedRedis,
    lines: list[bytes],
    guarantee: str = "at_least_once",
) -> dict[str, Any]:
    env = settings_for(name, broker, redis, guarantee)
    settings = load_settings(env)
    started = time.perf_counter()
    await preproduce(settings, lines)
    print(f"[{name}] pre-produced {len(lines):,} events in {time.perf_counter() - started:.1f} s", flush=True)
    log = Path(tempfile.gettempdir()) / f"bench-{name}.log"
    result: dict[str, Any] = {}
    with ExitStack() as stack:
        if args.learner_process and name == "micromoments":
            learner_log = log.with_name(f"bench-{name}-learner.log")
            stack.enter_context(
                running(
                    [sys.executable, "-m", "app.cli", "learner"], {**env, "MM_METRICS_PORT": "0"}, learner_log
                )
            )
        process = stack.enter_context(running(command, env, log))
        result["throughput"] = await measure_throughput(settings, group, len(lines), process, args.timeout)
        print(f"[{name}] throughput {result['throughput']['events_per_s']:,.0f} events/s", flush=True)
        for rate in args.rates:
            result[f"latency@{rate:g}"] = await measure_latency(settings, rate, args.seconds, args.seed + 1)
            print(f"[{name}] at {rate:g}/s: {result[f'latency@{rate:g}']}", flush=True)
    print(f"[{name}] worker log: {log}", flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument(
        "--rates",
        type=lambda s: [float(r) for r in s.split(",")],
        default=[1000.0, 5000.0],
        help="offered rates (events/s) for the latency runs, comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each latency run")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--broker", choices=["embedded", "kafka"], default="embedded")
    parser.add_argument(
        "--guarantee",
        choices=["at_least_once", "exactly_once", "both"],
        default="at_least_once",
        help="the worker's MM_PROCESSING_GUARANTEE (exactly_once needs --broker kafka); both: one run each",
    )
    parser.add_argument(
        "--learning",
        action="store_true",
        help="online learning on in the worker: every candidate scored, a learner in the process",
    )
    parser.add_argument(
        "--learner-process",
        action="store_true",
        help="with --learning: the worker only scores (MM_LEARNER=false); a `micromoments learner` learns",
    )
    args = parser.parse_args()
    if args.learner_process:
        args.learning = True
        os.environ["MM_LEARNER"] = "false"
    if args.learning:
        # Inherited by the worker: with a signing key (and Redis) it scores, publishes and learns.
        os.environ["MM_MODEL_KEY"] = secrets.token_urlsafe(32)

    lines = dataset(args.events, args.customers, args.seed)
    results = {}
    guarantees = ["at_least_once", "exactly_once"] if args.guarantee == "both" else [args.guarantee]
    with ApacheKafka() if args.broker == "kafka" else EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        for guarantee in guarantees:
            name = "micromoments" if len(guarantees) == 1 else f"mm-{guarantee.replace('_', '-')}"
            results[name] = await contender(
                name,
                [sys.executable, "-m", "app.cli", "worker"],
                name,
                args,
                broker,
                redis,
                lines,
                guarantee,
            )
        if not args.skip_naive:
            results["naive"] = await contender(
                "naive",
                [sys.executable, "bench/naive_agent.py", "worker", "-l", "warn"],
                "naive-naive",
                args,
                broker,
                redis,
                lines,
            )
    print()
    print(
        f"{'':24}{'events/s':>12}" + "".join(f"{f'p50@{r:g}/s':>14}{f'p99@{r:g}/s':>14}" for r in args.rates)
    )
    for name, result in results.items():
        row = f"{name:24}{result['throughput']['events_per_s']:>12,.0f}"
        for rate in args.rates:
            latency = result[f"latency@{rate:g}"]
            row += f"{latency['p50_ms']:>12.1f}ms{latency['p99_ms']:>12.1f}ms"
        print(row)
    for name, result in results.items():
        offered = ", ".join(f"{result[f'latency@{r:g}']['offered_per_s']:,.0f}/s" for r in args.rates)
        print(f"{name}: actually offered {offered}")
    if "naive" in results and "micromoments" in results:
        ratio = (
            results["micromoments"]["throughput"]["events_per_s"]
            / results["naive"]["throughput"]["events_per_s"]
        )
        print(f"\nthroughput ratio micromoments / naive: {ratio:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
