"""The engagement policy and the right to be forgotten, streaming: embedded broker, redis-server, workers.

- consent: who granted consent gets triggers, who revoked it stops getting them, who never
  granted it (or only for another purpose) gets none; held-out customers go to the holdout
  topic; the worker publishes exactly what replay gives on the same input;
- deferrals across a restart: triggers deferred by quiet hours are saved with the customer,
  the worker is stopped (SIGTERM, SIGKILL) before the night ends, a new worker takes over and
  publishes each, once the night is over, with its original id and bytes;
- forget: a request erases everything held about the customer (state, cart, consent,
  cooldowns, deferred triggers, deadlines), and a confirmation follows; a scan of every Redis
  key and value finds no trace of the customer. ``micromoments forget --direct`` likewise;
- logs: at the default log level a worker's log names no customer it processed.

The consent and deferral tests compare bytes with replay, so they run with learning off: a
trigger's micro-segment depends on the order the worker's streams interleave in. The forget
test runs the shipped configuration as it is, learning's pending outcomes included.
"""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import (
    PSEUDONYM_KEY,
    TIMEOUT,
    WorkerProcess,
    Workers,
    assert_same_triggers,
    by_stream,
    create_topics,
    isolated_env,
    partition_of,
    produce,
    read_jsonl,
    read_topic,
    redis_mentions,
    reordered,
    run,
    run_cli,
    settings_of,
    ticks,
    trigger_id,
    wait_consumed,
    wait_for_records,
    write_jsonl,
)
from helpers import T0, ms, raw

from app import cli
from app.config import Catalogue, load_catalogue
from app.confirmations import CONFIRMATION_TYPE
from app.embedded import Broker, EmbeddedRedis, EmbeddedRedisCluster
from app.learning.config import MOMENT_NAMES
from app.policy import Policy
from app.privacy import request_forget
from app.state.redis import RedisStateStore
from app.triggers import format_time
from app.worker.agent import stream_of
from app.worker.learning import FORGET_HEADER

# Distinctive customer ids, so that finding one in a log or in Redis means what it says.
RUN = uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped configuration, policy as it is (consent required, quiet hours, holdouts), learning off."""
    path = tmp_path_factory.mktemp("config") / "policy.toml"
    learning = "[learning]\nenabled = false\n" if "learning" in Catalogue.__struct_fields__ else ""
    path.write_text(f"# The policy as shipped; no learning.\n{learning}")
    return path


@pytest.fixture(scope="module")
def policy(config: Path) -> Policy:
    return Policy(load_catalogue(config).policy)


def customer(name: str, moment: str, policy: Policy, *, held_out: bool = False) -> str:
    """A customer id ``<name>-<run>-<n>`` that is (or, by default, is not) held out of ``moment``."""
    for n in itertools.count():
        candidate = f"{name}-{RUN}-{n}"
        if policy.held_out(moment, candidate) == held_out:
            return candidate
    raise AssertionError("unreachable")


def consent(who: str, offset: str, status: str = "granted", **fields: Any) -> dict[str, Any]:
    return raw(
        "consent", offset, customer=who, status=status, purpose=fields.pop("purpose", "marketing"), **fields
    )


def store_visit(who: str, offset: str, **fields: Any) -> dict[str, Any]:
    """A store locator view: a local-intent trigger on its own (score 0.7)."""
    return raw("store_locator_view", offset, customer=who, page="/stores", **fields)


def in_time_order(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in sorted(events, key=lambda e: e["occurred_at"])]


def customers_of(lines: list[bytes]) -> set[str]:
    return {orjson.loads(line)["customer_id"] for line in lines}


def subjects(values: list[bytes]) -> Counter[str]:
    return Counter(orjson.loads(v)["subject"] for v in values)


def replay_both(lines: list[bytes], directory: Path, config: Path) -> tuple[list[bytes], list[bytes]]:
    """``micromoments replay`` of ``lines``: the triggers, and the held-out detections."""
    path = write_jsonl(directory / "input.jsonl", lines)
    out, held = directory / "triggers.jsonl", directory / "holdout.jsonl"
    argv = ["replay", str(path), "--config", str(config), "--out", str(out), "--holdout", str(held)]
    assert cli.main([*argv, "--quiet"]) == 0
    return read_jsonl(out), read_jsonl(held)


def assert_log_names_none_of(worker: WorkerProcess, customers: set[str]) -> str:
    """The worker's log (stopped first, so that it is complete) mentions none of ``customers``."""
    worker.terminate()
    text = worker.log.read_text(errors="replace")
    assert "Traceback" not in text, worker.tail()
    named = sorted(c for c in customers if c in text)
    assert not named, f"the worker's log names customers: {named}"
    return text


