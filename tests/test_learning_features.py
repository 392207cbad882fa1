"""Feature extraction: exact values on hand-built windows, a fixed key set, finite numbers."""

from __future__ import annotations

import math

import pytest
from helpers import DEFAULTS, at, ev, state_after

from app.events import Kind
from app.journey import Stage
from app.learning.features import (
    BEHAVIOUR_KEYS,
    COUNTED_TYPES,
    FEATURE_KEYS,
    SESSION_CAP_MINUTES,
    SINCE_PURCHASE_CAP_HOURS,
    behaviour,
    behaviour_vector,
    dense,
    features,
    sparse,
)
from app.signals import Signal
from app.window import Cart, CustomerState, Entry, Order

MINUTE = 60_000
HOUR = 60 * MINUTE
RECENT = 30 * MINUTE
NOW = 1000 * HOUR  # event time of the candidate in the hand-built states


def shopper() -> CustomerState:
    """A customer comparing prices, with one old order and an open cart."""
    state = CustomerState(
        customer_id="c1",
        channel="web",
        device="android",
        session_id="s2",
        session_start=NOW - 12 * MINUTE,
        last_ts=NOW,
    )
    state.entries = [
        # Outside the recent window: never counted.
        Entry(NOW - 40 * MINUTE, Kind.PRODUCT_VIEW, "old", "p9", "laptops", 2000.0),
        Entry(NOW - 10 * MINUTE, Kind.SEARCH, "e1", flags=Signal.PRICE_WORDS | Signal.PRICE_SORT),
        Entry(NOW - 9 * MINUTE, Kind.PRODUCT_VIEW, "e2", "p1", "tv", 300.0),
        Entry(NOW - 8 * MINUTE, Kind.PRODUCT_VIEW, "e3", "p2", "tv", 500.0),
        Entry(NOW - 7 * MINUTE, Kind.PRODUCT_VIEW, "e4", "p1", "tv", 300.0),
        Entry(NOW - 6 * MINUTE, Kind.PRODUCT_VIEW, "e5", "p3", "audio", 100.0),
        Entry(NOW - 5 * MINUTE, Kind.ADD_TO_CART, "e6", "p2", "tv", 500.0),
        Entry(NOW - 4 * MINUTE, Kind.CHECKOUT_STEP, "e7", detail="payment"),
        Entry(NOW - 3 * MINUTE, Kind.CHECKOUT_STEP, "e8", detail="payment"),
        Entry(NOW - 2 * MINUTE, Kind.CHECKOUT_STEP, "e9", detail="shipping"),
        Entry(NOW - 90_000, Kind.SEARCH, "e10", flags=Signal.PRICE_WORDS),
        Entry(NOW, Kind.COMPARE_VIEW, "e11", category="tv"),
        # After the candidate (a later event, when evaluating a late one): never counted.
        Entry(NOW + MINUTE, Kind.PRODUCT_VIEW, "e12", "p4", "tv", 9000.0),
    ]
    state.orders = [
        Order(NOW - 50 * HOUR, "o-e1", "o1", ["p7"]),
        Order(NOW - 20 * HOUR, "o-e2", "o2", ["p8"], refunded=True),
    ]
    state.cart = Cart(["p2"], ["e6"], NOW - 2 * MINUTE, None, "e6", value=500.0, checkout_started=True)
    return state


