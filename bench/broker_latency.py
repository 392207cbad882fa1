"""Benchmark: the embedded broker's own produce-to-consume latency, no worker in between.

The floor under bench/stream_worker.py's event-to-trigger latency, which crosses the
broker twice (event in, trigger out): records are produced one by one at a fixed rate
(``linger_ms=0``, ``acks=all``, as the latency runs do) to a 4-partition topic, read by
a consumer tailing it, and each one's latency is its receipt time minus its send time.

    .venv/bin/python bench/broker_latency.py                 # 500 and 2,000 records/s
    .venv/bin/python bench/broker_latency.py --rates 1000 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.embedded import EmbeddedBroker

PARTITIONS = 4


async def measure(bootstrap: str, topic: str, rate: float, seconds: float) -> dict[str, float]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=5)
    await producer.start()
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    latencies: list[float] = []

    async def collect() -> None:
        while True:
            fetched = await consumer.getmany(timeout_ms=100)
            received = time.time()
            for records in fetched.values():
                latencies.extend((received - float(r.value)) * 1000 for r in records)

    collector = asyncio.create_task(collect())
    await asyncio.sleep(1)  # the tail's first fetch
    started = time.time()
    pending = []
    for i in range(int(rate * seconds)):
        wait = started + i / rate - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        pending.append(await producer.send(topic, str(time.time()).encode(), key=str(i).encode()))
        if len(pending) > 500:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await asyncio.sleep(2)  # stragglers
    collector.cancel()
    await producer.stop()
    await consumer.stop()
    latencies.sort()
    return {
        "records": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99)],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=lambda s: [float(r) for r in s.split(",")], default=[500.0, 2000.0])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    with EmbeddedBroker() as broker:
        for rate in args.rates:
            result = await measure(broker.bootstrap, f"latency-{rate:g}", rate, args.seconds)
            print(
                f"{rate:>8,.0f} records/s: {result['records']:,.0f} records,"
                f" p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
            )


if __name__ == "__main__":
    asyncio.run(main())
