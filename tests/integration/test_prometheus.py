"""A real Prometheus scrapes a running worker on loopback; its metrics come back through the query API.

The worker (``python -m app.cli worker``) consumes a few hundred generated events and
two bad lines from the session's embedded broker, with state in the session's
redis-server. A Prometheus server (the real binary, a temporary data directory,
a 1 s scrape interval, the project's alert rules) scrapes its ``/metrics``; the test
asks Prometheus what it saw and compares it with what is on the topics. Every
dashboard query must evaluate there, and every alert rule must load and evaluate.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from harness import PSEUDONYM_KEY
from promql import DEPLOY, ROOT, binary, grafana_to_promql

from app.embedded import LOOPBACK, Broker, EmbeddedRedis, LocalServer, free_port
from app.settings import Settings, load_settings
from app.traffic import TrafficGenerator
from app.worker.feed import new_producer, publish
from app.worker.http import LIVENESS_PATH, READINESS_PATH
from app.worker.kafka import client_options, copartitioned_topics, ensure_topics

pytestmark = pytest.mark.integration

PARTITIONS = 4
EVENTS = 400
BAD_LINES = [b'{"event_id": "bad-1", "customer_id": ', b'{"event_id": "bad-2"}']
# Generous: how long a broken setup makes the test wait, not how fast things must be.
TIMEOUT = 90.0
RULES = DEPLOY / "prometheus" / "rules" / "micromoments.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "micromoments.json"


class PrometheusServer(LocalServer):
    """The real ``prometheus`` on a free loopback port, scraping ``targets`` every second."""

    name = "prometheus"

    def __init__(self, directory: Path, targets: Sequence[str]) -> None:
        super().__init__()
        self.directory = directory
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "micromoments", "static_configs": [{"targets": list(targets)}]}],
        }
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))

    def _command(self) -> Sequence[str]:
        return [
            binary("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--log.level=warn",
        ]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/api/v1/{path}?{query}", timeout=10) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str, label: str | None = None) -> dict[str, float]:
        """``expr``'s instant vector as {label value (or "") -> value}."""
        return {(s["metric"].get(label, "") if label else ""): float(s["value"][1]) for s in self.query(expr)}


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture
def env(broker: Broker, redis_server: EmbeddedRedis) -> dict[str, str]:
    suffix = f"prom-{uuid.uuid4().hex[:8]}"
    env = {
        "MM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "MM_REDIS_URL": redis_server.url,
        "MM_REDIS_PREFIX": f"mm-{suffix}",
        "MM_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "MM_KAFKA_SESSION_TIMEOUT": "3",
        "MM_PARTITIONS": str(PARTITIONS),
        "MM_GROUP_ID": f"mm-{suffix}",
        "MM_METRICS_PORT": str(free_port()),
        "MM_LOG_LEVEL": "info",
    }
    for field in Settings.__struct_fields__:
        if field.startswith("topic_"):
            env[f"MM_{field.upper()}"] = f"{field[len('topic_') :]}-{suffix}"
    return env


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env={**base, **env, "PYTHONUNBUFFERED": "1"},
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.tail()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise
        return self.process.returncode


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    started = Worker(env, tmp_path / "worker.log")
    try:
        yield started
    finally:
        started.stop()
        print(f"----- worker log -----\n{started.tail()}")