# --- consent -----------------------------------------------------------------------------------


def test_consent_events_decide_who_gets_triggers(
    broker: Broker,
    redis_server: EmbeddedRedis,
    workers: Workers,
    tmp_path: Path,
    config: Path,
    policy: Policy,
) -> None:
    moment = "local_intent"
    granted = customer("granted", moment, policy)
    revoked = customer("revoked", moment, policy)
    never = customer("never", moment, policy)
    elsewhere = customer("other-purpose", moment, policy)
    held = customer("held", moment, policy, held_out=True)
    events = [
        consent(granted, "0s"),
        consent(revoked, "0s"),
        consent(held, "0s"),
        consent(elsewhere, "0s", purpose="analytics"),
        # A store visit each a minute later, and another after the moment's 2 h cooldown.
        *(store_visit(c, "1m") for c in (granted, revoked, never, elsewhere, held)),
        consent(revoked, "2h", "revoked"),
        *(store_visit(c, "3h") for c in (granted, revoked, never, elsewhere, held)),
    ]
    lines = in_time_order(events)
    lines += ticks(lines)
    env = isolated_env(broker, redis_server, "consent", MM_MOMENTS_CONFIG=str(config))
    settings = settings_of(env)
    assert reordered(lines, settings) is None, "the worker must see the file's order"
    expected, expected_held = replay_both(lines, tmp_path, config)

    run(create_topics(settings))
    run(produce(settings, lines))
    worker = workers.start(env)
    run(wait_consumed(settings, workers))
    triggers = [r.value for r in run(read_topic(broker.bootstrap, settings.topic_triggers))]
    holdout = [r.value for r in run(read_topic(broker.bootstrap, settings.topic_holdout))]

    assert subjects(triggers) == {granted: 2, revoked: 1}
    assert subjects(holdout) == {held: 2}, "held out, but recorded: consent was granted"
    assert_same_triggers(triggers, expected)
    assert_same_triggers(holdout, expected_held)
    assert_log_names_none_of(worker, customers_of(lines))


# --- deferrals across a restart ----------------------------------------------------------------


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_deferred_triggers_survive_a_restart(
    stop: str,
    broker: Broker,
    redis_server: EmbeddedRedis,
    workers: Workers,
    tmp_path: Path,
    config: Path,
    policy: Policy,
) -> None:
    # T0 is 10:00 UTC; quiet hours are 21:00-08:00 in the customer's time zone (UTC by default).
    cart = customer("night-cart", "cart_abandonment", policy)  # abandoned at 21:40: kept until 08:00
    howto = customer("night-howto", "post_purchase_howto", policy)  # at 21:30: kept until 08:00
    tokyo = customer("night-tokyo", "local_intent", policy)  # 22:40 UTC is 07:40 in Tokyo: until 08:00
    expiring = customer("night-expiring", "local_intent", policy)  # 22:00; its 2 h are over by 08:00
    evening = customer("evening", "local_intent", policy)  # 20:30: published at once
    events = [
        *(consent(c, "9h") for c in (cart, howto, expiring, evening)),
        consent(tokyo, "9h", timezone="Asia/Tokyo"),
        raw("purchase", "10h", customer=howto, order_id="o1", items=[{"product_id": "kettle-1"}]),
        store_visit(evening, "10h30m"),
        raw("product_view", "11h", customer=cart, product_id="tv-1", category="tv", price=300.0),
        raw("add_to_cart", "11h10m", customer=cart, product_id="tv-1", category="tv", price=300.0),
        raw("search", "11h30m", customer=howto, query="how to set up the kettle"),
        store_visit(expiring, "12h"),
        store_visit(tokyo, "12h40m", timezone="Asia/Tokyo"),
    ]
    night = in_time_order(events)
    # Every partition's clock to 22:45 UTC: the cart's deadline passes, no quiet period ends.
    night += ticks(night, after=timedelta(minutes=5), tag="dusk")
    # A day later: every quiet period is over.
    morning = ticks(night, tag="dawn")
    expected, _ = replay_both(night + morning, tmp_path, config)
    deferred = {cart, howto, tokyo}
    assert subjects(expected) == dict.fromkeys([*deferred, evening], 1), "the scenario as intended"

    env = isolated_env(broker, redis_server, f"defer-{stop}", MM_MOMENTS_CONFIG=str(config))
    settings = settings_of(env)
    assert reordered(night + morning, settings) is None
    run(create_topics(settings))
    run(produce(settings, night))
    first = workers.start(env)
    run(wait_consumed(settings, workers))
    before = [r.value for r in run(read_topic(broker.bootstrap, settings.topic_triggers))]
    assert subjects(before) == {evening: 1}, "the others wait for the end of the night"

    # Saved with the customers: the deferred triggers, and deadlines at the end of each one's night.
    store = RedisStateStore.from_url(
        redis_server.url, prefix=settings.redis_prefix, pseudonym_key=PSEUDONYM_KEY.encode()
    )

    async def saved() -> tuple[dict[str, int], dict[str, int]]:
        try:
            states = await store.load(by_stream([*deferred, expiring]))
            waiting = {c: len(v.state.deferred) for c, v in states.items()}
            deadlines = {}
            for c in [*deferred, expiring]:
                stream = await store.deadlines(stream_of(partition_of(c.encode())))
                deadlines[c] = stream.get(c, -1)
            return waiting, deadlines
        finally:
            await store.close()

    waiting, deadlines = run(saved())
    assert waiting == dict.fromkeys([*deferred, expiring], 1)
    eight_am = T0 + ms("22h")
    assert deadlines == {cart: eight_am, howto: eight_am, expiring: eight_am, tokyo: T0 + ms("13h")}

    if stop == "sigkill":
        first.kill()
    else:
        assert first.terminate() == 0, "a graceful stop exits 0"

    workers.start(env)
    run(produce(settings, morning))
    run(wait_consumed(settings, workers))
    records = [r.value for r in run(read_topic(broker.bootstrap, settings.topic_triggers))]

    # Each exactly once, with replay's bytes (the same id, the evening's detection time).
    assert_same_triggers(records, expected)
    released = list((Counter(records) - Counter(before)).elements())
    assert subjects(released) == dict.fromkeys(deferred, 1), "published by the new worker"
    for value in released:
        # Detected in the evening, published in the morning: the detection's time and id.
        assert orjson.loads(value)["time"] < format_time(T0 + ms("13h"))
    assert {trigger_id(v) for v in records} == {trigger_id(v) for v in expected}


