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
from app.policy import Policy
from app.processor import PARK_LIMIT, Status, StreamProcessor
from app.state.codec import encode_state
from app.window import CustomerState


def test_the_watermark_trails_the_latest_event_time_by_the_allowed_lateness() -> None:
    processor = StreamProcessor(Detector(DEFAULTS), Policy(DEFAULTS.policy))
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


def test_no_number_of_events_from_one_device_moves_the_clock() -> None:
    # A device whose clock is years (or five hours) ahead: however many of its events come
    # in a row, the stream's time stays where the other customers are.
    for ahead in ("5h", "800d"):
        wrong = [ev("page_view", ahead, customer="wrong-clock") for _ in range(50)]
        result = run([*ticks("0s"), *wrong, *ticks("1m"), *wrong, ev("page_view", "2m")])
        assert result.processor.clock == at("1m")
        assert result.statuses[-1] == Status.APPLIED, ahead
        assert Status.LATE not in result.statuses


def test_three_distinct_customers_move_the_clock() -> None:
    processor = StreamProcessor(Detector(DEFAULTS), Policy(DEFAULTS.policy))
    processor.process([ev("page_view", "5m", customer=c) for c in ("a", "b")], {})
    assert processor.clock is None
    processor.process([ev("page_view", "6m", customer="c")], {})
    assert processor.clock == at("5m")


def test_a_wrong_device_clock_harms_only_its_own_customer() -> None:
    # Five hours ahead is within the skew: accepted into that customer's window, so their own
    # honest events that follow are late. Nobody else's are, and no deadline fires early.
    cart = ev("add_to_cart", "0s", customer="shopper", product_id="p1")
    ahead = [ev("page_view", "5h", customer="local-time-as-utc") for _ in range(3)]
    honest = [ev("page_view", "1m", customer="local-time-as-utc"), ev("page_view", "1m", customer="shopper")]
    result = run([*ticks("0s"), cart, *ahead, *ticks("1m"), *honest])
    assert result.statuses[-2:] == [Status.LATE, Status.APPLIED]
    assert result.detections == []
    assert result.processor.watermark == at("1m") - at("2m") + at("0s")


def test_lateness_is_judged_against_the_customers_own_latest_event() -> None:
    # The stream is at 30m, but c1's latest event was at 1m: their event from 2m ago (behind
    # the stream's watermark) is still applied, and evaluated as of its own time.
    result = run([*views("tv", "0s", "1m"), *ticks("30m"), *views("tv", "59s", customer="c1")])
    assert result.statuses[-1] == Status.APPLIED


def test_an_event_of_a_customer_with_nothing_held_is_judged_against_the_stream() -> None:
    result = run(
        [*ticks("30m"), ev("page_view", "27m", customer="new"), ev("page_view", "28m", customer="n2")]
    )
    assert result.statuses[-2:] == [Status.LATE, Status.APPLIED]


def test_a_redelivered_event_behind_its_customer_is_a_duplicate_not_late() -> None:
    first = ev("page_view", "0s")
    result = run([first, ev("page_view", "10m"), first])
    assert result.statuses == [Status.APPLIED, Status.APPLIED, Status.DUPLICATE]


def test_lateness_does_not_depend_on_whether_a_store_dropped_a_spent_state() -> None:
    # c1's state is of no use any more by the time c1's old event comes: whether the store
    # still holds it (Redis expires by wall clock) or not (memory, by event time), the event
    # is judged against the stream, and late.
    old = ev("page_view", "0s")
    kept = run([old, *ticks("3h")])
    late = ev("page_view", "1m")
    assert kept.processor.process([late], kept.states).statuses == [Status.LATE]
    dropped = run([old, *ticks("3h")])
    del dropped.states["c1"]
    assert dropped.processor.process([late], dropped.states).statuses == [Status.LATE]


def test_a_lagging_input_holds_deadlines_and_lateness_back() -> None:
    processor, states = StreamProcessor(Detector(DEFAULTS), Policy(DEFAULTS.policy)), {}
    processor.process([ev("add_to_cart", "0s", product_id="p1")], states)
    # Another topic runs ahead to 40m while the one with the purchase lags at 10m.
    ahead = processor.process(ticks("40m"), states, hold=at("10m"))
    assert ahead.detections == []
    assert processor.watermark == at("8m")
    behind = processor.process(
        [
            ev("purchase", "12m", order_id="o1", items=[{"product_id": "p1"}]),
            ev("page_view", "9m", customer="x"),
        ],
        states,
        hold=at("10m"),
    )
    assert behind.statuses == [Status.APPLIED, Status.APPLIED]
    assert processor.process(ticks("41m"), states).detections == []  # bought in time: nothing to fire


def test_a_quiet_stream_follows_the_time_of_the_rest_of_the_deployment() -> None:
    processor, states = StreamProcessor(Detector(DEFAULTS), Policy(DEFAULTS.policy)), {}
    processor.process([*ticks("0s"), ev("add_to_cart", "1m", product_id="p1")], states)
    assert processor.due([], at("40m")) == {"c1"}
    outcome = processor.advance(at("40m"), states)
    assert [(d.moment, d.ts) for d in outcome.detections] == [("cart_abandonment", at("31m"))]
    assert processor.clock == at("40m")
    assert processor.advance(at("20m"), states).detections == []  # never back
    assert processor.clock == at("40m")


