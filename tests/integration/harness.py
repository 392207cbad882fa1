"""What the integration tests share: worker subprocesses, producing, reading topics, replay.

Every test gets its own topic names, consumer group and Redis prefix
(:func:`isolated_env`), so tests can share the session's broker and redis-server.
Workers run as ``python -m app.cli worker`` subprocesses with their output in a
log file; :class:`Workers` stops them all at teardown and prints each log's tail,
which pytest shows only when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from app import cli
from app.clock import QUORUM
from app.decoding import decode_event
from app.embedded import Broker, EmbeddedRedis, EmbeddedRedisCluster
from app.events import Event
from app.replay import in_tie_order
from app.settings import Settings, load_settings
from app.state.redis import connect
from app.triggers import format_time
from app.worker.agent import stream_of
from app.worker.alignment import Aligner
from app.worker.feed import topic_for
from app.worker.kafka import client_options, ensure_topics

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
# Unless a test says otherwise, workers and replays run the rules alone: see the file.
RULES_ONLY = ROOT / "fixtures" / "rules-only.toml"
# Generous: these bound how long a broken worker makes a test wait, not how fast it must be.
TIMEOUT = 120.0

_names = itertools.count(1)
# Every test worker's: the tests look for what a forgotten customer may have left behind with it.
PSEUDONYM_KEY = "test-pseudonym-key-of-at-least-32-characters"


def isolated_env(
    broker: Broker, redis: EmbeddedRedis | EmbeddedRedisCluster, name: str, **extra: str
) -> dict[str, str]:
    """``MM_*`` settings of a worker of its own: topics, group and Redis prefix nobody else uses."""
    suffix = f"{name}-{next(_names)}-{uuid.uuid4().hex[:6]}"
    env = {
        "MM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "MM_REDIS_URL": redis.url,
        "MM_REDIS_PREFIX": f"mm-{suffix}",
        "MM_PSEUDONYM_KEY": PSEUDONYM_KEY,
        # The production default where the broker has InitProducerId (not the embedded one).
        "MM_KAFKA_IDEMPOTENCE": "true" if broker.transactions else "false",
        # The embedded broker assigns partitions after half the session timeout.
        "MM_KAFKA_SESSION_TIMEOUT": "3",
        "MM_PARTITIONS": str(PARTITIONS),
        "MM_GROUP_ID": f"mm-{suffix}",
        "MM_TOPIC_CLICKSTREAM": f"clickstream-{suffix}",
        "MM_TOPIC_SEARCH": f"search-{suffix}",
        "MM_TOPIC_PURCHASE": f"purchase-{suffix}",
        "MM_TOPIC_CONSENT": f"consent-{suffix}",
        "MM_TOPIC_PRIVACY": f"privacy-{suffix}",
        "MM_TOPIC_TRIGGERS": f"triggers-{suffix}",
        "MM_TOPIC_HOLDOUT": f"holdout-{suffix}",
        "MM_TOPIC_CONFIRMATIONS": f"confirmations-{suffix}",
        "MM_TOPIC_DLQ": f"dlq-{suffix}",
        "MM_TOPIC_LATE": f"dlq-{suffix}",
        "MM_TOPIC_REPARTITION": f"repartition-{suffix}",
        "MM_TOPIC_TRAINING": f"training-{suffix}",
        "MM_MOMENTS_CONFIG": str(RULES_ONLY),
        "MM_LOG_LEVEL": "info",
        # Any free port for /metrics: workers of concurrent tests (and test runs) must not collide.
        "MM_METRICS_PORT": "0",
    }
    env.update(extra)
    return env


def by_stream(customers: Iterable[str], partitions: int = PARTITIONS) -> dict[str, list[str]]:
    """``customers`` by the stream (the worker's name for a partition) their keyed events go to."""
    streams: dict[str, list[str]] = {}
    for customer in customers:
        streams.setdefault(stream_of(partition_of(customer.encode(), partitions)), []).append(customer)
    return streams


def settings_of(env: Mapping[str, str]) -> Settings:
    return load_settings(env)


def input_topics(settings: Settings) -> list[str]:
    """The co-partitioned topics a worker consumes: the inputs and the repartition topic."""
    return [*settings.input_topics, settings.topic_repartition]


# --- worker processes --------------------------------------------------------------------------


class WorkerProcess:
    """``micromoments worker`` (or another ``command`` that runs until stopped) in a subprocess.

    Its stdout and stderr go to ``log``.
    """

    def __init__(
        self, env: Mapping[str, str], log: Path, command: str = "worker", *, faults: bool = False
    ) -> None:
        self.log = log
        self.command = command
        # With the faults of faults.py planted: events marked for it make the core raise.
        self.faults = faults
        # The test's own environment, less any MM_ variable: the worker refuses unknown ones.
        base = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
        self._env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        self._process: subprocess.Popen[bytes] | None = None
        # Set once the test stops it: exiting is then no failure.
        self.stopping = False

    def start(self) -> WorkerProcess:
        with open(self.log, "ab") as out:
            program = [str(Path(__file__).with_name("faults.py"))] if self.faults else ["-m", "app.cli"]
            self._process = subprocess.Popen(
                [sys.executable, *program, self.command],
                env=self._env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "worker not started"
        return self._process

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise AssertionError(f"{self.command} exited with {self._process.returncode}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or committed on the way out."""
        self.stopping = True
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait for a graceful stop; SIGKILL if it takes longer. The exit code."""
        if self._process is None:
            return None
        self.stopping = True
        if self.alive():
            self._process.send_signal(signal.SIGTERM)
            try:
                return self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.send_signal(signal.SIGKILL)
                self._process.wait(timeout=30)
                raise
        return self._process.returncode

    def said(self, text: str) -> bool:
        """Whether the worker's log holds ``text`` yet."""
        try:
            return text in self.log.read_text(errors="replace")
        except FileNotFoundError:
            return False

    def metrics(self, name: str) -> float:
        """The sum of the samples of metric ``name`` on the worker's /metrics (its address from its log)."""
        import re
        import urllib.request

        found = re.search(r"on http://([\d.]+:\d+)", self.log.read_text(errors="replace"))
        assert found, f"{self.command} has not said where it serves /metrics"
        with urllib.request.urlopen(f"http://{found.group(1)}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name)] in " {"
        )

    def pause(self) -> None:
        """SIGSTOP: the process hangs, its connections open (a GC pause, a VM stall)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def tail(self, lines: int = 40) -> str:
        """Warnings and errors, then the last ``lines`` lines, of the worker's log."""
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        alarming = [line for line in text if any(w in line for w in ("WARNING", "ERROR", "Traceback"))]
        return "\n".join([*alarming[:30], "...", *text[-lines:]])


class Workers:
    """Starts workers for one test or module; :meth:`close` stops them and prints their logs' tails."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[WorkerProcess] = []

    def start(
        self, env: Mapping[str, str], command: str = "worker", *, faults: bool = False
    ) -> WorkerProcess:
        log = self.directory / f"{command}-{len(self.started) + 1}.log"
        worker = WorkerProcess(env, log, command, faults=faults)
        self.started.append(worker)
        return worker.start()

    def check_alive(self) -> None:
        """Fail, with its log, if a worker exited that the test did not stop."""
        for worker in self.started:
            if not worker.stopping:
                worker.check_alive()

    def close(self) -> None:
        for worker in self.started:
            with contextlib.suppress(Exception):
                worker.terminate(timeout=30)
        for worker in self.started:
            # Shown by pytest only for a failed test: what each worker said last.
            print(f"----- {worker.log} (exit {worker.process.returncode}) -----\n{worker.tail()}")


# --- input -------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def write_jsonl(path: Path, lines: Iterable[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition aiokafka's (and Kafka's) default partitioner gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def customers_per_partition(prefix: str, partitions: int = PARTITIONS) -> list[str]:
    """One customer id per partition, ``result[p]`` keyed to partition ``p``."""
    found: dict[int, str] = {}
    for i in itertools.count():
        customer = f"{prefix}-{i}"
        found.setdefault(partition_of(customer.encode(), partitions), customer)
        if len(found) == partitions:
            return [found[p] for p in range(partitions)]
    raise AssertionError("unreachable")


def last_event_time(lines: Iterable[bytes]) -> datetime:
    latest: datetime | None = None
    for line in lines:
        with contextlib.suppress(Exception):
            at = datetime.fromisoformat(orjson.loads(line)["occurred_at"])
            latest = at if latest is None else max(latest, at)
    assert latest is not None, "no event with a valid occurred_at"
    return latest


def ticks(
    lines: Sequence[bytes],
    partitions: Iterable[int] | None = None,
    of: int = PARTITIONS,
    after: timedelta = timedelta(days=1),
    tag: str = "tick",
) -> list[bytes]:
    """Page views by synthetic customers of every partition, ``after`` the input's last event.

    Streaming cannot know that the input ended, so a cart abandoned near the end fires
    only once event time moves on, and a trigger deferred by quiet hours is released
    only once the night is over; replay flushes both at the end of its input.
    Appending these ticks to the input of both moves the clock of every partition
    (``partitions``, of ``of``; all by default) past every pending deadline (a day is
    past any cart deadline and any quiet night, and well within how far an event may
    run ahead of the stream), so both give the same triggers, and replay's final
    flush finds nothing. A stream's clock moves only once ``QUORUM`` distinct customers
    have reached a time, so each partition gets that many tick customers. ``tag`` starts
    their event ids: ticks of one input need one each.
    """
    at = format_time(int((last_event_time(lines) + after).timestamp() * 1000))
    customers = [customers_per_partition(f"zz-{tag}-{n}", of) for n in range(QUORUM)]
    return [
        orjson.dumps(
            {
                "event_id": f"{tag}-{customers[n][p]}",
                "customer_id": customers[n][p],
                "event_type": "page_view",
                "occurred_at": at,
                "page": "/",
            }
        )
        for n in range(QUORUM)
        for p in (range(of) if partitions is None else partitions)
    ]


class _Record(NamedTuple):
    timestamp: int
    offset: int
    customer: str


def reordered(lines: Sequence[bytes], settings: Settings) -> str | None:
    """Where the worker would not take ``lines`` (valid events of one partition) in file order.

    A worker merges a partition's topics by event time (``occurred_at``), ties in topic
    order (:class:`~app.worker.alignment.Aligner`); replay reads the file as it is, events
    of one time in that topic order. None when the two orders agree; else which line would
    come first.
    """
    aligner: Aligner[_Record] = Aligner(
        [*settings.input_topics, settings.topic_repartition], voter=attrgetter("customer")
    )
    for index, line in enumerate(lines):
        fields = orjson.loads(line)
        ts = event_time_ms(line)
        assert ts is not None, f"line {index + 1} has no valid occurred_at"
        record = _Record(ts, index, fields["customer_id"])
        aligner.add(topic_for(fields["event_type"], settings), [record], now=0.0)
    order = [record.offset for record in aligner.release(lambda topic: True, now=0.0)]
    events = [decode_event(line) for line in lines]
    _, as_replayed = in_tie_order(cast(list[Event], events), list(range(len(lines))))
    for position, (index, replayed) in enumerate(zip(order, as_replayed, strict=True)):
        if index != replayed:
            return (
                f"line {index + 1} would be processed before line {replayed + 1}: the worker merges"
                " the input topics in event-time order, replay reads the file as it is"
                f" (position {position + 1})"
            )
    return None


# --- Kafka -------------------------------------------------------------------------------------


def run(coro: Awaitable[Any], within: float = 3 * TIMEOUT) -> Any:
    """Run one coroutine to completion from a synchronous test; fail if it hangs.

    Every wait in this harness has its own deadline; this one is the backstop for an
    await that never returns (a client stuck on a broker), so that a test fails with
    the stuck await in its traceback instead of blocking the suite.
    """

    async def main() -> Any:
        return await asyncio.wait_for(coro, within)

    return asyncio.run(main())


async def create_topics(settings: Settings) -> None:
    """The worker's topics, with ``MM_PARTITIONS`` partitions, before anything is produced."""
    await ensure_topics(settings)


def event_time_ms(line: bytes) -> int | None:
    try:
        fields = orjson.loads(line)
        return int(datetime.fromisoformat(fields["occurred_at"]).timestamp() * 1000)
    except Exception:
        return None


KeyFn = Callable[[dict[str, Any] | None, bytes], tuple[bytes | None, int | None]]


def by_customer(fields: dict[str, Any] | None, line: bytes) -> tuple[bytes | None, int | None]:
    """Key as producers should: by customer id (None when there is none), default partitioner."""
    customer = fields.get("customer_id") if fields else None
    return (customer.encode() if isinstance(customer, str) else None), None


async def produce(
    settings: Settings,
    lines: Sequence[bytes],
    key: KeyFn = by_customer,
    headers: Sequence[tuple[str, bytes]] = (),
) -> list[tuple[str, int, int]]:
    """Send ``lines`` to their input topics, stamped with ``occurred_at``; (topic, partition, offset) each.

    Lines that are not JSON objects go to the clickstream topic.
    """
    producer = AIOKafkaProducer(
        **client_options(settings), acks="all", linger_ms=5, max_request_size=1_000_000
    )
    await producer.start()
    try:
        pending = []
        for line in lines:
            try:
                fields = orjson.loads(line)
            except orjson.JSONDecodeError:
                fields = None
            if not isinstance(fields, dict):
                fields = None
            topic = topic_for(fields.get("event_type"), settings) if fields else settings.topic_clickstream
            record_key, partition = key(fields, line)
            pending.append(
                await producer.send(
                    topic,
                    line,
                    key=record_key,
                    partition=partition,
                    timestamp_ms=_stamp(event_time_ms(line)),
                    headers=list(headers) or None,
                )
            )
        sent = await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return [(m.topic, m.partition, m.offset) for m in sent]


# Apache Kafka 4 refuses records stamped more than an hour ahead of its clock
# (log.message.timestamp.after.max.ms): a device whose clock is years ahead cannot have its
# events stamped with their time, and its producer stamps them with the time of sending.
_AHEAD_MAX_MS = 3_600_000 - 60_000


def _stamp(event_time: int | None) -> int | None:
    if event_time is None or event_time > time.time() * 1000 + _AHEAD_MAX_MS:
        return None
    return event_time


async def read_topic(
    bootstrap: str, topic: str, within: float = 30.0, *, read_committed: bool = False
) -> list[Any]:
    """Every record on ``topic`` now, in partition then offset order (no consumer group).

    ``read_committed``: as a consumer of exactly-once output reads, without the records
    of aborted transactions.
    """
    records, _ = await _read(
        bootstrap, [topic], within, max_partition_fetch_bytes=1024 * 1024, read_committed=read_committed
    )
    return records


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    """The log end offset of every partition of ``topics``, as fetch responses tell it.

    Not ``AIOKafkaConsumer.end_offsets``: the embedded broker answers ListOffsets(latest)
    with the base offset of the last record batch plus one, short of the end when the
    producer batched several records. Its fetch responses carry the right high watermark.
    """
    _, ends = await _read(bootstrap, topics, 30.0, max_partition_fetch_bytes=1, keep=False)
    return ends


async def _read(
    bootstrap: str,
    topics: Sequence[str],
    within: float,
    *,
    max_partition_fetch_bytes: int,
    keep: bool = True,
    read_committed: bool = False,
) -> tuple[list[Any], dict[TopicPartition, int]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=max_partition_fetch_bytes,
        fetch_max_wait_ms=50,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in await _partitions(consumer, t, within)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)  # memory storage: every log starts at 0
        records: list[Any] = []
        deadline = time.monotonic() + within
        while True:
            # Read committed, the end is the last stable offset: short of any transaction still open.
            end_of = consumer.last_stable_offset if read_committed else consumer.highwater
            ends = {tp: end_of(tp) for tp in tps}
            known = {tp: end for tp, end in ends.items() if end is not None}
            if len(known) == len(tps):
                if not keep:
                    return [], known
                if all([await consumer.position(tp) >= end for tp, end in known.items()]):
                    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset)), known
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topics} to the end within {within} s")
            for batch in (await consumer.getmany(*tps, timeout_ms=200)).values():
                if keep:
                    records.extend(batch)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str, within: float) -> list[int]:
    deadline = time.monotonic() + within
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic} has no partitions")
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)


