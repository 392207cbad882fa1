"""Fault injection against real workers, compared with replay of the same input.

A chaos run pre-produces realistic shop traffic — with whatever bad input the run
mixes in: malformed records of every kind, events from devices whose clocks are
wrong, records planted to make the core raise, junk that makes one topic slow to
fetch — to a real broker, runs ``micromoments worker`` processes against a real
``redis-server``, and injects faults while they work: SIGKILLs of workers at
random instants (during start-up, a rebalance and processing), Redis paused
(SIGSTOP) or killed and restarted. Once the group has committed everything, it
compares what the workers published with what ``micromoments replay`` makes of
the same input: triggers lost, extra, duplicated (at least once: a batch redone
after a kill publishes again, same ids), and ids whose bytes differ; dead letters
by reason, each record once.

``tests/integration/test_chaos.py`` runs short versions and asserts that nothing
is lost or unexpected; ``bench/chaos.py`` runs them at full size and prints the
reports.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from faults import DETECTION, POLICY, RENDERING, planted
from harness import (
    PARTITIONS,
    Replayed,
    WorkerProcess,
    Workers,
    backlog,
    create_topics,
    isolated_env,
    partition_of,
    produce,
    read_topic,
    replay,
    run,
    settings_of,
    ticks,
    trigger_id,
    wait_consumed,
    write_jsonl,
)
from redis.crc import key_slot

from app.apache_kafka import ApacheKafka
from app.decoding import MAX_EVENT_BYTES
from app.embedded import Broker, EmbeddedRedis, EmbeddedRedisCluster
from app.settings import Settings
from app.traffic import TrafficGenerator
from app.triggers import format_time
from app.worker.agent import stream_of

# --- input ---------------------------------------------------------------------------------------


def shop(events: int, customers: int, seed: int, days: float = 3.0) -> list[bytes]:
    """``events`` of realistic traffic (day and night) of ``customers``, over about ``days`` days."""
    generator = TrafficGenerator(seed=seed, customers=customers, events_per_second=events / (days * 86_400))
    return [orjson.dumps(event) for event in generator.events(count=events)]


def _ms(event: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)


def _nested(event: dict[str, Any]) -> bytes:
    line = orjson.dumps(event)
    return line[:-1] + b',"extra":' + b"[" * 1000 + b"]" * 1000 + b"}"


# Reason -> how to spoil a valid event (a dict, with a fresh event id) into such a record.
BAD: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "not_json": lambda e: orjson.dumps(e)[: len(orjson.dumps(e)) // 2],
    "not_object": lambda e: orjson.dumps([e]),
    "missing_field": lambda e: orjson.dumps({k: v for k, v in e.items() if k != "event_type"}),
    "wrong_type": lambda e: orjson.dumps({**e, "event_id": 12345}),
    "invalid_value": lambda e: orjson.dumps({**e, "channel": "Web Shop"}),
    "field_too_long": lambda e: orjson.dumps({**e, "session_id": "s" * 200}),
    "unknown_event_type": lambda e: orjson.dumps({**e, "event_type": "video_play"}),
    "bad_timestamp": lambda e: orjson.dumps({**e, "occurred_at": e["occurred_at"].replace("Z", "")}),
    "timestamp_out_of_range": lambda e: orjson.dumps({**e, "occurred_at": "1970-01-01T00:00:00.000Z"}),
    "too_large": lambda e: orjson.dumps({**e, "dom": "x" * (MAX_EVENT_BYTES + 1000)}),
    "nested_too_deep": _nested,
    # A name of the right shape that is no zone: the quiet-hours check once failed on it.
    "invalid_value/timezone": lambda e: orjson.dumps({**e, "timezone": "Europe"}),
}


def reason_of(kind: str) -> str:
    return kind.split("/")[0]


def with_bad_records(
    lines: list[bytes], per_kind: int, rng: random.Random, kinds: Sequence[str] = tuple(BAD)
) -> tuple[list[bytes], Counter[str]]:
    """``lines`` with ``per_kind`` spoilt copies of random events of each kind, each right after its original.

    Their customers' keys, topics and times are those of the originals, so they fall among the
    real traffic of every partition. Returns the mixed input and the dead-letter reasons expected.
    """
    spoilt: dict[int, list[bytes]] = {}
    expected: Counter[str] = Counter()
    for kind in kinds:
        for n in range(per_kind):
            i = rng.randrange(len(lines))
            event = orjson.loads(lines[i]) | {"event_id": f"bad-{kind.replace('/', '-')}-{n}"}
            spoilt.setdefault(i, []).append(BAD[kind](event))
            expected[reason_of(kind)] += 1
    return _interleave(lines, spoilt), expected


def with_planted_faults(lines: list[bytes], per_kind: int, rng: random.Random) -> tuple[list[bytes], int]:
    """``lines`` with events marked to make detection, the policy or trigger building raise (see faults.py).

    Copies of events that complete a moment (a compare view, a store locator view) under new ids;
    for the policy and trigger building, of customers of their own (with no cooldown running, so
    that there is a trigger to judge and build).
    Returns the mixed input and how many such events it holds.
    """
    moments = [
        i for i, line in enumerate(lines) if b'"compare_view"' in line or b'"store_locator_view"' in line
    ]
    added: dict[int, list[bytes]] = {}
    count = 0
    for mark in (DETECTION, RENDERING, POLICY):
        for n in range(per_kind):
            i = rng.choice(moments)
            event = orjson.loads(lines[i]) | {"event_id": f"{mark}-{n}"}
            if mark != DETECTION:
                event["customer_id"] = f"{mark}-customer-{n}"
            if mark == RENDERING:  # consent, so that the trigger is built to be published
                consent = {k: event[k] for k in ("customer_id", "occurred_at")} | {
                    "event_id": f"consent-{mark}-{n}",
                    "event_type": "consent",
                    "status": "granted",
                    "purpose": "marketing",
                }
                added.setdefault(i, []).append(orjson.dumps(consent))
            added.setdefault(i, []).append(orjson.dumps(event))
            count += 1
    return _interleave(lines, added), count


def with_wrong_clocks(
    lines: list[bytes], rng: random.Random, ahead: Sequence[timedelta], behind: Sequence[timedelta]
) -> list[bytes]:
    """``lines`` with events from devices whose clocks are wrong: one customer each, a few events in a row.

    Each is a copy (new id) of one of the customer's events, its time moved by the offset.
    """
    added: dict[int, list[bytes]] = {}
    for n, offset in enumerate([*ahead, *(-b for b in behind)]):
        i = rng.randrange(len(lines) // 10, len(lines) - len(lines) // 10)
        event = orjson.loads(lines[i])
        shifted = format_time(_ms(event) + int(offset.total_seconds() * 1000))
        copies = [event | {"event_id": f"clock-{n}-{k}", "occurred_at": shifted} for k in range(3)]
        added.setdefault(i, []).extend(orjson.dumps(c) for c in copies)
    return _interleave(lines, added)


def with_slow_topic(lines: list[bytes], rng: random.Random, count: int, size: int) -> list[bytes]:
    """``lines`` with ``count`` purchase records of ``size`` bytes (too large: dead-lettered) among them.

    A consumer fetches at most about a megabyte per partition at a time, so the purchase topic
    then comes a record or two per fetch, far behind the others.
    """
    added: dict[int, list[bytes]] = {}
    purchases = [i for i, line in enumerate(lines) if b'"event_type":"purchase"' in line]
    for n in range(count):
        i = rng.choice(purchases)
        event = orjson.loads(lines[i]) | {"event_id": f"slow-{n}", "padding": "x" * size}
        added.setdefault(i, []).append(orjson.dumps(event))
    return _interleave(lines, added)


def with_ticks(lines: list[bytes], partitions: int = PARTITIONS) -> list[bytes]:
    """``lines`` and, a day after their end, ticks that pass every deadline (see harness.ticks)."""
    return lines + ticks(lines, of=partitions, after=timedelta(days=1))


def _interleave(lines: list[bytes], after: dict[int, list[bytes]]) -> list[bytes]:
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        out.extend(after.get(i, ()))
    return out


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Report:
    """What the workers published, against replay of the same input."""

    name: str
    expected: int
    records: int
    lost: set[str]
    extra: set[str]
    duplicated: int
    changed: set[str]
    dead: Counter[str]
    dead_expected: Counter[str]
    # Dead letters published more than once (at least once, a redone batch sends them again).
    dead_duplicated: int = 0
    # Every distinct trigger published; internal errors dead-lettered, by the start of their detail.
    published: set[bytes] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.extra or self.changed) and self.dead == self.dead_expected

    def __str__(self) -> str:
        dead = ", ".join(f"{r} {n}" for r, n in sorted(self.dead.items()))
        lines = [
            f"{self.name}: replay {self.expected} triggers; published {self.records} records:"
            f" lost {len(self.lost)}, extra {len(self.extra)}, duplicated {self.duplicated},"
            f" bytes differ {len(self.changed)}; dead letters {sum(self.dead.values())} ({dead};"
            f" duplicated {self.dead_duplicated})"
            f"{'' if self.dead == self.dead_expected else f' EXPECTED {dict(self.dead_expected)}'}"
            f" [{self.seconds:.0f} s]"
        ]
        return "\n".join([*lines, *(f"  {note}" for note in self.notes)])


class Crew:
    """The workers of a run: started, killed and restarted by the faults; at least one is left running."""

    def __init__(self, workers: Workers, env: dict[str, str], *, faults: bool = False) -> None:
        self.workers = workers
        self.env = env
        self.faults = faults
        self.running: list[WorkerProcess] = []
        self.kills = 0

    def start(self) -> WorkerProcess:
        worker = self.workers.start(self.env, faults=self.faults)
        self.running.append(worker)
        return worker

    def kill(self, rng: random.Random) -> None:
        victim = self.running.pop(rng.randrange(len(self.running)))
        victim.kill()
        self.kills += 1

    def keep_one(self) -> None:
        if not self.running:
            self.start()


# The state store's servers: one Redis, or a Redis Cluster.
StateRedis = EmbeddedRedis | EmbeddedRedisCluster
# A fault: what it does to the crew and the servers while they work, given a random source.
Fault = Callable[[Crew, StateRedis, random.Random], list[str]]


def midway(crew: Crew, within: float = 60.0) -> str:
    """Once the workers have committed part of the input, not all of it: how much is left."""
    settings = settings_of(crew.env)
    total = sum(run(backlog(settings)).values())
    deadline = time.monotonic() + within
    while (waiting := sum(run(backlog(settings)).values())) == total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert 0 < waiting < total, f"{waiting} of {total} records uncommitted: not in the middle of the run"
    return f"{waiting} of {total} input records uncommitted"


def kills(count: int, pause: tuple[float, float] = (1.0, 5.0)) -> Fault:
    """``count`` SIGKILLs, at random instants, in turn during start-up, processing and a rebalance."""

    def inject(crew: Crew, redis: StateRedis, rng: random.Random) -> list[str]:
        notes = []
        for n in range(count):
            phase = ("start-up", "processing", "rebalance")[n % 3]
            crew.keep_one()
            if phase == "start-up":
                crew.kill(rng)
                crew.start()
                time.sleep(rng.uniform(0.2, 2.5))  # before, while or just after it joins the group
            elif phase == "processing":
                time.sleep(rng.uniform(*pause))
            else:
                crew.start()  # a second worker: the group rebalances
                time.sleep(rng.uniform(0.5, 4.0))
            crew.kill(rng)
            notes.append(f"SIGKILL during {phase}")
            crew.keep_one()
        return notes

    return inject


def redis_paused(seconds: float, after: float = 2.0) -> Fault:
    """Redis hung (SIGSTOP) for ``seconds``, ``after`` seconds into the run."""

    def inject(crew: Crew, redis: StateRedis, rng: random.Random) -> list[str]:
        time.sleep(after)
        redis.pause()
        time.sleep(seconds)
        redis.resume()
        return [f"redis paused {seconds:g} s"]

    return inject


def redis_restarted(down: float = 1.0, after: float = 2.0) -> Fault:
    """Redis killed (SIGKILL) and, ``down`` seconds later, started again on its port from its AOF."""

    def inject(crew: Crew, redis: StateRedis, rng: random.Random) -> list[str]:
        time.sleep(after)
        redis.kill()
        time.sleep(down)
        redis.start()
        return [f"redis killed, restarted {down:g} s later"]

    return inject


def broker_restarted(broker: ApacheKafka, how: str, down: float = 2.0, within: float = 60.0) -> Fault:
    """Kafka stopped (``how``: "sigterm", a clean shutdown; "sigkill", a crash) as soon as the
    workers have committed part of the input, and started again on its port, with its data,
    ``down`` seconds later."""

    def inject(crew: Crew, redis: StateRedis, rng: random.Random) -> list[str]:
        left = midway(crew, within)
        (broker.stop if how == "sigterm" else broker.kill)()
        time.sleep(down)
        began = time.monotonic()
        broker.start()
        took = time.monotonic() - began
        return [f"Kafka stopped ({how}) with {left}, started again {down:g} s later, serving {took:.0f} s on"]

    return inject


def primary_failed_over(cluster: EmbeddedRedisCluster, within: float = 60.0) -> Fault:
    """The Redis Cluster primary that holds a stream (partition 0's: its states, clock and
    deadlines) killed (SIGKILL) in the middle of the run: its replica takes over once the
    others see it gone; the dead node, started again, comes back as a replica."""

    def inject(crew: Crew, redis: StateRedis, rng: random.Random) -> list[str]:
        left = midway(crew, within)
        victim = cluster.primary_of(key_slot(stream_of(0).encode()))
        victim.kill()
        began = time.monotonic()
        cluster.wait_healthy()  # every slot served again: a replica promoted
        took = time.monotonic() - began
        victim.start()
        cluster.wait_healthy()
        return [f"a Redis primary killed with {left}; its replica served its slots {took:.1f} s later"]

    return inject


def workers_replaced(within: float = 60.0) -> Fault:
    """Three workers; in the middle of the run one is killed (SIGKILL) and another added."""

    def inject(crew: Crew, redis: StateRedis, rng: random.Random) -> list[str]:
        while len(crew.running) < 3:
            crew.start()
        left = midway(crew, within)
        crew.kill(rng)
        crew.start()
        return [f"three workers, one SIGKILLed and another added with {left}"]

    return inject


def no_fault(crew: Crew, redis: StateRedis, rng: random.Random) -> list[str]:
    return []


def chaos_run(
    name: str,
    lines: list[bytes],
    *,
    broker: Broker,
    redis: StateRedis,
    workers: Workers,
    directory: Path,
    fault: Fault = no_fault,
    faults_planted: bool = False,
    seed: int = 1,
    env: dict[str, str] | None = None,
    partitions: int = PARTITIONS,
    within: float = 300.0,
) -> Report:
    """Produce ``lines`` (and ticks), run workers with ``fault`` injected, compare with replay.

    Replay reports every record it does not apply (bad, late, far ahead, or whose
    processing raised): the dead-letter topic must hold each of them once, for that reason.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    lines = with_ticks(lines, partitions)
    source = write_jsonl(directory / f"{name}.jsonl", lines)
    if faults_planted:
        with planted():
            expected = replay(source, directory)
    else:
        expected = replay(source, directory)
    dead = Counter(p["reason"] for p in expected.problems)
    settings_env = isolated_env(broker, redis, name, MM_PARTITIONS=str(partitions), **(env or {}))
    settings = settings_of(settings_env)
    run(create_topics(settings))
    run(produce(settings, lines))
    crew = Crew(workers, settings_env, faults=faults_planted)
    crew.start()
    notes = fault(crew, redis, rng)
    crew.keep_one()
    run(wait_consumed(settings, workers, within=within))
    report = compare(name, settings, broker, expected)
    report.dead_expected = dead
    report.notes = [*notes, *report.notes]
    report.seconds = time.monotonic() - started
    return report


