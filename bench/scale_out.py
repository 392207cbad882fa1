"""Benchmark: one worker, then two, on the same pre-produced input; and the per-unit figures of
docs/capacity.md.

For each worker count, the same dataset (default 400,000 events of 40,000 customers,
learning off unless ``--learning``) is pre-produced to topics of its own (8 partitions),
the workers are started together, and the run is timed in steady state: from a quarter
of the input committed to three quarters. Measured per run:

- events/s, and events per CPU-second of the workers (utime + stime from /proc);
- Redis: commands, bytes in and out (INFO stats of every primary, before and after),
  per batch and per event; batches from the workers' own ``micromoments_batches_total``;
- state: keys, and ``MEMORY USAGE`` of a sample of state keys (bytes per customer);
- triggers per event, and the input's bytes per event (what the broker carries in).

Servers run on free loopback ports and stop at the end: Apache Kafka by default (the
production engine; ``--broker embedded`` for the Tansu broker) and one ``redis-server``
(``--redis cluster``: three primaries and three replicas).

    .venv/bin/python bench/scale_out.py
    .venv/bin/python bench/scale_out.py --redis cluster --workers 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from stream_worker import committed_total, dataset, preproduce, running, settings_for

from app.apache_kafka import ApacheKafka
from app.embedded import LOOPBACK, Broker, EmbeddedBroker, EmbeddedRedis, EmbeddedRedisCluster, free_port
from app.settings import load_settings
from app.state.redis import connect

PARTITIONS = 8
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


async def redis_stats(ports: list[int]) -> dict[str, int]:
    """Summed over the Redis servers on ``ports``: commands processed (those the save script runs
    included), scripts run (EVALSHA: saves, claims aside), MGETs (loads), network bytes, CPU."""
    total = {"commands": 0, "scripts": 0, "mgets": 0, "bytes_in": 0, "bytes_out": 0, "cpu_ms": 0}
    for port in ports:
        client = aioredis.Redis(host=LOOPBACK, port=port)
        try:
            info = await client.info("stats")
            commands = await client.info("commandstats")
            cpu = await client.info("cpu")
        finally:
            await client.aclose()
        total["commands"] += int(info["total_commands_processed"])
        total["scripts"] += int(commands.get("cmdstat_evalsha", {}).get("calls", 0))
        total["mgets"] += int(commands.get("cmdstat_mget", {}).get("calls", 0))
        total["bytes_in"] += int(info["total_net_input_bytes"])
        total["bytes_out"] += int(info["total_net_output_bytes"])
        total["cpu_ms"] += int(1000 * (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])))
    return total


async def state_footprint(url: str, prefix: str, sample: int = 2000) -> dict[str, float]:
    """State keys of ``prefix``, and the mean ``MEMORY USAGE`` and value size of a sample of them."""
    client = connect(url)
    keys: list[bytes] = []
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            if b":s:" in key:
                keys.append(key)
        usage = [int(await client.memory_usage(key) or 0) for key in keys[:sample]]
        sizes = [int(await client.strlen(key)) for key in keys[:sample]]
    finally:
        await client.aclose()
    return {
        "state_keys": len(keys),
        "memory_per_state_bytes": statistics.mean(usage) if usage else 0.0,
        "value_per_state_bytes": statistics.mean(sizes) if sizes else 0.0,
    }


def scrape(port: int, name: str) -> float:
    """The sum of a counter's samples on a worker's /metrics."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def _check(processes: list[subprocess.Popen[bytes]], deadline: float) -> None:
    for process in processes:
        if process.poll() is not None:
            raise RuntimeError(f"a worker exited with {process.returncode}")
    if time.monotonic() > deadline:
        raise TimeoutError("the workers did not finish in time")


def _consumed(port: int) -> float:
    """Events a worker has consumed so far (0 until its /metrics answers)."""
    try:
        return scrape(port, "micromoments_events_consumed_total")
    except OSError:
        return 0.0


