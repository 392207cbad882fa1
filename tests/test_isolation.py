"""No event can stop a batch: whatever raises while one is applied, the others go on as if it never came."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from helpers import DEFAULTS, ev, random_stream, raw, ticks

from app.decoding import Rejection, decode_event
from app.detection import Detection
from app.detector import Detector, Observation
from app.events import Event
from app.pipeline import Batch, Pipeline
from app.policy import Judgement, Policy
from app.processor import Status, StreamProcessor
from app.replay import Problem, ReplayError, replay
from app.state.memory import MemoryStateStore
from app.triggers import TriggerWriter
from app.window import CustomerState


class Poisoned(Exception):
    """What the faulty parts below raise."""


def poisoned(event_id: str) -> bool:
    return "poison" in event_id


@pytest.fixture
def faulty_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection fails for an event whose id says "poison", after changing the customer's state."""
    observe = Detector.observe

    def faulty(self: Detector, state: CustomerState, event: Event, ts: int) -> Observation:
        observation = observe(self, state, event, ts)
        if poisoned(event.event_id):
            raise Poisoned(f"cannot apply {event.event_id}")
        return observation

    monkeypatch.setattr(Detector, "observe", faulty)


async def through_pipeline(
    events: Sequence[Event], batch_size: int, *, flush: bool = True
) -> tuple[bytes, list[Batch]]:
    writer = TriggerWriter(DEFAULTS.trigger.source, str)
    pipeline = Pipeline(
        Detector(DEFAULTS), Policy(DEFAULTS.policy), MemoryStateStore(shared=1000), render=writer.record
    )
    batches = []
    for i in range(0, len(events), batch_size):
        batches.append(await pipeline.run({"s": events[i : i + batch_size]}))
        await pipeline.commit(batches[-1])
    if flush:
        batches.append(await pipeline.flush("s"))
        await pipeline.commit(batches[-1])
    triggers = b"".join(value + b"\n" for b in batches for _, value in b.outcomes["s"].triggers)
    return triggers, batches


def statuses(batches: list[Batch]) -> list[Status]:
    return [s for b in batches for s in b.outcomes["s"].statuses]


def with_poison(stream: list[Event], every: int = 23) -> Iterator[Event]:
    """``stream`` with a poisoned copy (same fields, a new id) of every ``every``-th event after it."""
    for i, event in enumerate(stream):
        yield event
        if i % every == 0:
            fields = msgspec.to_builtins(event) | {"event_type": event.event_type, "event_id": f"poison-{i}"}
            decoded = decode_event(orjson.dumps(fields))
            assert not isinstance(decoded, Rejection), decoded
            yield decoded


STREAM = random_stream(seed=3, count=300)


@pytest.mark.usefixtures("faulty_detection")
async def test_an_event_that_raises_is_skipped_and_the_rest_are_as_if_it_never_came() -> None:
    mixed = list(with_poison(STREAM))
    assert sum(poisoned(e.event_id) for e in mixed) > 5
    expected, _ = await through_pipeline(STREAM, 50)
    assert expected.count(b"\n") > 10
    for size in (1, 7, 1000):
        got, batches = await through_pipeline(mixed, size)
        assert got == expected, size
        failed = [e for e, s in zip(mixed, statuses(batches), strict=True) if s is Status.INTERNAL_ERROR]
        assert [e.event_id for e in failed] == [e.event_id for e in mixed if poisoned(e.event_id)]
        reasons = [why for b in batches for why in b.outcomes["s"].failures.values()]
        assert reasons
        assert all(why.startswith("Poisoned: cannot apply poison-") for why in reasons)
        assert all(isinstance(err, Poisoned) for b in batches for err in b.errors)


async def test_a_trigger_that_cannot_be_built_fails_only_its_event(monkeypatch: pytest.MonkeyPatch) -> None:
    record = TriggerWriter.record

    def faulty(self: TriggerWriter, detection: Detection) -> tuple[bytes, bytes]:
        if poisoned(detection.anchor):
            raise ValueError("unserialisable attribute")
        return record(self, detection)

    monkeypatch.setattr(TriggerWriter, "record", faulty)
    events = [
        ev("compare_view", "0s", customer="a", event_id="poison-compare"),
        ev("compare_view", "0s", customer="b"),
        ev("review_view", "1m", customer="a"),
    ]
    triggers, batches = await through_pipeline(events, 10)
    assert statuses(batches) == [Status.INTERNAL_ERROR, Status.APPLIED, Status.APPLIED]
    published = [orjson.loads(t) for t in triggers.splitlines()]
    assert [(t["subject"], t["data"]["moment"]) for t in published] == [
        ("b", "price_comparison"),
        ("a", "review_seeking"),
    ]
    # a's failed comparison left no cooldown, window entry or sent trigger behind.
    assert batches[0].states["a"].cooldowns.keys() == {"review_seeking"}
    assert [e.event_id for e in batches[0].states["a"].entries] == [events[2].event_id]


