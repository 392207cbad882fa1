"""The streaming worker end to end: embedded broker, redis-server, ``micromoments worker`` subprocesses.

Each test has its own topics, consumer group and Redis prefix, and so its own
worker(s). A worker is done with its input once the group's committed offsets
reach the end of every input partition (the repartition topic included): it
publishes a fetch's triggers and waits for the broker's acks before it
commits, so every trigger is on the topic by then. That is what the tests wait
for, rather than for a number of triggers or some time.

Replay flushes pending cart deadlines when its input ends; the worker cannot
know that the input ended. So the inputs of both get :func:`harness.ticks`
appended: a few events per partition an hour after the last event, which fire
every pending deadline in both; the comparisons then cover every trigger.

Replay runs its input as one stream; the worker runs one stream per partition.
The demo day, the scenario files and the unkeyed demo day are compared with
replay of the very same input, byte for byte. The restart tests compare ids
with replay, and bytes with replay of each partition on its own (what an
uninterrupted worker publishes), so that they test recovery, not that equivalence.
"""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import (
    PARTITIONS,
    ROOT,
    TIMEOUT,
    Replayed,
    Workers,
    assert_same_triggers,
    backlog,
    create_topics,
    event_time_ms,
    isolated_env,
    partition_of,
    produce,
    read_jsonl,
    read_topic,
    reordered,
    replay,
    replay_per_partition,
    run,
    settings_of,
    ticks,
    trigger_id,
    wait_consumed,
    wait_for_records,
    write_jsonl,
)
from helpers import ms, raw

from app.config import load_catalogue
from app.decoding import MAX_EVENT_BYTES
from app.embedded import Broker, EmbeddedRedis
from app.traffic import TrafficGenerator
from app.triggers import CONTENT_TYPE
from app.worker.datadir import ROOT_NAME

DEMO = ROOT / "fixtures" / "demo" / "day.jsonl"
# The detection scenarios, with the engagement policy set aside as their goldens are.
SCENARIOS = sorted(
    p for p in (ROOT / "fixtures" / "scenarios").glob("*.jsonl") if not p.name.startswith("policy.")
)
DETECTION_ONLY = ROOT / "fixtures" / "scenarios" / "detection-only.toml"


def assert_triggers_as_published(records: list[Any]) -> None:
    """Keyed by customer, with the CloudEvents content type."""
    for record in records:
        assert record.key == orjson.loads(record.value)["subject"].encode()
        assert ("content-type", CONTENT_TYPE.encode()) in list(record.headers)


def stream_through_worker(
    broker: Broker,
    redis: EmbeddedRedis,
    workers: Workers,
    name: str,
    lines: list[bytes],
    **produce_options: Any,
) -> tuple[list[Any], dict[str, str]]:
    """Produce ``lines``, run one worker until it has consumed them; the trigger records and the env."""
    env = isolated_env(broker, redis, name)
    settings = settings_of(env)
    run(create_topics(settings))
    run(produce(settings, lines, **produce_options))
    workers.start(env)
    run(wait_consumed(settings, workers))
    return run(read_topic(broker.bootstrap, settings.topic_triggers)), env


# --- parity with replay ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], Replayed]:
    """The demo day with ticks, and what replay makes of it."""
    directory = tmp_path_factory.mktemp("demo")
    lines = read_jsonl(DEMO)
    lines += ticks(lines)
    expected = replay(write_jsonl(directory / "demo.jsonl", lines), directory)
    assert not expected.problems
    assert len(expected.triggers) > 100, "the demo day should give plenty of triggers"
    return lines, expected


def test_demo_day_gives_replays_triggers(
    demo: tuple[list[bytes], Replayed], each_broker: Broker, redis_server: EmbeddedRedis, workers: Workers
) -> None:
    lines, expected = demo
    records, _ = stream_through_worker(each_broker, redis_server, workers, "demo", lines)
    assert_same_triggers([r.value for r in records], expected.triggers)
    assert_triggers_as_published(records)
    moments = Counter(orjson.loads(t)["data"]["moment"] for t in expected.triggers)
    assert moments["cart_abandonment"] > 0, "the ticks' deadlines are part of the comparison"