async def triggers_published(bootstrap: str, topic: str) -> tuple[int, int]:
    """Records on ``topic`` and their bytes (at least once, no fault: each trigger once)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        count = size = 0
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                count += len(records)
                size += sum(len(r.value or b"") for r in records)
        return count, size
    finally:
        await consumer.stop()


async def run_workers(
    count: int,
    broker: Broker,
    redis: EmbeddedRedis | EmbeddedRedisCluster,
    lines: list[bytes],
    limit_s: float,
    extra_env: dict[str, str],
) -> dict[str, Any]:
    name = f"scale-{count}-{secrets.token_hex(3)}"
    env = settings_for(name, broker, redis, "at_least_once")  # type: ignore[arg-type]
    env |= {"MM_PARTITIONS": str(PARTITIONS), **extra_env}
    settings = load_settings(env)
    began = time.perf_counter()
    await preproduce(settings, lines)
    produced = len(lines) / (time.perf_counter() - began)  # one Python producer into the broker
    ports = (
        [node.port for node in redis.primaries()] if isinstance(redis, EmbeddedRedisCluster) else [redis.port]
    )
    before = await redis_stats(ports)
    metrics_ports = [free_port() for _ in range(count)]
    reader = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=name, enable_auto_commit=False)
    await reader.start()
    with ExitStack() as stack:
        processes = [
            stack.enter_context(
                running(
                    [sys.executable, "-m", "app.cli", "worker"],
                    {**env, "MM_METRICS_PORT": str(port)},
                    Path(tempfile.gettempdir()) / f"bench-{name}-{n}.log",
                )
            )
            for n, port in enumerate(metrics_ports)
        ]
        # In steady state: from the first look that sees a quarter of the input committed to the
        # first that sees three quarters, every worker at work by then (start-up, the group's
        # rebalances and the tail apart). The workers' /metrics are not read in between
        # (rendering them costs the workers CPU); commits are read every 0.1 s.
        deadline = time.monotonic() + limit_s
        topics = set(settings.input_topics)
        while not all(_consumed(port) for port in metrics_ports):
            _check(processes, deadline)
            await asyncio.sleep(0.02)
        marks: list[tuple[float, int, float]] = []  # (time, committed, workers' CPU seconds)
        for share in (0.25, 0.75):
            while (done := await committed_total(reader, topics, PARTITIONS)) < share * len(lines):
                _check(processes, deadline)
                await asyncio.sleep(0.1)
            marks.append((time.monotonic(), done, sum(cpu_seconds(p.pid) for p in processes)))
        while await committed_total(reader, topics, PARTITIONS) < len(lines):
            _check(processes, deadline)
            await asyncio.sleep(0.1)
        (t0, done0, cpu0), (t1, done1, cpu1) = marks
        seconds, events, cpu = t1 - t0, done1 - done0, cpu1 - cpu0
        batches = sum(scrape(port, "micromoments_batches_total") for port in metrics_ports)
    await reader.stop()
    after = await redis_stats(ports)
    footprint = await state_footprint(redis.url, settings.redis_prefix)
    triggers, trigger_bytes = await triggers_published(broker.bootstrap, settings.topic_triggers)
    delta = {k: after[k] - before[k] for k in before}
    return {
        "workers": count,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "cpu_seconds": cpu,
        "events_per_cpu_s": events / cpu if cpu else float("nan"),
        "batches": batches,
        "events_per_batch": len(lines) / batches if batches else float("nan"),
        "redis_commands_per_batch": delta["commands"] / batches if batches else float("nan"),
        "redis_scripts_per_batch": delta["scripts"] / batches if batches else float("nan"),
        "redis_mgets_per_batch": delta["mgets"] / batches if batches else float("nan"),
        "redis_bytes_in_per_event": delta["bytes_in"] / len(lines),
        "redis_bytes_out_per_event": delta["bytes_out"] / len(lines),
        "redis_bytes_per_batch": (delta["bytes_in"] + delta["bytes_out"]) / batches
        if batches
        else float("nan"),
        # Read once everything is committed: deadlines that quiet streams fire later (as the
        # deployment's time reaches them) may be missing, so this varies by a percent or two.
        "triggers": triggers,
        "triggers_per_event": triggers / len(lines),
        "trigger_bytes": trigger_bytes / triggers if triggers else 0.0,
        "redis_cpu_us_per_event": delta["cpu_ms"] * 1000 / len(lines),
        "produced_per_s": produced,
        "input_bytes_per_event": sum(len(line) for line in lines) / len(lines),
        **footprint,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--customers", type=int, default=40_000)
    parser.add_argument("--workers", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2])
    parser.add_argument("--broker", choices=["kafka", "embedded"], default="kafka")
    parser.add_argument("--redis", choices=["single", "cluster"], default="single")
    parser.add_argument(
        "--learning",
        action="store_true",
        help="the default configuration: models score every candidate, a learner in each worker",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    lines = dataset(args.events, args.customers, args.seed)
    results = []
    with ExitStack() as stack:
        broker: Broker = stack.enter_context(ApacheKafka() if args.broker == "kafka" else EmbeddedBroker())
        redis = stack.enter_context(
            EmbeddedRedisCluster() if args.redis == "cluster" else EmbeddedRedis(appendfsync="everysec")
        )
        for count in args.workers:
            extra = {"MM_MODEL_KEY": secrets.token_urlsafe(32)} if args.learning else {}
            result = await run_workers(count, broker, redis, lines, args.timeout, extra)
            print(f"[{count} worker(s)] {result}", flush=True)
            results.append(result)
    print()
    print(
        f"{'workers':>8}{'events/s':>12}{'ev/CPU-s':>10}{'ev/batch':>10}{'scripts/b':>10}{'MGETs/b':>9}"
        f"{'cmds/batch':>11}{'B/batch':>11}"
    )
    for r in results:
        print(
            f"{r['workers']:>8}{r['events_per_s']:>12,.0f}{r['events_per_cpu_s']:>10,.0f}"
            f"{r['events_per_batch']:>10.0f}{r['redis_scripts_per_batch']:>10.2f}{r['redis_mgets_per_batch']:>9.2f}"
            f"{r['redis_commands_per_batch']:>11.1f}{r['redis_bytes_per_batch']:>11,.0f}"
        )
    # Each run against the one-worker run before it (the machine warms up over a session).
    base = None
    for r in results:
        if r["workers"] == 1:
            base = r
        elif base is not None:
            print(f"{r['workers']} workers / 1: {r['events_per_s'] / base['events_per_s']:.2f}x")
    first = results[0]
    print(
        f"state: {first['state_keys']:,} keys, {first['memory_per_state_bytes']:,.0f} B of Redis memory"
        f" ({first['value_per_state_bytes']:,.0f} B of value) per customer;"
        f" {first['triggers_per_event']:.4f} triggers per event;"
        f" {first['input_bytes_per_event']:.0f} B per input event,"
        f" {first['trigger_bytes']:.0f} B per trigger;"
        f" Redis CPU {first['redis_cpu_us_per_event']:.1f} us per event;"
        f" pre-produced at {first['produced_per_s']:,.0f} events/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