def test_exact_values_of_a_hand_built_window() -> None:
    x = features(shopper(), NOW, recent=RECENT)
    expected = {
        "n_product_view": 4.0,
        "n_search": 2.0,
        "n_add_to_cart": 1.0,
        "n_checkout_step": 3.0,
        "n_compare_view": 1.0,
        "n_page_view": 0.0,
        "n_purchase": 0.0,
        "events": 11.0,
        # 11 events over the 10 minutes since the first recent one
        "events_per_min": 1.1,
        "products": 3.0,
        "categories": 2.0,
        # viewed products: 300, 500, 300, 100
        "price_min": 100.0,
        "price_max": 500.0,
        "price_mean": 300.0,
        "price_spread": 400.0,
        "price_spread_ratio": 400.0 / 300.0,
        "step_repeats": 2.0,
        "sig_price_words": 2.0,
        "sig_price_sort": 1.0,
        "sig_review_words": 0.0,
        "orders": 1.0,
        "refunds": 1.0,
        # the latest order not refunded
        "since_purchase_h": 50.0,
        "no_purchase": 0.0,
        "session_min": 12.0,
        "gap_s": 90.0,
        "cart_items": 1.0,
        "cart_value": 500.0,
        "checkout_started": 1.0,
        "channel_web": 1.0,
        "channel_other": 0.0,
        "device_android": 1.0,
        "device_ios": 0.0,
        "device_other": 0.0,
        "stage_purchase": 1.0,
        "stage_consideration": 0.0,
    }
    assert {key: x[key] for key in expected} == pytest.approx(expected)


def test_the_key_set_is_fixed_ordered_and_finite() -> None:
    empty = features(CustomerState(customer_id="c0"), NOW, recent=RECENT)
    full = features(shopper(), NOW, recent=RECENT)
    assert tuple(empty) == tuple(full) == FEATURE_KEYS
    assert len(set(FEATURE_KEYS)) == len(FEATURE_KEYS)
    for x in (empty, full):
        assert all(type(value) is float and math.isfinite(value) for value in x.values())


def test_only_behaviour_is_counted_by_kind() -> None:
    assert set(COUNTED_TYPES) <= set(Kind.NAMES)
    assert [key for key in FEATURE_KEYS if key.startswith("n_")] == [f"n_{name}" for name in COUNTED_TYPES]
    for name in ("consent", "suppression", "forget"):
        assert f"n_{name}" not in FEATURE_KEYS


def test_an_empty_window() -> None:
    x = features(CustomerState(customer_id="c0"), NOW, recent=RECENT)
    assert x["events"] == x["events_per_min"] == x["price_max"] == x["session_min"] == 0.0
    assert x["since_purchase_h"] == SINCE_PURCHASE_CAP_HOURS
    assert x["no_purchase"] == 1.0
    assert x["gap_s"] == RECENT / 1000
    assert x["channel_other"] == x["device_other"] == x["stage_awareness"] == 1.0
    assert sum(x.values()) == SINCE_PURCHASE_CAP_HOURS + 1 + RECENT / 1000 + 3


@pytest.mark.parametrize(
    ("channel", "device", "channel_key", "device_key"),
    [
        ("app", "ios", "channel_app", "device_ios"),
        ("kiosk", "smart_fridge", "channel_other", "device_other"),
        (None, None, "channel_other", "device_other"),
    ],
)
def test_strings_are_one_hot_over_a_bounded_set(
    channel: str | None, device: str | None, channel_key: str, device_key: str
) -> None:
    state = CustomerState(customer_id="c1", channel=channel, device=device)
    x = features(state, NOW, recent=RECENT)
    assert tuple(x) == FEATURE_KEYS  # an unknown value never becomes a key
    channels = {key: value for key, value in x.items() if key.startswith("channel_")}
    devices = {key: value for key, value in x.items() if key.startswith("device_")}
    assert [key for key, value in channels.items() if value] == [channel_key]
    assert [key for key, value in devices.items() if value] == [device_key]


def test_caps() -> None:
    state = CustomerState(customer_id="c1", session_id="s1", session_start=0)
    state.orders = [Order(0, "e", "o", [])]
    x = features(state, 400 * 24 * HOUR, recent=RECENT)
    assert x["since_purchase_h"] == SINCE_PURCHASE_CAP_HOURS
    assert x["no_purchase"] == 0.0
    assert x["session_min"] == SESSION_CAP_MINUTES


