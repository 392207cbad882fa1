"""Benchmark: one worker, then two, on the same pre-produced input; and the per-unit figures of
docs/capacity.md.

For each worker count, the same dataset (default 200,000 events of 20,000 customers,
learning off) is pre-produced to topics of its own (8 partitions), the workers are
started together, and the run is timed from the first committed offsets until
everything is committed. Measured per run:

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
import statistics
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
    included), scripts run (EVALSHA: saves, claims aside), MGETs (loads), network bytes."""
    total = {"commands": 0, "scripts": 0, "mgets": 0, "bytes_in": 0, "bytes_out": 0}
    for port in ports:
        client = aioredis.Redis(host=LOOPBACK, port=port)
        try:
            info = await client.info("stats")
            commands = await client.info("commandstats")
        finally:
            await client.aclose()
        total["commands"] += int(info["total_commands_processed"])
        total["scripts"] += int(commands.get("cmdstat_evalsha", {}).get("calls", 0))
        total["mgets"] += int(commands.get("cmdstat_mget", {}).get("calls", 0))
        total["bytes_in"] += int(info["total_net_input_bytes"])
        total["bytes_out"] += int(info["total_net_output_bytes"])
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


def _consumed(port: int) -> float:
    """Events a worker has consumed so far (0 until its /metrics answers)."""
    try:
        return scrape(port, "micromoments_events_consumed_total")
    except OSError:
        return 0.0


async def trigger_count(bootstrap: str, topic: str) -> int:
    """Records on ``topic`` (at least once and no fault: each trigger once); created with PARTITIONS."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def run_workers(
    count: int,
    broker: Broker,
    redis: EmbeddedRedis | EmbeddedRedisCluster,
    lines: list[bytes],
    limit_s: float,
) -> dict[str, Any]:
    name = f"scale-{count}"
    env = settings_for(name, broker, redis, "at_least_once")  # type: ignore[arg-type]
    env["MM_PARTITIONS"] = str(PARTITIONS)
    settings = load_settings(env)
    await preproduce(settings, lines)
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
        # From the first look at which every worker has consumed something (start-up and the
        # group's rebalances behind them) to the first that sees everything committed; what was
        # committed before that instant is not counted.
        idle_until = time.monotonic()
        cpu_start = [cpu_seconds(p.pid) for p in processes]
        deadline = idle_until + limit_s
        topics = set(settings.input_topics)
        before_window = 0
        while True:
            for process in processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a worker exited with {process.returncode}")
            now = time.monotonic()
            if not all(_consumed(port) for port in metrics_ports):
                idle_until = now
                cpu_start = [cpu_seconds(p.pid) for p in processes]
                before_window = -1
            else:
                if before_window < 0:
                    before_window = await committed_total(reader, topics, PARTITIONS)
                if await committed_total(reader, topics, PARTITIONS) >= len(lines):
                    now = time.monotonic()
                    break
            if now > deadline:
                raise TimeoutError(f"not done within {limit_s} s")
            await asyncio.sleep(0.02)
        seconds = now - idle_until
        cpu = sum(cpu_seconds(p.pid) - c for p, c in zip(processes, cpu_start, strict=True))
        batches = sum(scrape(port, "micromoments_batches_total") for port in metrics_ports)
    await reader.stop()
    after = await redis_stats(ports)
    footprint = await state_footprint(redis.url, settings.redis_prefix)
    triggers = await trigger_count(broker.bootstrap, settings.topic_triggers)
    delta = {k: after[k] - before[k] for k in before}
    events = len(lines) - before_window
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
        "triggers": triggers,
        "triggers_per_event": triggers / len(lines),
        "input_bytes_per_event": sum(len(line) for line in lines) / len(lines),
        **footprint,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--workers", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2])
    parser.add_argument("--broker", choices=["kafka", "embedded"], default="kafka")
    parser.add_argument("--redis", choices=["single", "cluster"], default="single")
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
            result = await run_workers(count, broker, redis, lines, args.timeout)
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
    first = results[0]
    for r in results[1:]:
        print(
            f"{r['workers']} workers / {first['workers']}: {r['events_per_s'] / first['events_per_s']:.2f}x"
        )
    print(
        f"state: {first['state_keys']:,} keys, {first['memory_per_state_bytes']:,.0f} B of Redis memory"
        f" ({first['value_per_state_bytes']:,.0f} B of value) per customer;"
        f" {first['triggers_per_event']:.4f} triggers per event;"
        f" {first['input_bytes_per_event']:.0f} B per input event"
    )


if __name__ == "__main__":
    asyncio.run(main())