# --- forget ------------------------------------------------------------------------------------


def shopping(who: str, zone: str) -> list[dict[str, Any]]:
    """Consent, browsing, a search, a store visit (a trigger deferred by the night in ``zone``), a cart."""
    return [
        consent(who, "0s", timezone=zone),
        raw("product_view", "1m", customer=who, product_id="tv-1", category="tv", price=499.0, timezone=zone),
        raw("search", "2m", customer=who, query="cheap tv deals", timezone=zone),
        raw("product_view", "3m", customer=who, product_id="tv-2", category="tv", price=399.0, timezone=zone),
        raw("product_view", "4m", customer=who, product_id="tv-3", category="tv", price=299.0, timezone=zone),
        store_visit(who, "5m", timezone=zone),
        raw("add_to_cart", "6m", customer=who, product_id="tv-3", category="tv", price=299.0, timezone=zone),
    ]


def redacted(who: str) -> str:
    return "c#" + hashlib.sha256(who.encode()).hexdigest()[:8]


def derivable(who: str) -> list[str]:
    """The id, and what anyone can derive from it without a secret: its SHA-256 (the hashed ids of
    triggers, with the default empty salt; the do-not-contact lists), and the log pseudonym."""
    digest = hashlib.sha256(who.encode()).hexdigest()
    return [who, digest, digest.upper(), digest[:8]]


@pytest.fixture
def scanned_redis(
    each_redis: EmbeddedRedis | EmbeddedRedisCluster,
) -> Iterator[EmbeddedRedis | EmbeddedRedisCluster]:
    """``each_redis``, but one Redis of the test's own: the test reads every key there is, and the
    session's server holds every earlier test's (a scan of them took 40 s)."""
    if isinstance(each_redis, EmbeddedRedisCluster):
        yield each_redis
        return
    with EmbeddedRedis() as server:
        yield server


