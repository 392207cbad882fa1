"""Benchmark: the micromoments worker against the same job as a Quix Streams application.

Both contenders read the same pre-produced input (default 200,000 events for 20,000
customers, bench/stream_worker.py's mix) from the same Apache Kafka, with learning off
(fixtures/rules-only.toml: the peer cannot learn), each in a consumer group and with
state of its own: the worker keeps windows in redis-server, the peer
(bench/peer_quix_app.py, in a virtual environment of its own under bench/out/) in Quix's
RocksDB state with its changelog topic. They run one after the other, alternating,
``--rounds`` times each. For each run it prints events/s and the contender's CPU
seconds (its process, every thread), end to end (from the process's start) and in
steady state (from the last look that saw nothing committed to the first that sees
everything), and the triggers each published; then the median ratios.

    .venv/bin/python bench/peer_quix.py
    .venv/bin/python bench/peer_quix.py --events 100000 --customers 10000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from stream_worker import ROOT, committed_total, dataset, preproduce, running, settings_for

from app.apache_kafka import ApacheKafka
from app.embedded import EmbeddedRedis
from app.settings import load_settings

QUIX_VERSION = "3.28.1"
QUIX_VENV = ROOT / "bench" / "out" / "quix-venv"
RULES_ONLY = ROOT / "fixtures" / "rules-only.toml"
INPUT = "peer"  # the input topics: peer.clickstream, peer.search, peer.purchase, and consent's
KINDS = ("clickstream", "search", "purchase")


def quix_python() -> Path:
    """The peer's interpreter: Quix Streams and this project, apart from the product's environment."""
    python = QUIX_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}", "-e", str(ROOT)],
            check=True,
        )
    return python


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    process: subprocess.Popen[bytes],
    bootstrap: str,
    group: str,
    topics: set[str],
    output: str,
    total: int,
    limit_s: float,
) -> dict[str, float]:
    """Time and CPU ``process`` took to commit ``total`` records, and the triggers it published."""
    started, started_cpu = time.monotonic(), cpu_seconds(process.pid)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        idle, idle_cpu = started, started_cpu
        while time.monotonic() < started + limit_s:
            if process.poll() is not None:
                raise RuntimeError(f"{group} exited with {process.returncode}")
            done = await committed_total(reader, topics)
            now, cpu = time.monotonic(), cpu_seconds(process.pid)
            if done == 0:
                idle, idle_cpu = now, cpu
            elif done >= total:
                cluster = await reader._client.fetch_all_metadata()
                out = [TopicPartition(output, p) for p in sorted(cluster.partitions_for_topic(output) or ())]
                return {
                    "triggers": sum((await reader.end_offsets(out)).values()) if out else 0,
                    "e2e_s": now - started,
                    "e2e_cpu_s": cpu,
                    "steady_s": now - idle,
                    "steady_cpu_s": cpu - idle_cpu,
                }
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{group} not done within {limit_s} s")
    finally:
        await reader.stop()


async def run(
    name: str,
    command: list[str],
    env: dict[str, str],
    inputs: set[str],
    output: str,
    args: argparse.Namespace,
    total: int,
) -> dict[str, float]:
    log = Path(tempfile.gettempdir()) / f"bench-peer-{name}.log"
    with running(command, env, log) as process:
        return await measure(
            process, env["PEER_BOOTSTRAP"], env["PEER_GROUP"], inputs, output, total, args.timeout
        )


def row(name: str, total: int, r: dict[str, float]) -> str:
    return (
        f"{name:<14}{total / r['e2e_s']:>10,.0f}{r['e2e_cpu_s']:>9.1f}{total / r['e2e_cpu_s']:>11,.0f}"
        f"{total / r['steady_s']:>10,.0f}{r['steady_cpu_s']:>9.1f}{total / r['steady_cpu_s']:>11,.0f}"
        f"{r['triggers']:>10,.0f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    python = quix_python()
    lines = dataset(args.events, args.customers, args.seed)
    total = len(lines)
    results: dict[str, list[dict[str, float]]] = {"micromoments": [], "quix": []}
    with ApacheKafka() as broker, EmbeddedRedis() as redis:
        shared = load_settings(settings_for(INPUT, broker, redis, "at_least_once"))
        inputs = set(shared.input_topics)
        await preproduce(shared, lines)
        print(f"pre-produced {total:,} events; contenders alternate, {args.rounds} round(s)", flush=True)
        print(
            f"{'':14}{'e2e ev/s':>10}{'CPU s':>9}{'ev/CPU-s':>11}"
            f"{'steady':>10}{'CPU s':>9}{'ev/CPU-s':>11}{'triggers':>10}"
        )
        for round_ in range(1, args.rounds + 1):
            group = f"peer-mm-{round_}"
            worker = {
                **settings_for(group, broker, redis, "at_least_once"),
                **{f"MM_TOPIC_{kind.upper()}": f"{INPUT}.{kind}" for kind in KINDS},
                "MM_MOMENTS_CONFIG": str(RULES_ONLY),
                "PEER_BOOTSTRAP": broker.bootstrap,
                "PEER_GROUP": group,
            }
            results["micromoments"].append(
                await run(
                    "micromoments",
                    [sys.executable, "-m", "app.cli", "worker"],
                    worker,
                    inputs,
                    f"{group}.triggers",
                    args,
                    total,
                )
            )
            print(row(f"micromoments {round_}", total, results["micromoments"][-1]), flush=True)
            with tempfile.TemporaryDirectory(prefix="peer-quix-") as state_dir:
                peer = {
                    "PEER_BOOTSTRAP": broker.bootstrap,
                    "PEER_GROUP": f"peer-quix-{round_}",
                    "PEER_INPUTS": ",".join(sorted(inputs)),
                    "PEER_OUTPUT": f"peer-quix-{round_}.triggers",
                    "PEER_STATE_DIR": state_dir,
                    "MM_MOMENTS_CONFIG": str(RULES_ONLY),
                }
                results["quix"].append(
                    await run(
                        "quix",
                        [str(python), str(ROOT / "bench" / "peer_quix_app.py")],
                        peer,
                        inputs,
                        peer["PEER_OUTPUT"],
                        args,
                        total,
                    )
                )
            print(row(f"quix {round_}", total, results["quix"][-1]), flush=True)
    print()
    for measure_ in ("steady", "e2e"):
        cpu = {
            name: statistics.median(r[f"{measure_}_cpu_s"] for r in runs) for name, runs in results.items()
        }
        took = {name: statistics.median(r[f"{measure_}_s"] for r in runs) for name, runs in results.items()}
        print(
            f"{measure_:>6}: micromoments/quix {cpu['quix'] / cpu['micromoments']:.2f}x per CPU-second,"
            f" {took['quix'] / took['micromoments']:.2f}x events/s (medians)"
        )


if __name__ == "__main__":
    asyncio.run(main())