async def test_a_policy_that_raises_fails_only_the_event_it_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    judge = Policy.judge

    def faulty(self: Policy, detection: Detection, state: CustomerState) -> Judgement:
        if detection.customer_id == "bad-zone":
            raise IsADirectoryError(21, "Is a directory", "/usr/share/zoneinfo/Europe")
        return judge(self, detection, state)

    monkeypatch.setattr(Policy, "judge", faulty)
    events = [ev("compare_view", "0s", customer="bad-zone"), ev("compare_view", "0s", customer="fine")]
    triggers, batches = await through_pipeline(events, 10)
    assert statuses(batches) == [Status.INTERNAL_ERROR, Status.APPLIED]
    assert batches[0].outcomes["s"].failures == {
        0: "IsADirectoryError: [Errno 21] Is a directory: '/usr/share/zoneinfo/Europe'"
    }
    assert triggers.count(b'"subject":"fine"') == 1


async def test_a_deadline_that_raises_is_dropped_and_the_others_fire(monkeypatch: pytest.MonkeyPatch) -> None:
    release = Policy.release

    def faulty(self: Policy, state: CustomerState, now: int) -> list[tuple[Detection, Judgement]]:
        if state.customer_id == "broken":
            raise RuntimeError("a stored state the code cannot read")
        return release(self, state, now)

    monkeypatch.setattr(Policy, "release", faulty)
    carts = [ev("add_to_cart", "0s", customer=c, product_id="p1") for c in ("broken", "fine")]
    triggers, batches = await through_pipeline([*carts, *ticks("40m")], 100, flush=False)
    assert [orjson.loads(t)["subject"] for t in triggers.splitlines()] == ["fine"]
    assert batches[0].outcomes["s"].dropped == {"internal_error": 1}
    assert [str(e) for e in batches[0].errors] == ["a stored state the code cannot read"]
    assert set(Status.APPLIED for _ in carts) == set(statuses(batches))
    # Another cart of the same customer later is a new deadline: tried again, and dropped again.
    again, more = await through_pipeline(
        [*carts, *ticks("40m"), ev("add_to_cart", "50m", customer="broken", product_id="p2"), *ticks("2h")],
        100,
        flush=False,
    )
    assert [orjson.loads(t)["subject"] for t in again.splitlines()] == ["fine"]
    assert [b.outcomes["s"].dropped for b in more] == [{"internal_error": 2}]


@pytest.mark.usefixtures("faulty_detection")
async def test_replay_reports_an_event_that_raised_and_carries_on(tmp_path: Path) -> None:
    lines = [
        orjson.dumps(raw("compare_view", "0s", customer="a", event_id="poison-1")),
        orjson.dumps(raw("compare_view", "0s", customer="b")),
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    problems: list[Problem] = []
    out = io.BytesIO()
    summary = await replay([path], DEFAULTS, out=out, on_problem=problems.append, show_progress=False)
    assert [(p.line, p.reason, p.detail) for p in problems] == [
        (1, "internal_error", "Poisoned: cannot apply poison-1")
    ]
    assert summary.failed == 1
    assert [orjson.loads(t)["subject"] for t in out.getvalue().splitlines()] == ["b"]
    with pytest.raises(ReplayError):
        await replay(
            [path], DEFAULTS, out=io.BytesIO(), on_problem=problems.append, strict=True, show_progress=False
        )


@pytest.mark.usefixtures("faulty_detection")
async def test_many_failures_in_a_batch_cost_one_probe_not_a_redo_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: Counter[str] = Counter()
    for name in ("process", "probe"):
        method = getattr(StreamProcessor, name)

        def counted(
            self: StreamProcessor, *args: Any, _method: Any = method, _name: str = name, **kw: Any
        ) -> Any:
            calls[_name] += 1
            return _method(self, *args, **kw)

        monkeypatch.setattr(StreamProcessor, name, counted)
    mixed = list(with_poison(STREAM, every=10))
    expected, _ = await through_pipeline(STREAM, len(STREAM), flush=False)
    calls.clear()
    got, batches = await through_pipeline(mixed, len(mixed), flush=False)
    assert got == expected
    assert statuses(batches).count(Status.INTERNAL_ERROR) == 30
    assert calls == {"process": 2, "probe": 1}


async def test_positions_never_move_back_when_records_are_read_again() -> None:
    store = MemoryStateStore()
    pipeline = Pipeline(Detector(DEFAULTS), Policy(DEFAULTS.policy), store)
    first = await pipeline.run({"s": STREAM[:100]})
    await pipeline.commit(first, {"s": {"clicks": 100, "orders": 7}})
    # A worker that read the tail again (its offsets were not committed) reached only 60 of
    # the clicks in this batch, but the orders further.
    again = await pipeline.run({"s": []})
    await pipeline.commit(again, {"s": {"clicks": 60, "orders": 9}})
    assert pipeline.positions("s") == {"clicks": 100, "orders": 9}
    assert (await store.checkpoint("s")).positions == {"clicks": 100, "orders": 9}