def compare(name: str, settings: Settings, broker: Broker, expected: Replayed) -> Report:
    """What the workers published against replay, read as the guarantee's consumers read."""
    committed = settings.processing_guarantee == "exactly_once"
    triggers = run(read_topic(broker.bootstrap, settings.topic_triggers, read_committed=committed))
    replayed = {trigger_id(t): t for t in expected.triggers}
    copies: dict[str, set[bytes]] = {}
    for record in triggers:
        copies.setdefault(trigger_id(record.value), set()).add(record.value)
    changed = {i for i, values in copies.items() if i in replayed and values != {replayed[i]}}
    lost, extra = replayed.keys() - copies.keys(), copies.keys() - replayed.keys()
    examples = [f"lost {_describe(replayed[i])}" for i in sorted(lost)[:5]]
    examples += [f"extra {_describe(next(iter(copies[i])))}" for i in sorted(extra)[:5]]
    examples += [f"changed {_describe(replayed[i])}" for i in sorted(changed)[:5]]
    dead: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    seen: set[tuple[bytes, bytes, bytes]] = set()
    dead_duplicated = 0
    for record in run(read_topic(broker.bootstrap, settings.topic_dlq, read_committed=committed)):
        headers = dict(record.headers)
        where = (headers["mm.dlq.topic"], headers["mm.dlq.partition"], headers["mm.dlq.offset"])
        if where in seen:  # a batch redone after a kill dead-letters its records again
            dead_duplicated += 1
        else:
            seen.add(where)
            dead[headers["mm.dlq.reason"].decode()] += 1
            if headers["mm.dlq.reason"] == b"internal_error":
                failures[" ".join(headers["mm.dlq.detail"].decode().split()[:3])] += 1
    return Report(
        name=name,
        expected=len(replayed),
        records=len(triggers),
        lost=lost,
        extra=extra,
        duplicated=len(triggers) - len(copies),
        dead_duplicated=dead_duplicated,
        changed=changed,
        dead=dead,
        dead_expected=Counter(),
        published={value for values in copies.values() for value in values},
        failures=failures,
        notes=examples,
    )


