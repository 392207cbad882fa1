"""Decisions (cooldown, threshold), duplicates, the window's bounds and the journey stage."""

from __future__ import annotations

import pytest
from helpers import DEFAULTS, DETECTION_ONLY, at, decode, ev, raw, run, state_after

from app.config import Catalogue, load_catalogue
from app.detector import Detector
from app.events import Event
from app.journey import Stage, journey_stage
from app.processor import Status
from app.state.codec import decode_state, encode_state
from app.window import CustomerState

# cooldown


def test_cooldown_suppresses_a_second_trigger_in_event_time() -> None:
    events = [ev("review_view", offset) for offset in ("0s", "59m", "1h")]  # cooldown 1h
    result = run(events)
    assert [d.ts for d in result.detections] == [at("0s"), at("1h")]
    assert result.suppressed == [("review_seeking", "cooldown")]


def test_cooldown_is_per_customer_and_per_moment() -> None:
    events = [
        ev("review_view", "0s", customer="c1"),
        ev("review_view", "1m", customer="c2"),
        ev("store_locator_view", "2m", customer="c1"),
        ev("review_view", "3m", customer="c1"),
    ]
    result = run(events)
    assert [(d.customer_id, d.moment) for d in result.detections] == [
        ("c1", "review_seeking"),
        ("c2", "review_seeking"),
        ("c1", "local_intent"),
    ]
    assert result.suppressed == [("review_seeking", "cooldown")]


def test_an_out_of_order_event_cannot_fire_just_before_the_last_trigger() -> None:
    result = run([ev("review_view", "1m"), ev("review_view", "0s")])
    assert [d.ts for d in result.detections] == [at("1m")]
    assert result.suppressed == [("review_seeking", "cooldown")]


# thresholds


def test_a_raised_threshold_turns_a_candidate_into_below_threshold() -> None:
    strict = load_catalogue(DETECTION_ONLY, overrides={"moments": {"local_intent": {"threshold": 0.8}}})
    events = [ev("store_locator_view", f"{i}m") for i in range(3)]
    result = run(events, strict)
    # 0.7, then 0.75, then 0.8 with count_boost 0.05 per view beyond the first
    assert result.suppressed == [("local_intent", "below_threshold")] * 2
    detection = result.only("local_intent")
    assert (detection.score, detection.threshold, detection.anchor) == (0.8, 0.8, events[2].event_id)


def test_a_disabled_moment_never_fires() -> None:
    off = load_catalogue(DETECTION_ONLY, overrides={"moments": {"local_intent": {"enabled": False}}})
    assert run([ev("store_locator_view")], off).detections == []


# duplicates


def test_a_duplicate_event_changes_nothing() -> None:
    detector, state = Detector(DEFAULTS), CustomerState(customer_id="c1")
    event = ev("compare_view", product_id="p1", category="tv")
    assert [d.moment for d in detector.observe(state, event, event.ts).detections] == ["price_comparison"]
    before = encode_state(state)

    again = detector.observe(state, decode(raw("compare_view", "5m", event_id=event.event_id)), at("5m"))

    assert again.duplicate
    assert again.detections == []
    assert again.suppressed == []
    assert encode_state(state) == before


def test_a_redelivered_event_is_counted_as_a_duplicate() -> None:
    event = ev("add_to_cart", product_id="p1")
    result = run([event, ev("compare_view", "1m"), event], flush=True)
    assert result.statuses == [Status.APPLIED, Status.APPLIED, Status.DUPLICATE]
    assert result.moments() == ["price_comparison", "cart_abandonment"]
    assert result.only("cart_abandonment").evidence == [event.event_id]


# the window's bounds


def test_max_events_keeps_the_newest() -> None:
    capped = load_catalogue(DETECTION_ONLY, overrides={"window": {"max_events": 5}})
    events = [ev("page_view", f"{i}s") for i in range(8)]
    state = state_after(events, capped)
    assert [e.event_id for e in state.entries] == [e.event_id for e in events[3:]]


def test_max_orders_keeps_the_newest() -> None:
    capped = load_catalogue(DETECTION_ONLY, overrides={"window": {"max_orders": 2}})
    events = [ev("purchase", f"{i}m", order_id=f"o{i}") for i in range(3)]
    assert [o.order_id for o in state_after(events, capped).orders] == ["o1", "o2"]