def test_an_idle_worker_commits_what_it_processed_whatever_the_interval(
    demo: tuple[list[bytes], Replayed], broker: Broker, redis_server: EmbeddedRedis, workers: Workers
) -> None:
    # A minute between commits under load; small batches, so the input takes many. Once the
    # worker has nothing new, its offsets are committed: the group shows no lag within seconds.
    lines, _ = demo
    env = isolated_env(broker, redis_server, "idle", MM_KAFKA_COMMIT_INTERVAL_MS="60000", MM_BATCH_MAX="100")
    settings = settings_of(env)
    run(create_topics(settings))
    run(produce(settings, lines))
    workers.start(env)
    run(wait_consumed(settings, workers, within=30))


def test_reordered_inputs_are_recognised() -> None:
    settings = settings_of({"MM_PARTITIONS": str(PARTITIONS)})
    search, view = raw("search", "1m", query="tv"), raw("page_view", "0s")
    assert reordered([orjson.dumps(view), orjson.dumps(search)], settings) is None
    # Two topics: the worker takes the earlier event first.
    assert "line 2 would be processed before line 1" in str(
        reordered([orjson.dumps(search), orjson.dumps(view)], settings)
    )
    # One topic keeps its order, whatever the timestamps.
    late = raw("page_view", -300_000)
    assert reordered([orjson.dumps(view), orjson.dumps(late)], settings) is None
    # Ties go in topic order, clickstream before search, in the worker and in replay alike.
    tie = raw("page_view", "1m")
    assert reordered([orjson.dumps(tie), orjson.dumps(search)], settings) is None
    assert reordered([orjson.dumps(search), orjson.dumps(tie)], settings) is None


# --- scenario fixtures -------------------------------------------------------------------------
#
# A worker per scenario file would cost seconds each. Instead one worker runs them all, each
# scenario alone on a partition of its own: its customers are renamed (``<id>.s<n>.<k>``) so
# that they all hash to partition n. Each partition is a stream with its own clock, so the
# worker treats every scenario exactly as it would alone; replay gets the same renamed lines.

SCENARIO_PARTITIONS = max(PARTITIONS, len(SCENARIOS))


@dataclass
class Scenario:
    skip: str | None = None
    lines: list[bytes] = field(default_factory=list)
    expected: list[bytes] = field(default_factory=list)
    customers: set[str] = field(default_factory=set)


def isolate(lines: list[bytes], partition: int, partitions: int) -> tuple[list[bytes], set[str]]:
    """``lines`` with every customer renamed to one that hashes to ``partition``."""
    names: dict[str, str] = {}
    out = []
    for line in lines:
        fields = orjson.loads(line)
        customer = fields["customer_id"]
        if customer not in names:
            candidates = (f"{customer}.s{partition}.{n}" for n in itertools.count())
            names[customer] = next(c for c in candidates if partition_of(c.encode(), partitions) == partition)
        fields["customer_id"] = names[customer]
        out.append(orjson.dumps(fields))
    return out, set(names.values())


@dataclass
class ScenarioRun:
    scenarios: dict[str, Scenario]
    triggers: list[Any]


