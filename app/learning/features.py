"""A customer's window as numbers: the features every moment model scores and learns from.

:func:`features` describes the window as of ``now`` (a candidate's event time)
in one pass over the last ``recent`` ms of entries. The key set is fixed
(:data:`FEATURE_KEYS`, always all of them, always in that order): River's
scaler and linear models treat a missing key differently from a zero, and a
bounded key set keeps models and stored examples bounded whatever producers
send. Free-form strings (channel, device) are one-hot over a small known set
plus ``other``; no raw string ever becomes a key.

:func:`behaviour_vector` condenses the same description into a dozen values in
``[0, 1]``, comparable by Euclidean distance, for clustering customers into
segments (:mod:`app.learning.segments`).

Only the window is read, never the wall clock, so a replay computes the same
features every time.

>>> from app.window import CustomerState, Entry
>>> state = CustomerState(customer_id="c1", channel="app", device="ios", session_id="s1")
>>> state.entries = [
...     Entry(0, Kind.SEARCH, "e1", flags=Signal.PRICE_WORDS),
...     Entry(30_000, Kind.PRODUCT_VIEW, "e2", "p1", "tv", 400.0),
...     Entry(90_000, Kind.PRODUCT_VIEW, "e3", "p2", "tv", 600.0),
... ]
>>> x = features(state, 120_000, recent=1_800_000)
>>> x["n_product_view"], x["products"], x["price_spread"], x["sig_price_words"], x["gap_s"]
(2.0, 2.0, 200.0, 1.0, 30.0)
>>> x["events_per_min"], x["channel_app"], x["device_ios"], x["stage_consideration"]
(1.5, 1.0, 1.0, 1.0)
>>> tuple(x) == FEATURE_KEYS
True
>>> v = behaviour_vector(state, 120_000, recent=1_800_000)
>>> v["browse"], v["research"], v["mobile"]
(0.6667, 0.3333, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import repeat
from typing import Final

from app.events import BEHAVIOUR_TYPES, Kind
from app.journey import Stage, journey_stage
from app.signals import Signal
from app.window import CustomerState, between

# The journey settings :func:`features` assumes when not given the stage (the shipped defaults).
POST_PURCHASE: Final = 7 * 86_400_000
LOYALTY_MIN_ORDERS: Final = 2
# Caps, so one extreme customer cannot dominate a scaler's statistics.
SINCE_PURCHASE_CAP_HOURS: Final = 30 * 24.0  # the window's order retention
SESSION_CAP_MINUTES: Final = 240.0

CHANNELS: Final = ("web", "app", "email", "store")
DEVICES: Final = ("desktop", "ios", "android")
# Signal flag -> the feature counting the recent entries that carry it.
SIGNAL_KEYS: Final = (
    ("sig_price_words", Signal.PRICE_WORDS),
    ("sig_price_sort", Signal.PRICE_SORT),
    ("sig_price_filter", Signal.PRICE_FILTER),
    ("sig_review_words", Signal.REVIEW_WORDS),
    ("sig_review_sort", Signal.REVIEW_SORT),
    ("sig_howto_words", Signal.HOWTO_WORDS),
    ("sig_local_words", Signal.LOCAL_WORDS),
    ("sig_payment_declined", Signal.PAYMENT_DECLINED),
)

# The behaviour counted by kind, in code order. Consent and privacy requests are
# facts about the customer, not behaviour: counting them would change no outcome's
# odds, only the models' inputs.
COUNTED_TYPES: Final = tuple(name for name in Kind.NAMES if name in BEHAVIOUR_TYPES)
_COUNTED: Final = tuple(Kind.of(name) for name in COUNTED_TYPES)
_COUNT_KEYS: Final = tuple(f"n_{name}" for name in COUNTED_TYPES)

FEATURE_KEYS: Final[tuple[str, ...]] = (
    # Entries of each counted type within ``recent`` (n_page_view ... n_refund), and their sum.
    *_COUNT_KEYS,
    "events",
    # Events per minute over the active part of ``recent``: from the first recent
    # entry to ``now``, at least one minute. (A rate over the fixed ``recent`` span
    # would only rescale ``events``.)
    "events_per_min",
    # Distinct product ids and categories within ``recent``.
    "products",
    "categories",
    # Prices of the products viewed within ``recent`` (0 when none), and the
    # spread relative to the mean: comparable across cheap and dear categories.
    "price_min",
    "price_max",
    "price_mean",
    "price_spread",
    "price_spread_ratio",
    # The most times one checkout step was seen within ``recent`` (a checkout loop).
    "step_repeats",
    # Recent entries carrying each signal flag.
    *(key for key, _ in SIGNAL_KEYS),
    # Orders on record up to ``now`` (not refunded), and refunded ones.
    "orders",
    "refunds",
    # Hours since the latest order, capped; at the cap with ``no_purchase`` = 1 when there is none.
    "since_purchase_h",
    "no_purchase",
    # Minutes since the current session started (capped), 0 without a session id.
    "session_min",
    # Seconds since the previous event before ``now`` (recency), at most ``recent``.
    "gap_s",
    # The open cart as of the latest event: items, value, whether checkout started.
    "cart_items",
    "cart_value",
    "checkout_started",
    # One-hot channel and device over the known values; anything else, or none, is ``other``.
    *(f"channel_{name}" for name in CHANNELS),
    "channel_other",
    *(f"device_{name}" for name in DEVICES),
    "device_other",
    # One-hot journey stage as of ``now``.
    *(f"stage_{stage.value}" for stage in Stage),
)
_FLAG_BITS: Final = tuple(bit for _, bit in SIGNAL_KEYS)
_N_KINDS: Final = len(Kind.NAMES)
_N_FLAGS: Final = len(_FLAG_BITS)
_NO_PRICES: Final = (0.0,) * 5
_NO_CART: Final = (0.0,) * 3


def _one_hot(values: tuple[str, ...], other: bool) -> dict[str, tuple[float, ...]]:
    size = len(values) + other
    return {value: tuple(float(i == at) for i in range(size)) for at, value in enumerate(values)}


_CHANNEL_ONE_HOT: Final = _one_hot(CHANNELS, other=True)
_OTHER_CHANNEL: Final = (0.0,) * len(CHANNELS) + (1.0,)
_DEVICE_ONE_HOT: Final = _one_hot(DEVICES, other=True)
_OTHER_DEVICE: Final = (0.0,) * len(DEVICES) + (1.0,)
_STAGE_ONE_HOT: Final = _one_hot(tuple(Stage), other=False)
_ANY_FLAG: Final = sum(_FLAG_BITS)
_PRODUCT_VIEW: Final = Kind.PRODUCT_VIEW
_CHECKOUT_STEP: Final = Kind.CHECKOUT_STEP
_MINUTE: Final = 60_000.0


def features(state: CustomerState, now: int, *, recent: int, stage: Stage | None = None) -> dict[str, float]:
    """The window of ``state`` as of event time ``now`` (ms), looking back ``recent`` ms.

    ``stage`` is the customer's journey stage when the caller knows it already;
    otherwise it is derived with the shipped journey defaults. The result has
    exactly the keys of :data:`FEATURE_KEYS`, in that order, all finite floats.
    Entries after ``now`` (a late event evaluated as of its own time) are not
    counted; the cart and the session are as of the latest event.
    """
    window = between(state.entries, now - recent, now)
    # Floats from the start: no conversion pass at the end.
    counts = [0.0] * _N_KINDS
    flags = [0.0] * _N_FLAGS
    products: set[str] = set()
    categories: set[str] = set()
    steps: dict[str | None, int] = {}
    price_min = math.inf
    price_max = 0.0
    price_sum = 0.0
    priced = 0
    previous: int | None = None
    for entry in window:
        kind = entry.kind
        counts[kind] += 1.0
        if entry.ts < now:
            previous = entry.ts
        if entry.product_id is not None:
            products.add(entry.product_id)
        if entry.category is not None:
            categories.add(entry.category)
        if kind == _PRODUCT_VIEW and entry.price is not None:
            price = entry.price
            priced += 1
            price_sum += price
            if price < price_min:
                price_min = price
            if price > price_max:
                price_max = price
        if entry.flags & _ANY_FLAG:
            bits = entry.flags
            for i, bit in enumerate(_FLAG_BITS):
                if bits & bit:
                    flags[i] += 1.0
        if kind == _CHECKOUT_STEP:
            steps[entry.detail] = steps.get(entry.detail, 0) + 1

    values = [counts[kind] for kind in _COUNTED]
    events = sum(values)
    values.append(events)
    values.append(events * _MINUTE / max(now - window[0].ts, _MINUTE) if events else 0.0)
    values.append(float(len(products)))
    values.append(float(len(categories)))
    if priced:
        mean = price_sum / priced
        spread = price_max - price_min
        values += (price_min, price_max, mean, spread, spread / mean if mean > 0 else 0.0)
    else:
        values += _NO_PRICES
    values.append(float(max(steps.values())) if steps else 0.0)
    values += flags

    orders = 0
    refunds = 0
    last_order: int | None = None
    for order in state.orders:
        if order.ts <= now:
            if order.refunded:
                refunds += 1
            else:
                orders += 1
                if last_order is None or order.ts > last_order:
                    last_order = order.ts
    values.append(float(orders))
    values.append(float(refunds))
    if last_order is not None:
        values.append(min((now - last_order) / 3_600_000, SINCE_PURCHASE_CAP_HOURS))
        values.append(0.0)
    else:
        values += (SINCE_PURCHASE_CAP_HOURS, 1.0)

    session = state.session_id is not None
    values.append(min(max(now - state.session_start, 0) / _MINUTE, SESSION_CAP_MINUTES) if session else 0.0)
    values.append((recent if previous is None else min(now - previous, recent)) / 1000)

    cart = state.cart
    if cart is not None:
        values += (float(len(cart.products)), float(cart.value), 1.0 if cart.checkout_started else 0.0)
    else:
        values += _NO_CART

    values += _CHANNEL_ONE_HOT.get(state.channel or "", _OTHER_CHANNEL)
    values += _DEVICE_ONE_HOT.get(state.device or "", _OTHER_DEVICE)
    if stage is None:
        stage = journey_stage(
            state, now, recent=recent, post_purchase=POST_PURCHASE, loyalty_min_orders=LOYALTY_MIN_ORDERS
        )
    values += _STAGE_ONE_HOT[stage]
    return dict(zip(FEATURE_KEYS, values, strict=True))


def sparse(x: Mapping[str, float]) -> dict[str, float]:
    """``x`` without its zeros (typically a third of the keys), for examples waiting for a label.

    Learn from :func:`dense` of it, never from it: River's scaler treats a
    missing key differently from a zero.

    >>> x = features(CustomerState(customer_id="c"), 0, recent=60_000)
    >>> len(sparse(x)), dense(sparse(x)) == x
    (6, True)
    """
    return {key: value for key, value in x.items() if value}


def dense(x: Mapping[str, float]) -> dict[str, float]:
    """A :func:`sparse` feature dict made whole again: every key of :data:`FEATURE_KEYS`, in order."""
    return {key: float(x.get(key, 0.0)) for key in FEATURE_KEYS}


# What the behaviour vector is made of: shares of the recent events by activity,
# and a few levels, every value in [0, 1].
_GROUPS: Final = (
    ("browse", ("n_page_view", "n_product_view", "n_wishlist_add")),
    ("research", ("n_compare_view", "n_review_view", "n_search")),
    ("cart", ("n_add_to_cart", "n_remove_from_cart", "n_checkout_step")),
    ("support", ("n_help_view", "n_error")),
    ("local", ("n_store_locator_view",)),
    ("buy", ("n_purchase", "n_refund")),
)
BEHAVIOUR_KEYS: Final[tuple[str, ...]] = (
    *(name for name, _ in _GROUPS),
    # log-scaled number of recent events, 1 from ACTIVITY_CAP events on
    "activity",
    # log-scaled mean price of the products viewed, 1 from PRICE_CAP on
    "price_level",
    # orders on record, 1 from LOYAL_ORDERS on
    "loyalty",
    # 1 right after an order, falling to 0 at SINCE_PURCHASE_CAP_HOURS (0 without one)
    "recent_buyer",
    # on a phone (ios, android), in the app
    "mobile",
    "app",
)
ACTIVITY_CAP: Final = 100
PRICE_CAP: Final = 5_000.0
LOYAL_ORDERS: Final = 5
_LOG_ACTIVITY: Final = math.log1p(ACTIVITY_CAP)
_LOG_PRICE: Final = math.log1p(PRICE_CAP)


def behaviour(x: Mapping[str, float]) -> dict[str, float]:
    """The behaviour vector (keys :data:`BEHAVIOUR_KEYS`) of a :func:`features` dict, rounded to 4 places.

    ``x`` may be :func:`sparse`: a missing feature counts 0.
    """
    get = x.get
    events = get("events", 0.0)
    values = []
    for _, keys in _GROUPS:
        total = 0.0
        for key in keys:
            total += get(key, 0.0)
        values.append(total / events if events else 0.0)
    values += (
        min(math.log1p(events) / _LOG_ACTIVITY, 1.0),
        min(math.log1p(get("price_mean", 0.0)) / _LOG_PRICE, 1.0),
        min(get("orders", 0.0) / LOYAL_ORDERS, 1.0),
        0.0 if get("no_purchase", 0.0) else 1.0 - get("since_purchase_h", 0.0) / SINCE_PURCHASE_CAP_HOURS,
        get("device_ios", 0.0) + get("device_android", 0.0),
        get("channel_app", 0.0),
    )
    # Rounded: segments should not hinge on the last bits of a float.
    return dict(zip(BEHAVIOUR_KEYS, map(round, values, repeat(4)), strict=True))


def behaviour_vector(state: CustomerState, now: int, *, recent: int) -> dict[str, float]:
    """A customer's behaviour as of ``now``: :func:`behaviour` of :func:`features`."""
    return behaviour(features(state, now, recent=recent))


__all__ = [
    "BEHAVIOUR_KEYS",
    "CHANNELS",
    "COUNTED_TYPES",
    "DEVICES",
    "FEATURE_KEYS",
    "behaviour",
    "behaviour_vector",
    "dense",
    "features",
    "sparse",
]