def test_a_given_stage_is_used() -> None:
    x = features(shopper(), NOW, recent=RECENT, stage=Stage.LOYALTY)
    assert [key for key in x if key.startswith("stage_") and x[key]] == ["stage_loyalty"]


def test_the_rate_is_over_the_active_span_of_at_least_a_minute() -> None:
    state = CustomerState(customer_id="c1")
    state.entries = [Entry(NOW - 10_000, Kind.PAGE_VIEW, "a"), Entry(NOW, Kind.PAGE_VIEW, "b")]
    assert features(state, NOW, recent=RECENT)["events_per_min"] == 2.0
    state.entries = [Entry(NOW - 4 * MINUTE, Kind.PAGE_VIEW, "a"), Entry(NOW, Kind.PAGE_VIEW, "b")]
    assert features(state, NOW, recent=RECENT)["events_per_min"] == 0.5


def test_recency_skips_events_at_the_same_time() -> None:
    state = CustomerState(customer_id="c1")
    state.entries = [
        Entry(NOW - 5_000, Kind.PAGE_VIEW, "a"),
        Entry(NOW, Kind.SEARCH, "b"),
        Entry(NOW, Kind.PAGE_VIEW, "c"),
    ]
    assert features(state, NOW, recent=RECENT)["gap_s"] == 5.0


def test_features_of_a_state_built_by_the_detector() -> None:
    session = {"session_id": "s1", "channel": "app", "device": "ios"}
    events = [
        ev("search", "0s", query="cheap tv", sort="price_asc", **session),
        *(
            ev("product_view", f"{i}m", product_id=f"tv-{i}", category="tv", price=100.0 * i, **session)
            for i in (1, 2, 3)
        ),
        ev("compare_view", "4m", category="tv", **session),
    ]
    state = state_after(events)
    now = at("4m")
    x = features(state, now, recent=DEFAULTS.window.stats_window)
    assert x["n_product_view"] == 3.0
    assert x["n_compare_view"] == 1.0
    assert x["categories"] == 1.0
    assert x["price_spread"] == 200.0
    assert x["sig_price_words"] == x["sig_price_sort"] == 1.0
    assert x["channel_app"] == x["device_ios"] == 1.0
    assert x["session_min"] == 4.0
    assert x["gap_s"] == 60.0
    assert x["stage_consideration"] == 1.0


def test_behaviour_vector() -> None:
    v = behaviour_vector(shopper(), NOW, recent=RECENT)
    assert tuple(v) == BEHAVIOUR_KEYS
    assert all(0.0 <= value <= 1.0 for value in v.values())
    # 11 events: 4 product views; compare, 2 searches; cart and 3 checkout steps
    assert v["browse"] == round(4 / 11, 4)
    assert v["research"] == round(3 / 11, 4)
    assert v["cart"] == round(4 / 11, 4)
    assert v["support"] == v["local"] == v["buy"] == 0.0
    assert v["loyalty"] == 0.2
    assert v["mobile"] == 1.0
    assert v["app"] == 0.0
    assert v["recent_buyer"] == round(1 - 50 / SINCE_PURCHASE_CAP_HOURS, 4)
    assert behaviour(features(CustomerState(customer_id="c0"), NOW, recent=RECENT)) == dict.fromkeys(
        BEHAVIOUR_KEYS, 0.0
    )


def test_features_are_deterministic() -> None:
    assert features(shopper(), NOW, recent=RECENT) == features(shopper(), NOW, recent=RECENT)


def test_sparse_and_dense() -> None:
    x = features(shopper(), NOW, recent=RECENT)
    compact = sparse(x)
    assert all(compact.values())
    assert len(compact) == sum(1 for value in x.values() if value) < len(x)
    assert dense(compact) == x
    assert tuple(dense(compact)) == FEATURE_KEYS
    assert dense({}) == dict.fromkeys(FEATURE_KEYS, 0.0)