@pytest.fixture(scope="module")
def scenario_run(
    broker: Broker, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScenarioRun]:
    directory = tmp_path_factory.mktemp("scenarios")
    env = isolated_env(
        broker,
        redis_server,
        "scenarios",
        MM_PARTITIONS=str(SCENARIO_PARTITIONS),
        MM_MOMENTS_CONFIG=str(DETECTION_ONLY),
    )
    settings = settings_of(env)
    scenarios: dict[str, Scenario] = {}
    for partition, path in enumerate(SCENARIOS):
        # Late events are dead-lettered by the worker as replay reports them; bad lines, too
        # far ahead, are decided only at replay's end of input: the DLQ test covers those.
        problems = [p for p in replay(path, directory, DETECTION_ONLY).problems if p["reason"] != "late"]
        if problems:
            scenarios[path.stem] = Scenario(
                skip=f"replay rejects {len(problems)} line(s); the DLQ test covers bad input"
            )
            continue
        lines, customers = isolate(read_jsonl(path), partition, SCENARIO_PARTITIONS)
        lines += ticks(lines, [partition], SCENARIO_PARTITIONS)
        why = reordered(lines, settings)
        if why:
            scenarios[path.stem] = Scenario(skip=why)
            continue
        expected = replay(
            write_jsonl(directory / f"{path.stem}.isolated.jsonl", lines), directory, DETECTION_ONLY
        )
        assert all(p["reason"] == "late" for p in expected.problems)
        scenarios[path.stem] = Scenario(None, lines, expected.triggers, customers)

    workers = Workers(directory)
    try:
        run(create_topics(settings))
        for partition, path in enumerate(SCENARIOS):
            scenario = scenarios[path.stem]
            if scenario.skip is None:
                sent = run(produce(settings, scenario.lines))
                assert {p for _, p, _ in sent} == {partition}, "each scenario on a partition of its own"
        workers.start(env)
        run(wait_consumed(settings, workers))
        triggers = run(read_topic(broker.bootstrap, settings.topic_triggers))
        assert_triggers_as_published(triggers)
        customers = {c for scenario in scenarios.values() for c in scenario.customers}
        assert {r.key.decode() for r in triggers} <= customers, "triggers for nobody's customers"
        yield ScenarioRun(scenarios, triggers)
    finally:
        workers.close()


@pytest.mark.parametrize("name", [p.stem for p in SCENARIOS])
def test_scenario_gives_replays_triggers(name: str, scenario_run: ScenarioRun) -> None:
    scenario = scenario_run.scenarios[name]
    if scenario.skip:
        pytest.skip(scenario.skip)
    got = [r.value for r in scenario_run.triggers if r.key.decode() in scenario.customers]
    assert_same_triggers(got, scenario.expected)


# --- dead letters ------------------------------------------------------------------------------

TRACE = ("x-trace", b"trace-42")
FAR = load_catalogue().window.max_future_skew + ms("1d")


@dataclass
class Bad:
    line: bytes
    reason: str


def dead_letter_input() -> tuple[list[bytes], dict[int, str]]:
    """Valid events around one bad line of each kind; the expected reason per bad line's index.

    Customer A's events are all clickstream events, so their order does not depend on alignment.
    """
    a, b = "dlq-cust-a", "dlq-cust-b"
    search = raw("search", "2m", customer=b, query="best running shoes")
    before = [
        raw("product_view", "0s", customer=a, product_id="p1", category="tv", price=499.0),
        raw("review_view", "1m", customer=a, product_id="p1", category="tv"),
        search,
    ]
    bad = [
        Bad(b'{"event_id": "bad-1", "customer_id": ', "not_json"),
        Bad(
            orjson.dumps({k: v for k, v in search.items() if k != "customer_id"} | {"event_id": "bad-2"}),
            "missing_field",
        ),
        Bad(orjson.dumps(search | {"event_id": "bad-3", "customer_id": 42}), "wrong_type"),
        Bad(orjson.dumps(search | {"event_id": "bad-4", "event_type": "teleport"}), "unknown_event_type"),
        Bad(orjson.dumps(search | {"event_id": "bad-5", "padding": "x" * MAX_EVENT_BYTES}), "too_large"),
        # A day more than allowed ahead of customer A's stream (its partition's clock is near 0s).
        Bad(orjson.dumps(raw("page_view", FAR, customer=a, event_id="bad-6")), "timestamp_out_of_range"),
    ]
    after = [
        raw("store_locator_view", "5m", customer=a),
        raw("search", "6m", customer=b, query="running shoes near me"),
    ]
    lines = [orjson.dumps(e) for e in before] + [x.line for x in bad] + [orjson.dumps(e) for e in after]
    return lines, {len(before) + i: x.reason for i, x in enumerate(bad)}


