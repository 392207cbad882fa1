"""Event time: the clock, the watermark, late and far-ahead events, and batching independence."""

from __future__ import annotations

from helpers import (
    DEFAULTS,
    DETECTION_ONLY,
    at,
    ev,
    pipeline_triggers,
    random_stream,
    run,
    ticks,
    trigger_bytes,
    views,
)

from app.clock import EventClock
from app.config import load_catalogue
from app.detector import Detector
from app.processor import Status, StreamProcessor
from app.state.codec import encode_state
from app.window import CustomerState


def test_the_watermark_trails_the_latest_event_time_by_the_allowed_lateness() -> None:
    processor = StreamProcessor(Detector(DEFAULTS))
    processor.process(ticks("9m")[:-1], {})
    assert processor.watermark is None  # not enough events yet to tell the time
    processor.process([ev("page_view", "9m"), *ticks("10m")], {})
    assert processor.clock == at("10m")
    assert processor.watermark == at("8m")


def test_one_event_cannot_drag_the_clock_ahead() -> None:
    hour_ahead = ev("page_view", "1h", customer="skewed-device")
    result = run([*ticks("0s"), hour_ahead, *ticks("1m")])
    assert result.processor.clock == at("1m")
    assert Status.LATE not in result.statuses


def test_late_events_are_counted_and_change_nothing() -> None:
    processor, states = StreamProcessor(Detector(DEFAULTS)), {}
    processor.process([ev("page_view", "10m"), *ticks("10m")], states)
    before = encode_state(states["c1"])

    # Older than the watermark (8m): would otherwise compare prices, or open a new customer.
    late = [ev("compare_view", at("8m") - at("0s") - 1), ev("store_locator_view", "1m", customer="c2")]
    outcome = processor.process(late, states)

    assert outcome.statuses == [Status.LATE, Status.LATE]
    assert outcome.detections == []
    assert outcome.touched == set()
    assert encode_state(states["c1"]) == before
    assert "c2" not in states


def test_an_event_exactly_at_the_watermark_is_applied() -> None:
    result = run([*ticks("10m"), ev("compare_view", "8m")])
    assert result.statuses[-1] == Status.APPLIED
    assert result.only("price_comparison").ts == at("8m")


def test_events_too_far_ahead_are_rejected_without_moving_the_clock() -> None:
    skew = DEFAULTS.window.max_future_skew
    result = run([*ticks("0s"), ev("compare_view", skew + 1), ev("page_view", "1m")])
    assert result.statuses[-2:] == [Status.TOO_FAR_AHEAD, Status.APPLIED]
    assert result.detections == []
    assert result.processor.clock == at("0s")
    assert [e.ts for e in result.states["c1"].entries] == [at("1m")]


def test_the_clock_follows_a_real_jump_once_events_confirm_it() -> None:
    # A quiet partition wakes up after more than the skew: its first events are
    # rejected until enough of them agree on the new time.
    later = DEFAULTS.window.max_future_skew + 3_600_000
    result = run([*ticks("0s"), *ticks(later, customer="c1"), ev("compare_view", later)])
    assert result.statuses[3:] == [Status.TOO_FAR_AHEAD, Status.TOO_FAR_AHEAD, Status.APPLIED, Status.APPLIED]
    assert result.processor.clock == at(later)
    assert result.moments() == ["price_comparison"]


def test_out_of_order_events_within_the_lateness_are_inserted_in_time_order() -> None:
    events = [ev("page_view", "0s"), ev("page_view", "2m"), ev("page_view", "1m"), ev("page_view", "1m")]
    entries = run(events).states["c1"].entries
    assert [e.ts for e in entries] == [at("0s"), at("1m"), at("1m"), at("2m")]
    assert [e.event_id for e in entries] == [
        events[0].event_id,
        events[2].event_id,
        events[3].event_id,
        events[1].event_id,
    ]


def test_an_out_of_order_event_is_evaluated_against_what_came_before_it() -> None:
    first, second, third = views("tv", "0s", "1m", "90s")
    detection = run([first, second, ev("page_view", "2m"), third]).only("price_comparison")
    assert (detection.ts, detection.anchor) == (at("90s"), third.event_id)
    assert detection.evidence == [first.event_id, second.event_id, third.event_id]


def test_deadlines_survive_a_restart_of_the_processor() -> None:
    first = StreamProcessor(Detector(DEFAULTS))
    states: dict[str, CustomerState] = {}
    first.process([ev("add_to_cart", "0s", product_id="p1")], states)

    resumed = StreamProcessor(Detector(DEFAULTS), clock=first.event_clock.copy(), deadlines=first.deadlines)
    tick = ticks("40m")
    assert resumed.due(tick) == {"c1"}
    outcome = resumed.process(tick, states)

    assert [(d.moment, d.ts) for d in outcome.detections] == [("cart_abandonment", at("30m"))]
    assert outcome.deadlines == {"c1": None}


def test_a_due_deadline_of_a_customer_without_state_is_dropped() -> None:
    # The customer was erased (or expired) since the deadline was armed: nothing to fire.
    processor = StreamProcessor(Detector(DEFAULTS), clock=EventClock(at("0s")), deadlines={"c1": at("30m")})
    outcome = processor.process(ticks("40m"), {})
    assert outcome.detections == []
    assert outcome.deadlines == {"c1": None}
    assert processor.deadlines == {}


# batching independence

STREAM = random_stream(seed=7, count=400)


def test_the_random_stream_exercises_every_path() -> None:
    result = run(STREAM, flush=True)
    assert {Status.APPLIED, Status.LATE, Status.DUPLICATE} <= set(result.statuses)
    assert set(result.moments()) == set(Detector(DEFAULTS).moments)


def test_processing_does_not_depend_on_batch_boundaries() -> None:
    expected = trigger_bytes(run(STREAM, flush=True, batch_size=1).detections)
    assert expected.count(b"\n") > 20
    for size in (7, 1000):
        assert trigger_bytes(run(STREAM, flush=True, batch_size=size).detections) == expected


async def test_the_pipeline_does_not_depend_on_batch_boundaries() -> None:
    expected = trigger_bytes(run(STREAM, flush=True).detections)
    for size in (1, 7, 1000):
        assert await pipeline_triggers(STREAM, size) == expected


async def test_a_late_event_still_sees_the_cooldown_after_the_clock_passes_its_end() -> None:
    # c1's review_seeking cooldown ends at 1h; the clock reaches 1h, then a c1 event from 59m
    # arrives within the allowed lateness. Its state must not have been expired in between.
    events = [
        ev("review_view", "0s", customer="c1"),
        ev("page_view", "1h", customer="c2"),
        ev("review_view", "59m", customer="c1"),
    ]
    for size in (1, 1000):
        assert (await pipeline_triggers(events, size)).count(b"micromoment.review_seeking.v1") == 1


async def test_a_pending_deadline_outlives_a_short_cooldown() -> None:
    # A timeout longer than every window and a cooldown shorter than the lateness: the state
    # must still be in the store when the watermark passes the deadline.
    catalogue = load_catalogue(
        DETECTION_ONLY, overrides={"moments": {"cart_abandonment": {"timeout": "1h", "cooldown": "1m"}}}
    )
    events = [ev("add_to_cart", "0s", product_id="p1")] + [
        ev("page_view", f"{m}m", customer="c2") for m in range(55, 66)
    ]
    triggers = await pipeline_triggers(events, 1, catalogue)
    assert triggers.count(b"micromoment.cart_abandonment.v1") == 1
    assert b'"time":"2026-11-25T11:00:00.000Z"' in triggers
