"""Benchmark: what one Apache Kafka broker on this machine takes in and gives out, with Kafka's own tools.

The per-broker figure of docs/capacity.md. Kafka's ``ProducerPerformance`` and
``ConsumerPerformance`` (org.apache.kafka:kafka-tools, fetched from Maven Central by
``bench/kafka-tools.pom.xml`` and cached) run against a broker started as the tests
start it (app.apache_kafka.ApacheKafka: KRaft, one node, loopback), with records the
size of an average input event (308 bytes, as bench/scale_out.py measures), the
producer settings the worker uses (``acks=all``, idempotent) and ``lz4``
compression. One node means replication factor 1: a cluster with factor 3 writes each
record three times, which docs/capacity.md accounts for.

    .venv/bin/python bench/broker_throughput.py
    .venv/bin/python bench/broker_throughput.py --records 5000000 --record-size 308
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from app.apache_kafka import ApacheKafka, install

TOOLS_POM = Path(__file__).resolve().parent / "kafka-tools.pom.xml"


def java_tool(tools: Path, main: str, *args: str, timeout: float) -> str:
    done = subprocess.run(
        ["java", "-Xmx1g", "-cp", f"{tools}/*", main, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=3_000_000)
    parser.add_argument("--record-size", type=int, default=308)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    tools = install(pom=TOOLS_POM.read_bytes())
    with ApacheKafka() as broker:
        java_tool(
            tools,
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            broker.bootstrap,
            "--create",
            "--topic",
            "bench",
            "--partitions",
            str(args.partitions),
            timeout=120,
        )
        produced = java_tool(
            tools,
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            "bench",
            "--num-records",
            str(args.records),
            "--record-size",
            str(args.record_size),
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={broker.bootstrap}",
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=5",
            "batch.size=262144",
            "compression.type=lz4",
            timeout=args.timeout,
        )
        summary = produced.strip().splitlines()[-1]
        rate = re.search(r"([\d.]+) records/sec \(([\d.]+) MB/sec\)", summary)
        print(f"produce: {summary}")
        consumed = java_tool(
            tools,
            "org.apache.kafka.tools.ConsumerPerformance",
            "--bootstrap-server",
            broker.bootstrap,
            "--topic",
            "bench",
            "--messages",
            str(args.records),
            "--timeout",
            "60000",
            timeout=args.timeout,
        )
        lines = consumed.strip().splitlines()
        header, values = lines[-2].split(", "), lines[-1].split(", ")
        fields = dict(zip(header, values, strict=False))
        print(f"consume: {fields.get('MB.sec')} MB/s, {fields.get('nMsg.sec')} records/s")
    if rate:
        print(
            f"\none broker, replication factor 1, {args.record_size}-byte records: in"
            f" {float(rate.group(1)):,.0f} records/s ({float(rate.group(2)):.1f} MB/s),"
            f" out {float(fields.get('nMsg.sec', 'nan')):,.0f} records/s ({fields.get('MB.sec')} MB/s)"
        )


if __name__ == "__main__":
    main()