def _describe(trigger: bytes) -> str:
    event = orjson.loads(trigger)
    data = event["data"]
    return f"{data['moment']} {event['subject']} at {event['time']} anchored on {data['evidence'][-1:]}"


def without_partition_for(
    lines: list[bytes], partition: int, partitions: int, start: timedelta, end: timedelta
) -> list[bytes]:
    """``lines`` less the events of one partition's customers from ``start`` to ``end`` into the input."""
    first = _ms(orjson.loads(lines[0]))
    quiet = range(first + int(start.total_seconds() * 1000), first + int(end.total_seconds() * 1000))
    kept = []
    for line in lines:
        event = orjson.loads(line)
        if partition_of(event["customer_id"].encode(), partitions) != partition or _ms(event) not in quiet:
            kept.append(line)
    return kept


def with_ties(lines: list[bytes], rng: random.Random, share: float) -> list[bytes]:
    """``lines`` where some events take the time of their customer's event just before, whatever its topic.

    Just before: at most a minute. The result is in time order again, ties in their order.
    """
    previous: dict[str, str] = {}
    out: list[tuple[int, bytes]] = []
    for line in lines:
        event = orjson.loads(line)
        customer = event["customer_id"]
        before = previous.get(customer)
        if before is not None and _ms(event) - _ms({"occurred_at": before}) < 60_000 and rng.random() < share:
            event["occurred_at"] = before
            line = orjson.dumps(event)
        previous[customer] = event["occurred_at"]
        out.append((_ms(event), line))
    return [line for _, line in sorted(out, key=lambda item: item[0])]