def test_a_stream_quiet_for_longer_than_the_skew_waits_for_the_deployments_time() -> None:
    # A partition quiet for more than the skew: its first event is far ahead of its own clock.
    # It waits (parked) rather than being rejected, and goes as soon as the deployment's time,
    # which the other partitions have moved on, reaches this stream.
    later = DEFAULTS.window.max_future_skew + 3_600_000
    processor, states = StreamProcessor(Detector(DEFAULTS), Policy(DEFAULTS.policy)), {}
    processor.process(ticks("0s"), states)
    compare = ev("compare_view", later)
    assert processor.process([compare], states).statuses == [Status.PARKED]
    assert [event for event, _ in processor.parked] == [compare]
    assert processor.due([], at(later)) == {"c1"}
    outcome = processor.advance(at(later) - 60_000, states)
    assert outcome.unparked == [(compare, Status.APPLIED, "")]
    assert [d.moment for d in outcome.detections] == ["price_comparison"]
    assert processor.parked == []


def test_before_the_clock_is_known_far_ahead_is_judged_against_what_came_before() -> None:
    # One customer alone cannot confirm a time, yet an event years ahead is still refused.
    events = [ev("page_view", "0s"), ev("page_view", "800d"), ev("add_to_cart", "1m", product_id="p")]
    result = run(events, flush=True)
    assert result.statuses == [Status.APPLIED, Status.PARKED, Status.APPLIED]
    assert result.unparked == [(events[1].event_id, Status.TOO_FAR_AHEAD)]
    assert result.processor.clock is None


def test_late_events_are_counted_and_change_nothing() -> None:
    processor, states = StreamProcessor(Detector(DEFAULTS), Policy(DEFAULTS.policy)), {}
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


def test_an_event_too_far_ahead_waits_without_moving_the_clock_and_is_refused_if_nothing_comes() -> None:
    skew = DEFAULTS.window.max_future_skew
    far = ev("compare_view", skew + 1)
    result = run([*ticks("0s"), far, ev("page_view", "1m")], flush=True)
    assert result.statuses[-2:] == [Status.PARKED, Status.APPLIED]
    assert result.unparked == [(far.event_id, Status.TOO_FAR_AHEAD)]  # the end of input came first
    assert result.detections == []
    assert result.processor.clock == at("0s")
    assert [e.ts for e in result.states["c1"].entries] == [at("1m")]


def test_the_clock_follows_a_real_jump_once_customers_confirm_it_and_nothing_is_lost() -> None:
    # The whole stream jumps (a shop closed for more than the skew reopens): the first
    # customers' events wait until a third confirms the new time, then all are applied.
    later = DEFAULTS.window.max_future_skew + 3_600_000
    jump = ticks(later, customer="back")
    result = run([*ticks("0s"), *jump, ev("compare_view", later)])
    assert result.statuses[3:] == [Status.PARKED, Status.PARKED, Status.APPLIED, Status.APPLIED]
    assert result.unparked == [(jump[0].event_id, Status.APPLIED), (jump[1].event_id, Status.APPLIED)]
    assert result.processor.clock == at(later)
    assert result.moments() == ["price_comparison"]


def test_a_wrong_clock_waits_until_the_stream_moves_on_without_it() -> None:
    wrong = ev("page_view", "800d", customer="wrong-clock")
    result = run([*ticks("0s"), wrong, *ticks("1m"), *ticks("2m")])
    assert result.unparked == []  # the stream moved on by less than the allowed lateness
    result = run([*ticks("0s"), wrong, *ticks("1m"), *ticks("2m"), *ticks("2m1s")])
    assert result.unparked == [(wrong.event_id, Status.TOO_FAR_AHEAD)]
    assert result.processor.parked == []


def test_at_most_so_many_events_wait() -> None:
    wrong = [ev("page_view", "800d", customer="wrong-clock") for _ in range(PARK_LIMIT + 2)]
    result = run([*ticks("0s"), *wrong])
    assert result.unparked == [(w.event_id, Status.TOO_FAR_AHEAD) for w in wrong[:2]]
    assert len(result.processor.parked) == PARK_LIMIT


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
    first = StreamProcessor(Detector(DEFAULTS), Policy(DEFAULTS.policy))
    states: dict[str, CustomerState] = {}
    first.process([ev("add_to_cart", "0s", product_id="p1")], states)

    resumed = StreamProcessor(
        Detector(DEFAULTS), Policy(DEFAULTS.policy), clock=first.event_clock.copy(), deadlines=first.deadlines
    )
    tick = ticks("40m")
    assert resumed.due(tick) == {"c1"}
    outcome = resumed.process(tick, states)

    assert [(d.moment, d.ts) for d in outcome.detections] == [("cart_abandonment", at("30m"))]
    assert outcome.deadlines == {"c1": None}


def test_a_due_deadline_of_a_customer_without_state_is_dropped() -> None:
    # The customer was erased (or expired) since the deadline was armed: nothing to fire.
    processor = StreamProcessor(
        Detector(DEFAULTS), Policy(DEFAULTS.policy), clock=EventClock(at("0s")), deadlines={"c1": at("30m")}
    )
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