def test_dead_letters(
    each_broker: Broker, redis_server: EmbeddedRedis, workers: Workers, tmp_path: Path
) -> None:
    broker = each_broker
    lines, reasons = dead_letter_input()
    expected = replay(write_jsonl(tmp_path / "input.jsonl", lines), tmp_path, DETECTION_ONLY)
    # Replay rejects the same lines for the same reasons (its line numbers count from 1).
    assert {p["line"] - 1: p["reason"] for p in expected.problems} == reasons
    assert max(len(line) for line in lines) > MAX_EVENT_BYTES

    env = isolated_env(broker, redis_server, "dlq", MM_MOMENTS_CONFIG=str(DETECTION_ONLY))
    settings = settings_of(env)
    run(create_topics(settings))
    sent = run(produce(settings, lines, headers=[TRACE]))
    workers.start(env)
    run(wait_consumed(settings, workers))
    dead = run(read_topic(broker.bootstrap, settings.topic_dlq))
    triggers = run(read_topic(broker.bootstrap, settings.topic_triggers))

    where = {(topic, partition, offset): i for i, (topic, partition, offset) in enumerate(sent)}
    found: dict[int, str] = {}
    for record in dead:
        headers = dict(record.headers)
        source = (
            headers["mm.dlq.topic"].decode(),
            int(headers["mm.dlq.partition"]),
            int(headers["mm.dlq.offset"]),
        )
        assert source in where, f"DLQ record points at nothing produced: {source}"
        index = where[source]
        found[index] = headers["mm.dlq.reason"].decode()
        original = lines[index]
        assert record.value == original, "the original bytes"
        try:
            customer = orjson.loads(original).get("customer_id")
        except orjson.JSONDecodeError:
            customer = None
        assert record.key == (customer.encode() if isinstance(customer, str) else None), "the original key"
        assert headers["mm.dlq.detail"], "a detail says what is wrong"
        assert headers[TRACE[0]] == TRACE[1], "the original headers are kept"
        if (ts := event_time_ms(original)) is not None:
            assert record.timestamp == ts, "the original timestamp"
    assert found == reasons
    assert len(dead) == len(reasons), "one dead letter each"

    # The valid events around the bad ones, those after them included, went through.
    assert_same_triggers([r.value for r in triggers], expected.triggers)
    assert_triggers_as_published(triggers)
    moments = {(orjson.loads(t)["subject"], orjson.loads(t)["data"]["moment"]) for t in expected.triggers}
    assert {("dlq-cust-a", "local_intent"), ("dlq-cust-b", "local_intent")} <= moments


# --- repartition -------------------------------------------------------------------------------


def unkeyed(fields: dict[str, Any] | None, line: bytes) -> tuple[bytes | None, int | None]:
    """No key, and all on partition 0: a producer that knows nothing of customers."""
    return None, 0


def test_unkeyed_events_are_repartitioned(
    demo: tuple[list[bytes], Replayed], broker: Broker, redis_server: EmbeddedRedis, workers: Workers
) -> None:
    lines, expected = demo
    records, env = stream_through_worker(broker, redis_server, workers, "repartition", lines, key=unkeyed)
    assert_same_triggers([r.value for r in records], expected.triggers)
    assert_triggers_as_published(records)

    # Every event went through the repartition topic, keyed by customer, on its customer's partition.
    settings = settings_of(env)
    rekeyed = run(read_topic(broker.bootstrap, settings.topic_repartition))
    assert sorted(r.value for r in rekeyed) == sorted(lines)
    for record in rekeyed:
        customer = orjson.loads(record.value)["customer_id"].encode()
        assert record.key == customer
        assert record.partition == partition_of(customer)
        assert record.timestamp == event_time_ms(record.value)
        assert dict(record.headers)["mm.source.topic"].decode() in settings.input_topics