async def committed_offsets(
    bootstrap: str, group: str, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The group's committed offsets of ``tps`` (0 where none), read without joining the group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: (await consumer.committed(tp)) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def backlog(settings: Settings) -> dict[TopicPartition, int]:
    """Per input partition (repartition topic included), records the group has not committed past."""
    # Ends first: the repartition topic only grows before the inputs are all committed.
    ends = await end_offsets(settings.kafka_bootstrap, input_topics(settings))
    committed = await committed_offsets(settings.kafka_bootstrap, settings.group_id, list(ends))
    return {tp: end - committed[tp] for tp, end in ends.items() if end != committed[tp]}


async def wait_consumed(settings: Settings, workers: Workers, within: float = TIMEOUT) -> None:
    """Until the group's committed offsets reach the end of every input partition.

    Triggers are acknowledged by the broker before the offsets that produced them are
    committed, so once this returns every trigger of the input is on the topic.
    """
    deadline = time.monotonic() + within
    left: dict[TopicPartition, int] = {}
    while time.monotonic() < deadline:
        workers.check_alive()
        left = await backlog(settings)
        if not left:
            # The inputs' commits may have just produced re-keyed records: look again.
            left = await backlog(settings)
            if not left:
                return
        await asyncio.sleep(0.5)
    raise AssertionError(f"records left uncommitted after {within} s: {left}")


async def wait_for_records(bootstrap: str, topic: str, count: int, workers: Workers, within: float) -> None:
    """Until ``topic`` holds at least ``count`` records."""
    deadline = time.monotonic() + within
    seen = 0
    while time.monotonic() < deadline:
        workers.check_alive()
        with contextlib.suppress(AssertionError):
            seen = sum((await end_offsets(bootstrap, [topic])).values())
        if seen >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{topic} has {seen} records after {within} s, expected at least {count}")


# --- Redis and the command line ----------------------------------------------------------------


async def redis_mentions(url: str, needle: str) -> list[str]:
    """Where ``needle`` occurs in the Redis database at ``url``: in key names, and in values of every type.

    Scans every key (SCAN, never KEYS), and reads strings, list items, set and sorted-set
    members (and scores), hash fields and values, and stream entries. For tests only.
    """
    wanted = needle.encode()
    found: list[str] = []
    client = connect(url)  # one Redis, or every primary of a cluster
    try:
        async for key in client.scan_iter(count=1000):
            name = key.decode(errors="replace")
            if wanted in key:
                found.append(f"key {name}")
            kind = (await client.type(key)).decode()
            parts: list[bytes] = []
            if kind == "string":
                parts = [await client.get(key) or b""]
            elif kind == "list":
                parts = await client.lrange(key, 0, -1)
            elif kind == "set":
                parts = list(await client.smembers(key))
            elif kind == "zset":
                parts = [
                    m + b" " + str(score).encode()
                    for m, score in await client.zrange(key, 0, -1, withscores=True)
                ]
            elif kind == "hash":
                parts = [k + b" " + v for k, v in (await client.hgetall(key)).items()]
            elif kind == "stream":
                parts = [repr(entry).encode() for entry in await client.xrange(key)]
            else:
                parts = [repr(await client.dump(key)).encode()]
            if any(wanted in part for part in parts):
                found.append(f"{kind} value of {name}")
    finally:
        await client.aclose()
    return found


def run_cli(env: Mapping[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``micromoments ARGS`` in a subprocess with the ``MM_*`` settings ``env``; fails on a non-zero exit."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MM_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    command = " ".join(args)
    assert done.returncode == 0, f"micromoments {command} exited with {done.returncode}:\n{done.stderr}"
    return done


# --- replay ------------------------------------------------------------------------------------


class Replayed:
    """What ``micromoments replay`` made of a file: trigger lines and rejected lines."""

    def __init__(self, triggers: list[bytes], problems: list[dict[str, Any]]) -> None:
        self.triggers = triggers
        self.problems = problems

    def ids(self) -> set[str]:
        return {orjson.loads(t)["id"] for t in self.triggers}


def replay(path: Path, directory: Path, config: Path = RULES_ONLY) -> Replayed:
    """Run the ``micromoments replay`` command (its entry point, in this process) on ``path``."""
    out, errors = directory / f"{path.stem}.triggers.jsonl", directory / f"{path.stem}.errors.jsonl"
    argv = [
        "replay",
        str(path),
        "--out",
        str(out),
        "--errors",
        str(errors),
        "--quiet",
        "--config",
        str(config),
    ]
    code = cli.main(argv)
    assert code == 0, f"micromoments replay {path} exited with {code}"
    return Replayed(read_jsonl(out), [orjson.loads(line) for line in read_jsonl(errors)])


def replay_per_partition(
    lines: Sequence[bytes], directory: Path, partitions: int = PARTITIONS
) -> list[bytes]:
    """The triggers of replaying each partition's events on their own, as a worker's streams see them.

    On input in event-time order this is what an uninterrupted worker publishes.
    """
    by_partition: dict[int, list[bytes]] = {}
    for line in lines:
        customer = orjson.loads(line)["customer_id"]
        by_partition.setdefault(partition_of(customer.encode(), partitions), []).append(line)
    triggers: list[bytes] = []
    for partition, part in sorted(by_partition.items()):
        triggers += replay(write_jsonl(directory / f"partition-{partition}.jsonl", part), directory).triggers
    return triggers


def trigger_id(value: bytes) -> str:
    identifier = orjson.loads(value)["id"]
    assert isinstance(identifier, str)
    return identifier


def assert_same_triggers(got: Sequence[bytes], expected: Sequence[bytes]) -> None:
    """The same trigger lines (as multisets); the message says which moments differ, and how."""
    if sorted(got) == sorted(expected):
        return
    missing = Counter(expected) - Counter(got)
    extra = Counter(got) - Counter(expected)

    def describe(values: Counter[bytes]) -> str:
        events = [orjson.loads(v) for v in values.elements()]
        moments = Counter(e["data"]["moment"] for e in events)
        first = [f"{e['data']['moment']} {e['subject']} {e['time']} {e['id']}" for e in events[:5]]
        return f"{sum(values.values())} {dict(moments)} e.g. {first}"

    extra_by_id = {trigger_id(v): orjson.loads(v) for v in extra}
    changed = []
    for value in missing:
        other = extra_by_id.get(trigger_id(value))
        if other is not None:
            mine = orjson.loads(value)
            diff = {
                k: (mine["data"].get(k), other["data"].get(k))
                for k in mine["data"]
                if mine["data"].get(k) != other["data"].get(k)
            }
            changed.append(f"{mine['id']}: (replay, worker) {diff}")
    raise AssertionError(
        f"{len(got)} triggers, replay gives {len(expected)}:\n missing {describe(missing)}\n"
        f" extra {describe(extra)}\n {len(changed)} id(s) in both with other bytes: {changed[:3]}"
    )
