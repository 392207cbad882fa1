"""Soak: one worker on Apache Kafka for an hour at half its measured capacity.

1. capacity: pre-produce ``--capacity-events`` events and time the worker through them
   (as bench/stream_worker.py does);
2. soak: live traffic (event time = now, as bench/stream_worker.py offers it) at ``--load`` of that
   capacity for ``--minutes``: ``--pool-seconds`` of it generated once, then sent again and
   again, each round as customers of its own (generating live took a core of the two);
   every 30 s, the worker's RSS and, per input partition, the group's lag (end offset
   minus committed offset) and whether it moved on.

Acceptance, printed at the end: memory flat after warm-up (RSS at the end within 10%
of RSS after ``--warm-up`` minutes), no partition without progress for more than a
minute while it had lag, and lag bounded (the last sample's total lag no more than a
few seconds of traffic). Not part of the test suite: run it by hand.

    .venv/bin/python bench/soak.py                       # an hour
    .venv/bin/python bench/soak.py --minutes 10 --warm-up 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis
from stream_worker import (
    PARTITIONS,
    calibrated,
    dataset,
    encoded,
    live_events,
    measure_throughput,
    preproduce,
    running,
    settings_for,
)

from app.apache_kafka import ApacheKafka
from app.embedded import EmbeddedRedis
from app.settings import Settings, load_settings
from app.triggers import format_time
from app.worker.feed import new_producer
from app.worker.kafka import client_options

SAMPLE_S = 30.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def lags(settings: Settings, reader: AIOKafkaConsumer) -> dict[TopicPartition, tuple[int, int]]:
    """Per input partition: (committed offset, lag)."""
    tps = [TopicPartition(t, p) for t in settings.input_topics for p in range(PARTITIONS)]
    ends = await reader.end_offsets(tps)
    found = {}
    for tp in tps:
        committed = await reader.committed(tp) or 0
        found[tp] = (committed, max(0, ends[tp] - committed))
    return found


async def deadlines_pending(client: Redis, settings: Settings) -> int:
    """Customers with a pending deadline (a cart, a trigger held back by quiet hours), all streams,
    as Redis holds them: the worker holds only those due within MM_DEADLINE_LOOKAHEAD_S."""
    keys = [f"{settings.redis_prefix}:deadlines:{{p{p}}}" for p in range(PARTITIONS)]
    return sum([await client.zcard(key) for key in keys])


# Live customers per interleaved generator: enough that each shops now and then, as real ones do
# (a few events within the detector's windows), not every few seconds.
CUSTOMERS = 400_000


# (seconds into the pool, topic, customer, the value's parts around its time and customer)
Template = tuple[float, str, str, list[bytes]]


def pool(settings: Settings, rate: float, seed: int, seconds: float) -> list[Template]:
    """``seconds`` of live traffic at ``rate`` on average, generated and encoded once, all but
    time and customer.

    Generating an event takes the load generator far longer than sending it: at half a
    worker's capacity, generating live took a core of the two the worker shares. So the
    feed sends this pool again and again (see :func:`feed`). Sessions last minutes, so
    they are still building up within it: its rate climbs, and is ``rate`` on average.
    """
    scale = calibrated(rate, seed, seconds, customers=CUSTOMERS)
    start = time.time()
    templates = []
    for after, event in live_events(rate, start, seed, scale, until=start + seconds, customers=CUSTOMERS):
        topic, parts = encoded(settings, event, "occurred_at", "customer_id")
        templates.append((after, topic, event["customer_id"], parts))
    return templates


async def feed(
    settings: Settings, templates: list[Template], seconds: float, on_sent: Callable[[int], None]
) -> None:
    """The pool's traffic, event time = now, for ever; ``on_sent`` told the count so far.

    Each round of the pool is sent as customers of their own (the round is appended to
    their ids), so that no customer repeats what they did a round before.
    """
    started = time.time()
    producer = new_producer(settings)
    await producer.start()
    sent = 0
    try:
        for round_ in itertools.count():
            offset, suffix = round_ * seconds, f"-r{round_}"
            for after, topic, customer, (head, middle, tail) in templates:
                at = started + offset + after
                wait = at - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                who = (customer + suffix).encode()
                at_ms = int(at * 1000)
                value = head + format_time(at_ms).encode() + middle + who + tail
                await producer.send(topic, value, who, None, at_ms)
                sent += 1
                on_sent(sent)
    finally:
        await producer.stop()


async def soak(args: argparse.Namespace) -> int:
    with ApacheKafka() as broker, EmbeddedRedis() as redis:
        env = settings_for("soak", broker, redis, args.guarantee)
        settings = load_settings(env)
        lines = dataset(args.capacity_events, 20_000, args.seed)
        await preproduce(settings, lines)
        log = Path("/tmp/bench-soak-worker.log")
        with running([sys.executable, "-m", "app.cli", "worker"], env, log) as worker:
            measured = await measure_throughput(settings, "soak", len(lines), worker, 900)
            capacity = measured["events_per_s"]
            rate = capacity * args.load
            print(
                f"capacity {capacity:,.0f} events/s; soaking at {rate:,.0f} events/s for {args.minutes} min"
            )
            print(f"worker log {log}", flush=True)
            sent = [0]

            def count(total: int) -> None:
                sent[0] = total

            # Worked out before the feed starts: it takes the event loop for minutes.
            templates = pool(settings, rate, args.seed + 1, args.pool_seconds)
            print(
                f"a pool of {len(templates):,} events ({args.pool_seconds:.0f} s), sent again and again",
                flush=True,
            )
            feeder = asyncio.create_task(feed(settings, templates, args.pool_seconds, count))
            reader = AIOKafkaConsumer(**client_options(settings), group_id="soak", enable_auto_commit=False)
            await reader.start()
            client = Redis.from_url(redis.url)
            samples: list[dict[str, Any]] = []
            moved_at: dict[TopicPartition, float] = {}
            last: dict[TopicPartition, int] = {}
            stalled = 0.0
            started = time.monotonic()
            sent_before, sampled_at = 0, started
            try:
                while time.monotonic() - started < args.minutes * 60:
                    await asyncio.sleep(SAMPLE_S)
                    if feeder.done():
                        feeder.result()
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker exited with {worker.returncode}: see {log}")
                    now = time.monotonic()
                    found = await lags(settings, reader)
                    for tp, (committed, lag) in found.items():
                        if committed != last.get(tp) or lag == 0:
                            moved_at[tp] = now
                        last[tp] = committed
                        stalled = max(stalled, now - moved_at.get(tp, started))
                    offered = (sent[0] - sent_before) / (now - sampled_at)
                    sent_before, sampled_at = sent[0], now
                    sample = {
                        "minute": (now - started) / 60,
                        "offered": offered,
                        "rss_mb": rss_mb(worker.pid),
                        "lag": sum(lag for _, lag in found.values()),
                        "max_partition_lag": max(lag for _, lag in found.values()),
                        "longest_stall_s": stalled,
                        "deadlines": await deadlines_pending(client, settings),
                    }
                    samples.append(sample)
                    print(
                        f"{sample['minute']:6.1f} min  offered {offered:7,.0f}/s"
                        f"  rss {sample['rss_mb']:7.1f} MB"
                        f"  lag {sample['lag']:7,d}  (max partition {sample['max_partition_lag']:6,d})"
                        f"  longest stall so far {stalled:5.0f} s"
                        f"  deadlines pending {sample['deadlines']:8,d}",
                        flush=True,
                    )
            finally:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeder
                await reader.stop()
                await client.aclose()
    return verdict(samples, args, rate)


def verdict(samples: list[dict[str, Any]], args: argparse.Namespace, rate: float) -> int:
    after_warm_up = [s for s in samples if s["minute"] >= args.warm_up]
    if not after_warm_up:
        print("too short to judge")
        return 1
    first, final = after_warm_up[0]["rss_mb"], samples[-1]["rss_mb"]
    flat = final <= first * 1.10
    progress = samples[-1]["longest_stall_s"] <= 60
    bounded = samples[-1]["lag"] <= rate * 5
    print()
    print(f"offered {sum(s['offered'] for s in samples) / len(samples):,.0f} events/s on average")
    print(f"memory after warm-up {first:.0f} MB, at the end {final:.0f} MB: {'flat' if flat else 'GROWING'}")
    print(
        f"longest time a partition with lag went without progress: {samples[-1]['longest_stall_s']:.0f} s:"
        f" {'ok' if progress else 'STALLED'}"
    )
    print(
        f"lag at the end {samples[-1]['lag']:,} records ({samples[-1]['lag'] / rate:.1f} s of traffic),"
        f" max {max(s['lag'] for s in samples):,}: {'bounded' if bounded else 'GROWING'}"
    )
    return 0 if flat and progress and bounded else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--warm-up", type=float, default=5.0, help="minutes before memory is judged")
    parser.add_argument("--load", type=float, default=0.5, help="share of the measured capacity offered")
    parser.add_argument("--capacity-events", type=int, default=150_000)
    parser.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--pool-seconds", type=float, default=120.0, help="length of the traffic pool the feed repeats"
    )
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