def test_entries_older_than_the_retention_are_pruned() -> None:
    detector = Detector(DEFAULTS)
    assert detector.retention == 32 * 60_000  # the longest window (30m) plus the allowed lateness
    old, edge, new = ev("page_view", "0s"), ev("page_view", "8m"), ev("page_view", "40m")
    assert [e.event_id for e in state_after([old, edge, new]).entries] == [edge.event_id, new.event_id]


def test_orders_older_than_their_retention_are_pruned() -> None:
    short = load_catalogue(DETECTION_ONLY, overrides={"window": {"order_retention": "20h"}})
    events = [
        ev("purchase", "0s", order_id="o1"),
        ev("purchase", "1h", order_id="o2"),
        ev("page_view", "20h30m"),
    ]
    assert [o.order_id for o in state_after(events, short).orders] == ["o2"]


def test_search_text_never_enters_the_state() -> None:
    state = state_after([ev("search", query="Cheap XYZZY headphones near me", filters={"price_max": 9})])
    blob = encode_state(state)
    assert b"XYZZY" not in blob.upper()
    assert b"headphones" not in blob
    assert decode_state(blob) == state
    assert state.entries[0].flags != 0


# journey stage


def stage(events: list[Event], now: str, catalogue: Catalogue) -> Stage:
    journey, window = catalogue.journey, catalogue.window
    return journey_stage(
        state_after(events, catalogue),
        at(now),
        recent=window.stats_window,
        post_purchase=journey.post_purchase,
        loyalty_min_orders=journey.loyalty_min_orders,
    )


def order(offset: str, order_id: str = "o1") -> Event:
    return ev("purchase", offset, order_id=order_id, items=[{"product_id": "p1"}])


LONG_SKEW = load_catalogue(DETECTION_ONLY, overrides={"window": {"max_future_skew": "30d"}})


@pytest.mark.parametrize(
    ("events", "now", "expected"),
    [
        pytest.param([ev("page_view", "0s")], "1m", Stage.AWARENESS, id="page-view"),
        pytest.param([ev("product_view", "0s", product_id="p1")], "1m", Stage.CONSIDERATION, id="browsing"),
        pytest.param(
            [ev("product_view", "0s", product_id="p1")], "31m", Stage.AWARENESS, id="browsed-long-ago"
        ),
        pytest.param([ev("add_to_cart", "0s", product_id="p1")], "2h", Stage.PURCHASE, id="open-cart"),
        pytest.param([ev("checkout_step", "0s", step="shipping")], "1m", Stage.PURCHASE, id="checkout"),
        pytest.param([order("0s"), ev("page_view", "1h")], "1h", Stage.POST_PURCHASE, id="after-order"),
        pytest.param(
            [ev("product_view", "0s", product_id="p1"), order("1m")],
            "5m",
            Stage.POST_PURCHASE,
            id="browsing-before-the-order",
        ),
        pytest.param([order("0s"), ev("page_view", "8d")], "8d", Stage.AWARENESS, id="order-long-ago"),
        pytest.param([order("0s"), ev("refund", "1m", order_id="o1")], "2m", Stage.AWARENESS, id="refunded"),
        pytest.param([order("0s"), order("1h", "o2")], "2h", Stage.LOYALTY, id="two-orders"),
        pytest.param(
            [order("0s"), order("1h", "o2"), ev("product_view", "2h", product_id="p2")],
            "2h",
            Stage.CONSIDERATION,
            id="loyal-customer-browsing",
        ),
        pytest.param(
            [order("0s"), ev("add_to_cart", "1h", product_id="p2")], "1h", Stage.PURCHASE, id="new-cart"
        ),
    ],
)
def test_journey_stage(events: list[Event], now: str, expected: Stage) -> None:
    assert stage(events, now, LONG_SKEW) == expected


def test_triggers_carry_the_journey_stage_and_window_statistics() -> None:
    events = [
        ev("search", "0s", query="tv"),
        ev("product_view", "1m", product_id="p1", category="tv"),
        ev("compare_view", "2m", product_id="p2", category="tv"),
    ]
    detection = run(events).only("price_comparison")
    assert detection.journey_stage == Stage.CONSIDERATION
    assert detection.window == {
        "events": 3,
        "product_views": 1,
        "searches": 1,
        "distinct_products": 2,
        "distinct_categories": 1,
        "span_seconds": 120,
    }