def test_forget_erases_the_customer_from_redis(
    broker: Broker,
    scanned_redis: EmbeddedRedis | EmbeddedRedisCluster,
    workers: Workers,
    tmp_path: Path,
) -> None:
    shipped = Policy(load_catalogue().policy)
    # 10:00 UTC is 23:00 in Auckland: the store visit's trigger waits for the morning.
    zone = "Pacific/Auckland"
    forgotten = customer("forget-me", "local_intent", shipped)
    direct = customer("erase-now", "local_intent", shipped)
    bystander = customer("bystander", "local_intent", shipped)
    lines = in_time_order([e for who in (forgotten, direct, bystander) for e in shopping(who, zone)])
    # An hour on, as others shop: the outcomes the models learn from are known (not the morning).
    lines += ticks(lines, after=timedelta(hours=1))
    # The shipped configuration, learning included (examples on the training topic, models in
    # Redis), at the default log level.
    model_key = "test-model-key-of-at-least-32-characters"
    env = isolated_env(broker, scanned_redis, "forget", MM_MODEL_KEY=model_key)
    env.pop("MM_MOMENTS_CONFIG", None)
    del env["MM_LOG_LEVEL"]
    settings = settings_of(env)
    assert settings.log_level == "info"
    run(create_topics(settings))
    run(produce(settings, lines))
    worker = workers.start(env)
    run(wait_consumed(settings, workers))

    # Held before: the state (cart, consent, cooldown, a deferred trigger) and a deadline.
    store = RedisStateStore.from_url(
        scanned_redis.url, prefix=settings.redis_prefix, pseudonym_key=PSEUDONYM_KEY.encode()
    )

    async def load() -> dict[str, Any]:
        try:
            loaded = await store.load(by_stream([forgotten, direct, bystander]))
            return {c: v.state for c, v in loaded.items()}
        finally:
            await store.close()

    states = run(load())
    assert set(states) == {forgotten, direct, bystander}
    for state in states.values():
        assert state.cart is not None
        assert state.consent
        assert state.cooldowns
        assert state.deferred
        assert state.entries
    prefix = settings.redis_prefix
    for who in (forgotten, direct, bystander):
        where = run(redis_mentions(scanned_redis.url, who))
        stream = stream_of(partition_of(who.encode()))
        assert f"string value of {store.state_key(who, stream)}" in where
        assert f"zset value of {prefix}:deadlines:{{{stream}}}" in where

    event_id = run(request_forget(settings, forgotten, request_id="ticket-42"))
    run(wait_for_records(broker.bootstrap, settings.topic_confirmations, 1, workers, TIMEOUT))
    [record] = run(read_topic(broker.bootstrap, settings.topic_confirmations))
    confirmation = orjson.loads(record.value)
    assert record.key == forgotten.encode()
    assert confirmation["type"] == CONFIRMATION_TYPE
    assert confirmation["subject"] == forgotten
    assert confirmation["data"]["request_event_id"] == event_id
    assert confirmation["data"]["request_id"] == "ticket-42"
    assert {"window", "cart", "consent", "cooldowns", "deferred_triggers", "deadlines"} <= set(
        confirmation["data"]["erased"]
    )

    # Confirmed once erased: nothing about the customer anywhere in Redis (states, streams, the
    # models' snapshots), names or values, in any form derivable from the id without the
    # deployment's secret.
    for form in derivable(forgotten):
        assert run(redis_mentions(scanned_redis.url, form)) == [], form
    assert run(redis_mentions(scanned_redis.url, bystander)), "others are left alone"
    # Nor in the training topic as the learners read it: examples name customers by their keyed
    # pseudonym only, without times; and a tombstone per model tells the learners to drop the
    # forgotten customer's examples.
    training = run(read_topic(broker.bootstrap, settings.topic_training))
    assert any(FORGET_HEADER not in r.headers for r in training), "examples were published"
    for record in training:
        assert not any(form.encode() in record.value for form in derivable(forgotten))
    tombstones = {r.key.decode() for r in training if FORGET_HEADER in r.headers}
    assert tombstones == {*MOMENT_NAMES, "segments"}

    # `micromoments forget --direct`: erased from Redis at once, without the worker.
    assert run(redis_mentions(scanned_redis.url, direct))
    assert run_cli(env, "forget", direct, "--direct").stdout.strip() == "erased"
    assert run(redis_mentions(scanned_redis.url, direct)) == []
    again = run_cli(env, "forget", direct, "--direct").stdout.strip()
    assert again == "nothing was held about that customer"
    assert run(redis_mentions(scanned_redis.url, bystander))

    # The erasure is logged, naming the customer by a pseudonym only.
    line = f"customer {redacted(forgotten)} forgotten"
    deadline = time.monotonic() + 30
    while line not in worker.log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.2)
    text = assert_log_names_none_of(worker, customers_of(lines))
    assert line in text
    assert event_id in text
