"""Online learning in the streaming worker: embedded broker, redis-server, worker subprocesses.

The demo day goes through in two halves. The first, through two workers at once:
every labelled outcome they publish is learnt, exactly once, each model by one
learner (no snapshot is ever refused for a version another learner took). Then
both stop, and two new workers take the second half; one is killed mid-way.
The survivor resumes every model from its snapshot (learnt counts go on from
the first half's, not from zero), relearns what the dead one had not stored,
and its scorers, refreshed without a restart, let the models decide triggers.

With ``MM_LEARNER=false`` on the worker, a ``micromoments learner`` process learns
instead; one that stores no snapshot on its own stores everything it has learnt
when stopped with SIGTERM, and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import redis.asyncio as aioredis
from harness import (
    PARTITIONS,
    ROOT,
    TIMEOUT,
    Workers,
    create_topics,
    event_time_ms,
    isolated_env,
    produce,
    read_jsonl,
    read_topic,
    run,
    settings_of,
    ticks,
    wait_consumed,
    wait_for_records,
)
from prometheus_client.parser import text_string_to_metric_families

from app.embedded import Broker, EmbeddedRedis, free_port
from app.learning.config import MOMENT_NAMES
from app.learning.labels import LabelledExample
from app.settings import Settings
from app.state.model_store import ModelStore
from app.worker.learning import SEGMENTS

pytestmark = pytest.mark.integration

DEMO = ROOT / "fixtures" / "demo" / "day.jsonl"
KEY = "integration-test-model-signing-key-0123456789"
MIN_EXAMPLES = 25
MODELS = (*MOMENT_NAMES, SEGMENTS)
_examples = msgspec.msgpack.Decoder(LabelledExample)


def learning_env(broker: Broker, redis: EmbeddedRedis, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "learning.toml"
    # The shipped configuration (policy included), with models deciding after a few outcomes,
    # and one moment published whatever its score: triggers to find the segment on, however
    # few candidates the models let through.
    config.write_text(
        f"[learning]\nenabled = true\nmin_examples = {MIN_EXAMPLES}\n"
        "[moments.review_seeking]\nthreshold = 0.0\n"
    )
    return isolated_env(
        broker,
        redis,
        "learning",
        MM_MOMENTS_CONFIG=str(config),
        MM_MODEL_KEY=KEY,
        MM_SNAPSHOT_EVERY="50",
        MM_SNAPSHOT_INTERVAL_S="0.5",
        MM_MODEL_REFRESH_S="0.5",
    )


def with_port(env: dict[str, str], **extra: str) -> tuple[dict[str, str], int]:
    port = free_port()
    return {**env, "MM_METRICS_PORT": str(port), **extra}, port


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Metrics:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def gauge(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> dict[str, float]:
    return {dict(labels)["model"]: v for (n, labels), v in metrics.items() if n == name}


# Model -> (examples learnt, version).
Stored = dict[str, tuple[int, int]]


async def published(settings: Settings) -> Counter[str]:
    """Distinct labelled examples on the training topic, by model (key).

    Distinct: a worker that dies between publishing a batch's examples and committing
    its input offsets publishes them again when the batch is redone, with the same ids.
    """
    records = await read_topic(settings.kafka_bootstrap, settings.topic_training)
    return Counter(key for key, _ in {(r.key.decode(), _examples.decode(r.value).id) for r in records})


async def stored(settings: Settings) -> Stored:
    """Model -> (examples learnt, version) as stored in Redis."""
    client = aioredis.Redis.from_url(settings.redis_url)
    store = ModelStore(client, KEY.encode(), prefix=settings.redis_prefix)
    try:
        out = {}
        for name in MODELS:
            loaded = await store.load(name)
            if loaded is not None:
                assert loaded.learnt is not None, loaded.refused
                out[name] = (loaded.learnt.model.examples_seen, loaded.version)
        return out
    finally:
        await client.aclose()


async def wait_learnt(
    settings: Settings, workers: Workers
) -> tuple[Counter[str], dict[str, tuple[int, int]]]:
    """Until every published example is in a stored model: the counts published, and what is stored."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        workers.check_alive()
        expected, models = await published(settings), await stored(settings)
        learnt = {name: examples for name, (examples, _) in models.items()}
        if learnt == dict(expected):
            return expected, models
        if time.monotonic() > deadline:
            raise AssertionError(f"published {dict(expected)}, stored {learnt}")
        await asyncio.sleep(0.5)


def wait_learners_assigned(settings: Settings, *started: Any) -> None:
    """Until each of ``started`` has been given training partitions: both learners are in the group."""
    # aiokafka logs an assignment as a table: "| <topic> | {1, 3} |"; only learners read this topic.
    pattern = re.compile(re.escape(f"| {settings.topic_training}") + r"\s*\|\s*\{\d")
    deadline = time.monotonic() + TIMEOUT
    while not all(pattern.search(w.log.read_text(errors="replace")) for w in started):
        for worker in started:
            worker.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError("the learners were not given partitions")
        time.sleep(0.2)


