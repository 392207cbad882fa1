"""A stream holds only its near deadlines; the store keeps the rest, and nothing fires differently."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import pytest

from app.config import load_catalogue
from app.decoding import decode_event
from app.detection import Detection
from app.detector import Detector
from app.events import Event
from app.pipeline import Pipeline
from app.policy import Policy
from app.processor import END_OF_TIME
from app.state.memory import MemoryStateStore
from app.traffic import TrafficGenerator
from tests.helpers import DEFAULTS, at, ev, ticks, trigger_bytes

SHIPPED = load_catalogue()  # quiet hours defer triggers: deadlines hours ahead
MINUTE = 60_000


def _day() -> list[Event]:
    start = datetime(2026, 11, 25, 6, tzinfo=UTC)
    generator = TrafficGenerator(seed=7, customers=400, start=start, events_per_second=0.25)
    decoded = [decode_event(orjson.dumps(e)) for e in generator.events(count=12_000)]
    return [e for e in decoded if isinstance(e, Event)]


DAY = _day()


class Replayed:
    def __init__(self) -> None:
        self.detections: list[Detection] = []
        self.deferred = 0
        self.most_held = 0
        self.stored: dict[str, int] = {}


async def _replay(events: Sequence[Event], batch: int, lookahead: int | None) -> Replayed:
    store = MemoryStateStore()
    pipeline = Pipeline(Detector(SHIPPED), Policy(SHIPPED.policy), store, lookahead=lookahead)
    replayed = Replayed()
    for i in range(0, len(events), batch):
        done = await pipeline.run({"p0": events[i : i + batch]})
        await pipeline.commit(done)
        replayed.detections += done.detections
        replayed.deferred += sum(o.deferred for o in done.outcomes.values())
        processor = pipeline.processor("p0")
        replayed.most_held = max(replayed.most_held, len(processor.deadlines))
        # Everything held is in the store, and nothing up to the horizon is missing.
        stored = await store.deadlines("p0")
        assert {c: d for c, d in stored.items() if d <= processor.horizon} == processor.deadlines
    replayed.stored = await store.deadlines("p0")
    done = await pipeline.flush("p0")
    await pipeline.commit(done)
    replayed.detections += done.detections
    return replayed


def test_the_days_triggers_and_stored_deadlines_do_not_depend_on_how_many_are_held() -> None:
    everything = asyncio.run(_replay(DAY, 200, None))
    assert everything.deferred > 20  # quiet hours at work
    assert len(everything.detections) > 100
    for batch, lookahead in [(200, MINUTE), (37, 1), (1_000, 30 * MINUTE)]:
        near = asyncio.run(_replay(DAY, batch, lookahead))
        assert trigger_bytes(near.detections) == trigger_bytes(everything.detections), (batch, lookahead)
        assert near.stored == everything.stored
        assert near.deferred == everything.deferred
    near = asyncio.run(_replay(DAY, 200, MINUTE))
    assert near.most_held < everything.most_held / 3


def test_one_at_a_time_too() -> None:
    events = DAY[:3_000]
    everything = asyncio.run(_replay(events, 1, None))
    near = asyncio.run(_replay(events, 1, 1))
    assert trigger_bytes(near.detections) == trigger_bytes(everything.detections)
    assert near.stored == everything.stored


@pytest.mark.parametrize("quorum", [False, True])
def test_devices_far_ahead_pull_in_far_deadlines_only_once_customers_agree(quorum: bool) -> None:
    pipeline = Pipeline(Detector(SHIPPED), Policy(SHIPPED.policy), MemoryStateStore(), lookahead=MINUTE)
    ahead = ["x", "y", "z"] if quorum else ["x", "x", "x"]

    async def run() -> int:
        await pipeline.commit(
            await pipeline.run({"p0": [ev("product_view", "0m", customer=c) for c in "abc"]})
        )
        batch = [
            ev("product_view", "1m", customer="d"),
            *(ev("product_view", "6d", customer=c) for c in ahead),
        ]
        await pipeline.commit(await pipeline.run({"p0": batch}))
        return pipeline.processor("p0").horizon

    horizon, start = asyncio.run(run()), at("0m")
    assert horizon == (at("6d") if quorum else start) + MINUTE


def test_a_stream_holds_none_until_its_time_is_known() -> None:
    pipeline = Pipeline(Detector(SHIPPED), Policy(SHIPPED.policy), MemoryStateStore(), lookahead=MINUTE)

    async def run() -> tuple[int, int]:
        await pipeline.commit(await pipeline.run({"p0": [ev("product_view", "3d", customer="x")]}))
        first = pipeline.processor("p0").horizon
        batch = [ev("product_view", f"{m}m", customer=c) for m, c in enumerate("abcab")]
        await pipeline.commit(await pipeline.run({"p0": batch}))
        return first, pipeline.processor("p0").horizon

    first, then = asyncio.run(run())
    assert first < at("0m")
    # As far as the clock could have got: the third latest of the customers' latest times.
    assert then == at("3m") + MINUTE


def test_a_customers_own_event_fires_their_deadline_that_only_the_store_holds() -> None:
    # The stream's clock stays at 0m; the customer's own event, 40 minutes on, proves their
    # cart's deadline (30 minutes, far past the horizon) has passed.
    batches = [
        [*ticks("0m"), ev("add_to_cart", "0m", product_id="p1", price=20.0)],
        [ev("product_view", "40m", product_id="p2")],
    ]

    async def run(lookahead: int | None) -> list[str]:
        pipeline = Pipeline(
            Detector(DEFAULTS), Policy(DEFAULTS.policy), MemoryStateStore(), lookahead=lookahead
        )
        moments = []
        for events in batches:
            batch = await pipeline.run({"p0": events})
            await pipeline.commit(batch)
            moments += [d.moment for d in batch.detections]
        assert pipeline.processor("p0").horizon == (at("0m") + MINUTE if lookahead else END_OF_TIME)
        return moments

    assert asyncio.run(run(MINUTE)) == asyncio.run(run(None)) == ["cart_abandonment"]