# --- restarts ----------------------------------------------------------------------------------

BIG_EVENTS = 40_000


@dataclass
class Big:
    lines: list[bytes]
    # The replay of the whole input, and the triggers of replaying each partition on its own.
    expected: Replayed
    per_partition: list[bytes]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Big:
    """A generated stream of 2,000 customers over several hours of event time, with ticks."""
    directory = tmp_path_factory.mktemp("big")
    generator = TrafficGenerator(seed=20261125, customers=2000, events_per_second=2.0)
    lines = [orjson.dumps(event) for event in generator.events(count=BIG_EVENTS)]
    lines += ticks(lines)
    expected = replay(write_jsonl(directory / "big.jsonl", lines), directory)
    assert not expected.problems
    per_partition = replay_per_partition(lines, directory)
    assert {trigger_id(t) for t in per_partition} == expected.ids()
    return Big(lines, expected, per_partition)


@pytest.mark.parametrize("stop", ["sigkill", "sigterm"])
def test_restart_loses_no_trigger(
    stop: str,
    big: Big,
    broker: Broker,
    redis_server: EmbeddedRedis,
    workers: Workers,
) -> None:
    lines, expected = big.lines, big.expected
    # Smaller fetches: more batches, so the stop lands amid the work.
    env = isolated_env(broker, redis_server, f"restart-{stop}", MM_BATCH_MAX="1000")
    settings = settings_of(env)
    run(create_topics(settings))
    run(produce(settings, lines))

    first = workers.start(env)
    # Stop it once some triggers are out, well before the end.
    run(
        wait_for_records(
            broker.bootstrap, settings.topic_triggers, len(expected.triggers) // 8, workers, TIMEOUT
        )
    )
    datadir = Path(tempfile.gettempdir()) / ROOT_NAME / str(first.process.pid)
    assert datadir.is_dir(), "each worker has a data directory of its own"
    if stop == "sigkill":
        first.kill()
    else:
        assert first.terminate() == 0, "a graceful stop exits 0"
        assert not datadir.exists(), "a worker that stops removes its data directory"
    left = run(backlog(settings))
    assert left, "the first worker had consumed everything before it was stopped: nothing was tested"
    before = len(run(read_topic(broker.bootstrap, settings.topic_triggers)))

    workers.start(env)
    run(wait_consumed(settings, workers))
    assert not datadir.exists(), "the next worker to start removes a killed worker's data directory"
    records = run(read_topic(broker.bootstrap, settings.topic_triggers))

    copies: dict[str, set[bytes]] = defaultdict(set)
    for record in records:
        copies[trigger_id(record.value)].add(record.value)
    differing = {i: v for i, v in copies.items() if len(v) > 1}
    assert not differing, "a repeated trigger id must come with the same bytes"
    missing = expected.ids() - copies.keys()
    extra = copies.keys() - expected.ids()
    assert not missing, f"{len(missing)} trigger(s) lost"
    assert not extra, f"{len(extra)} trigger(s) replay does not give"
    # Byte for byte what an uninterrupted worker publishes: replay of each partition's stream.
    assert_same_triggers([v for values in copies.values() for v in values], big.per_partition)
    assert_triggers_as_published(records)
    repeated = len(records) - len(copies)
    # At least once: the batch in hand when the worker stopped may be published again (a
    # graceful stop cancels it too), always with the same bytes. Shown with -s.
    print(
        f"{stop}: {before} triggers before the stop, {sum(left.values())} records left;"
        f" {len(records)} triggers in all, {repeated} repeated"
    )