def trigger_ms(trigger: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(trigger["time"].replace("Z", "+00:00")).timestamp() * 1000)


def learning_log(worker: Any) -> list[tuple[str, int]]:
    """(model, version) of every 'learning <model> from version <n>' line of ``worker``'s log."""
    text = worker.log.read_text(errors="replace")
    return [(m, int(v)) for m, v in re.findall(r"learning (\w+) from version (\d+)", text)]


def demo_halves() -> tuple[int, list[bytes], list[bytes]]:
    """The demo day split at its middle (event time): the middle, the first half, the second
    half followed by ticks that carry event time past every deadline."""
    lines = read_jsonl(DEMO)
    middle = (event_time_ms(lines[0]) + event_time_ms(lines[-1])) // 2
    first = [line for line in lines if (event_time_ms(line) or 0) < middle]
    second = [line for line in lines if (event_time_ms(line) or 0) >= middle] + ticks(lines)
    return middle, first, second


def test_outcomes_are_learnt_once_by_one_learner_per_model_across_restarts_and_a_crash(
    broker: Broker, redis_server: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    env = learning_env(broker, redis_server, tmp_path)
    settings = settings_of(env)
    middle, first, second = demo_halves()
    run(create_topics(settings))

    # --- first half: two workers at once ---------------------------------------------------------
    env_a, port_a = with_port(env)
    env_b, port_b = with_port(env)
    a, b = workers.start(env_a), workers.start(env_b)
    wait_learners_assigned(settings, a, b)
    run(produce(settings, first))
    run(wait_consumed(settings, workers))
    counts, models = run(wait_learnt(settings, workers))
    moments = sum(counts[m] for m in MOMENT_NAMES)
    assert moments > 50, f"the first half should label plenty of outcomes: {dict(counts)}"
    # Every example went to its moment's model and to the segmenter.
    assert counts[SEGMENTS] == moments
    assert all(version >= 1 for _, version in models.values())
    metrics = [scrape(port_a), scrape(port_b)]
    for m in metrics:
        assert m[("micromoments_model_snapshots_total", (("result", "conflict"),))] == 0
    # Each model is in one learner's hands at most, and its gauges report what is stored.
    owners: dict[str, list[float]] = {}
    for m in metrics:
        for name, value in gauge(m, "micromoments_model_examples").items():
            owners.setdefault(name, []).append(value)
    assert owners
    for name, values in owners.items():
        assert values == [float(models[name][0])], (name, values)
    # Both learners took part: the 7 models' keys fall in all 4 partitions, 2 for each learner.
    learnt_by_a, learnt_by_b = {m for m, _ in learning_log(a)}, {m for m, _ in learning_log(b)}
    assert learnt_by_a
    assert learnt_by_b
    assert not learnt_by_a & learnt_by_b, "a model learnt by both learners"
    assert sum(m[("micromoments_training_examples_total", (("label", "positive"), ("moment", n)))]
               + m[("micromoments_training_examples_total", (("label", "negative"), ("moment", n)))]
               for m in metrics for n in MOMENT_NAMES) == moments  # fmt: skip
    a.terminate()
    b.terminate()

    # --- second half: two new workers, one of them killed ----------------------------------------
    versions = {name: version for name, (_, version) in models.items()}
    warm = {name for name, (examples, _) in models.items() if examples >= MIN_EXAMPLES}
    env_c, port_c = with_port(env)
    # It never stores a snapshot on its own: all it learns dies with it.
    env_d, _ = with_port(env, MM_SNAPSHOT_EVERY="1000000", MM_SNAPSHOT_INTERVAL_S="3600")
    c, d = workers.start(env_c), workers.start(env_d)
    run(produce(settings, second))
    run(wait_for_records(settings.kafka_bootstrap, settings.topic_training, sum(counts.values()) + 20,
                         workers, TIMEOUT))  # fmt: skip
    d.kill()
    run(wait_consumed(settings, workers))
    total, models = run(wait_learnt(settings, workers))
    assert sum(total[m] for m in MOMENT_NAMES) > moments, "the second half labels outcomes too"
    # Resumed: learnt counts went on from the first half's snapshots, versions too.
    resumed = dict(learning_log(c))
    assert resumed, "the survivor learns"
    for name, version in resumed.items():
        assert version >= versions.get(name, 0), (name, version, versions)
    assert any(version > 0 for version in resumed.values())
    assert all(models[name][1] > versions.get(name, 0) for name in total if total[name] > counts[name])
    metrics_c = scrape(port_c)
    assert metrics_c[("micromoments_model_snapshots_total", (("result", "conflict"),))] == 0
    # The scorers took the new versions without a restart, and the models decided.
    scored = gauge(metrics_c, "micromoments_model_version")
    assert all(scored[name] >= 1 for name in versions), scored
    records = run(read_topic(broker.bootstrap, settings.topic_training))
    examples = [_examples.decode(r.value) for r in records if r.key == SEGMENTS.encode()]
    deciders = Counter(e.decided_by for e in examples)
    assert deciders["model"] > 0, deciders
    triggers = [orjson.loads(r.value) for r in run(read_topic(broker.bootstrap, settings.topic_triggers))]
    assert any(t["data"]["decided_by"] == "model" for t in triggers), "models decided some triggers"
    # A restarted worker scores with the stored models from its first batch: every trigger of
    # the second half carries a segment, and those of models warmed up in the first are theirs.
    after = [t for t in triggers if trigger_ms(t) >= middle]
    assert after
    assert all("segment" in t["data"] for t in after), "triggers carry the customer's segment"
    deciders_after = Counter((t["data"]["moment"], t["data"]["decided_by"]) for t in after)
    assert all(decider == "model" for (moment, decider) in deciders_after if moment in warm), deciders_after


def wait_metrics(port: int, workers: Workers, what: str, done: Callable[[Metrics], bool]) -> Metrics:
    """Scrape ``port`` until ``done`` says yes; the metrics then."""
    deadline = time.monotonic() + TIMEOUT
    metrics: Metrics = {}
    while True:
        workers.check_alive()
        with contextlib.suppress(OSError):  # not serving yet
            metrics = scrape(port)
            if done(metrics):
                return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen; last metrics: {sorted(metrics)[:20]}")
        time.sleep(0.5)


def wait_ready(port: int, workers: Workers) -> dict[str, Any]:
    """Until ``/readyz`` on ``port`` answers 200; its body then."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        workers.check_alive()
        # OSError: not serving yet, or 503 (not ready).
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response,
        ):
            body: dict[str, Any] = orjson.loads(response.read())
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz on port {port} did not answer 200")
        time.sleep(0.2)


def test_a_learner_process_learns_for_workers_that_only_score_and_stores_all_on_sigterm(
    broker: Broker, redis_server: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    env = learning_env(broker, redis_server, tmp_path)
    settings = settings_of(env)
    _, first, second = demo_halves()
    run(create_topics(settings))

    # --- first half: `micromoments learner` learns, the worker only scores ------------------------
    learner_env, learner_port = with_port(env)
    learner = workers.start(learner_env, "learner")
    # Ready: the training partitions are the learner's, and Redis answers.
    ready = wait_ready(learner_port, workers)
    assert ready["checks"]["partitions"]["detail"] == f"{PARTITIONS} assigned", ready
    assert ready["checks"]["store"]["ok"], ready
    worker_env, worker_port = with_port(env, MM_LEARNER="false")
    worker = workers.start(worker_env)
    run(produce(settings, first))
    run(wait_consumed(settings, workers))
    counts, models = run(wait_learnt(settings, workers))
    assert sum(counts[m] for m in MOMENT_NAMES) > 50, f"the first half should label outcomes: {dict(counts)}"
    assert all(version >= 1 for _, version in models.values())
    assert {m for m, _ in learning_log(learner)} == set(counts), "the learner learns every model"
    assert not learning_log(worker), "a worker with MM_LEARNER=false learns nothing"
    metrics = scrape(learner_port)
    assert gauge(metrics, "micromoments_model_examples") == {n: float(e) for n, (e, _) in models.items()}
    assert metrics[("micromoments_model_snapshots_total", (("result", "conflict"),))] == 0
    # The worker's scorers take the stored versions without a restart.
    wait_metrics(worker_port, workers, "scoring with the stored versions", lambda m: all(
        gauge(m, "micromoments_model_version").get(n, 0) >= v >= 1 for n, (_, v) in models.items()
    ))  # fmt: skip
    assert not gauge(scrape(worker_port), "micromoments_model_examples")
    assert learner.terminate() == 0

    # --- second half: a learner that stores only when stopped --------------------------------------
    lazy_env, lazy_port = with_port(env, MM_SNAPSHOT_EVERY="1000000", MM_SNAPSHOT_INTERVAL_S="3600")
    lazy = workers.start(lazy_env, "learner")
    run(produce(settings, second))
    run(wait_consumed(settings, workers))
    total = run(published(settings))
    grown = {name for name in total if total[name] > counts[name]}
    assert grown, "the second half labels outcomes too"
    wait_metrics(lazy_port, workers, "learning the second half", lambda m: all(
        gauge(m, "micromoments_model_examples").get(n) == total[n] for n in grown
    ))  # fmt: skip
    # It resumed every model from its stored version, and has stored nothing yet.
    versions = {name: version for name, (_, version) in models.items()}
    assert all(version == versions.get(name, 0) for name, version in learning_log(lazy)), learning_log(lazy)
    assert run(stored(settings)) == models
    assert lazy.terminate() == 0
    after = run(stored(settings))
    assert {name: examples for name, (examples, _) in after.items()} == dict(total)
    # One version more of each model that learnt: the snapshot stored on stopping.
    assert {name: version for name, (_, version) in after.items()} == {
        name: versions.get(name, 0) + (name in grown) for name in total
    }
    assert "stored what was learnt before stopping" in lazy.log.read_text(errors="replace")
    wait_metrics(worker_port, workers, "scoring with the versions stored on stopping", lambda m: all(
        gauge(m, "micromoments_model_version").get(n, 0) >= v for n, (_, v) in after.items()
    ))  # fmt: skip