def wait_for(what: str, check: Any, worker: Worker, within: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        worker.check_alive()
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {within} s (last: {last})\n{worker.tail()}")


async def read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every record on ``topic`` (no consumer group), read up to the high watermarks."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(*tps, timeout_ms=200)).values():
                records.extend(batch)
            ends = {tp: consumer.highwater(tp) for tp in tps}
            if all([end is not None and await consumer.position(tp) >= end for tp, end in ends.items()]):
                return records
        raise AssertionError(f"could not read {topic} to its end")
    finally:
        await consumer.stop()


async def produce(settings: Settings, lines: list[bytes]) -> None:
    await ensure_topics(settings)
    producer = new_producer(settings)
    await producer.start()
    try:
        await publish(producer, settings, lines)
    finally:
        await producer.stop()


def test_prometheus_scrapes_the_worker(env: dict[str, str], worker: Worker, tmp_path: Path) -> None:
    settings = load_settings(env)
    address = f"{LOOPBACK}:{settings.metrics_port}"
    generator = TrafficGenerator(seed=11, customers=60, events_per_second=2.0)
    lines = [orjson.dumps(e) for e in generator.events(count=EVENTS)] + BAD_LINES
    asyncio.run(produce(settings, lines))

    # The worker's own endpoints: alive at once, ready once it has partitions and Redis answers.
    wait_for("/livez", lambda: http_status(f"http://{address}{LIVENESS_PATH}") == 200, worker)
    wait_for("/readyz", lambda: http_status(f"http://{address}{READINESS_PATH}") == 200, worker)

    with PrometheusServer(tmp_path, [address]) as prometheus:

        def consumed() -> float:
            return sum(prometheus.values("sum(micromoments_events_consumed_total)").values())

        wait_for("Prometheus sees every record consumed", lambda: consumed() >= len(lines), worker)
        assert prometheus.values('up{job="micromoments"}') == {"": 1.0}

        # Everything the worker did is on the topics; what it counted must agree.
        triggers = asyncio.run(read_topic(settings, settings.topic_triggers))
        dead = asyncio.run(read_topic(settings, settings.topic_dlq))
        published_by_moment = Counter(orjson.loads(r.value)["data"]["moment"] for r in triggers)
        assert triggers, "the generated traffic should give some triggers"
        expected = {m: float(n) for m, n in published_by_moment.items()}

        def published() -> dict[str, float]:
            found = prometheus.values("sum by (moment) (micromoments_triggers_published_total) > 0", "moment")
            return found if found == expected else {}

        got = wait_for("triggers by moment as on the topic", published, worker)
        dead_letters = prometheus.values("sum(micromoments_dead_letters_total)")
        assert dead_letters == {"": float(len(dead))} == {"": float(len(BAD_LINES))}
        rejected = prometheus.values("sum by (reason) (micromoments_events_rejected_total) > 0", "reason")
        assert rejected == {"not_json": 1.0, "missing_field": 1.0}
        by_type = prometheus.values("sum by (event_type) (micromoments_events_consumed_total)", "event_type")
        assert by_type.pop("invalid") == len(BAD_LINES)
        assert sum(by_type.values()) == EVENTS
        latency = prometheus.values("sum(micromoments_processing_latency_seconds_count)")
        assert latency[""] == len(lines)
        assigned = prometheus.values("sum(micromoments_assigned_partitions)")
        assert assigned == {"": float(PARTITIONS * len(copartitioned_topics(settings)))}
        lag = prometheus.values("sum(micromoments_consumer_lag_records)")
        assert lag == {"": 0.0}
        redis_calls = prometheus.values(
            "sum by (operation) (micromoments_redis_request_duration_seconds_count) > 0", "operation"
        )
        assert {"load", "save", "checkpoint"} <= redis_calls.keys()

        # The alert rules load and evaluate against the live data.
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        defined = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
        assert len(rules) == len(defined)
        wait_for(
            "every rule evaluated",
            lambda: all(
                r.get("lastEvaluation", "").startswith("20")
                for r in prometheus.api("rules")["groups"][0]["rules"]
            ),
            worker,
        )
        assert all(r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"])
        # Every dashboard query evaluates without error.
        board = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for row in board["panels"] for t in row.get("targets", [])]
        for expr in exprs:
            prometheus.api("query", query=grafana_to_promql(expr))
        print(
            f"Prometheus: up=1, events consumed {consumed():.0f}, triggers by moment {got},"
            f" dead letters {dead_letters['']:.0f}, rejected {rejected}, assigned partitions"
            f" {assigned['']:.0f}, consumer lag {lag['']:.0f}, {len(exprs)} dashboard queries evaluated"
        )
    assert worker.stop() == 0, "a graceful stop exits 0"
