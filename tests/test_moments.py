"""Each event-driven moment on its positive cases and its near misses."""

from __future__ import annotations

import pytest
from helpers import DEFAULTS, DETECTION_ONLY, at, ev, run, views

from app.config import load_catalogue
from app.detector import Detector
from app.events import Event

# Post-purchase scenarios span days with no other traffic; let the clock jump.
LONG_SKEW = load_catalogue(DETECTION_ONLY, overrides={"window": {"max_future_skew": "30d"}})


# price_comparison


@pytest.mark.parametrize("offsets", [("0s", "4m", "9m"), ("0s", "5m", "10m")])
def test_three_products_of_one_category_within_the_window_compare_prices(offsets: tuple[str, ...]) -> None:
    seen = views("tv", *offsets)

    detection = run(seen).only("price_comparison")

    assert detection.ts == at(offsets[-1])
    assert detection.anchor == seen[-1].event_id
    assert detection.reasons == ["category_browsing"]
    assert detection.score == 0.5
    assert detection.evidence == [e.event_id for e in seen]
    assert detection.attributes == {"category": "tv"}


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(views("tv", 0, 300_000, 600_001), id="spread-over-more-than-10m"),
        pytest.param(views("tv", "0s", "1m") + views("audio", "2m"), id="two-categories"),
        pytest.param(
            [ev("product_view", f"{i}m", product_id="p1", category="tv") for i in range(3)],
            id="same-product-3-times",
        ),
        pytest.param(
            [ev("product_view", f"{i}m", product_id=f"p{i}") for i in range(3)],
            id="no-category",
        ),
    ],
)
def test_browsing_near_misses_do_not_fire(events: list[Event]) -> None:
    assert run(events).detections == []


@pytest.mark.parametrize(
    ("event", "reason", "score"),
    [
        (ev("compare_view", product_id="p1"), "compare_view", 0.6),
        (ev("search", query="tv", sort="price_asc"), "price_sort", 0.55),
        (ev("search", query="tv", filters={"price_max": 500}), "price_filter", 0.5),
        (ev("search", query="cheap tv"), "price_words", 0.5),
        (ev("search", query="lg vs samsung"), "price_words", 0.5),
        (ev("search", query="Black Friday SALE"), "price_words", 0.5),
    ],
)
def test_single_price_signals(event: Event, reason: str, score: float) -> None:
    detection = run([event]).only("price_comparison")
    assert (detection.reasons, detection.score, detection.evidence) == ([reason], score, [event.event_id])


@pytest.mark.parametrize("query", ["canvas tote", "television", "undercover", "versatile blender"])
def test_searches_without_price_words_do_not_compare_prices(query: str) -> None:
    assert run([ev("search", query=query)]).detections == []


def test_a_price_search_after_browsing_combines_the_signals() -> None:
    seen = views("tv", "0s", "1m", "2m", customer="c1")
    search = ev("search", "3m", query="tv", sort="price_desc")
    # The third view fires; the search comes within the cooldown, so compare candidates directly.
    result = run(
        [*seen, search],
        load_catalogue(DETECTION_ONLY, overrides={"moments": {"price_comparison": {"cooldown": 0}}}),
    )

    combined = result.detections[-1]
    assert combined.anchor == search.event_id
    assert combined.reasons == ["category_browsing", "price_sort"]
    assert combined.score == round(1 - 0.5 * 0.45, 4)
    assert combined.evidence == [*(e.event_id for e in seen), search.event_id]


# review_seeking


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ev("review_view", product_id="p1"), "review_view"),
        (ev("search", query="best running shoes"), "review_words"),
        (ev("search", query="running shoes", sort="rating_desc"), "review_sort"),
    ],
)
def test_review_seeking(event: Event, reason: str) -> None:
    detection = run([event]).only("review_seeking")
    assert detection.reasons == [reason]
    assert detection.evidence == [event.event_id]


def test_review_seeking_counts_views_and_names_the_reviewed_products() -> None:
    events = [ev("review_view", f"{i}m", product_id=p) for i, p in enumerate(["p1", "p2", "p1"])]
    no_cooldown = load_catalogue(DETECTION_ONLY, overrides={"moments": {"review_seeking": {"cooldown": 0}}})
    detection = run(events, no_cooldown).detections[-1]
    assert detection.attributes == {"products": ["p1", "p2"]}
    assert detection.score == 0.5 + 2 * 0.1  # count_boost per view beyond the first


@pytest.mark.parametrize("query", ["running shoes", "bestseller shoes", "rate limiter"])
def test_searches_without_review_words_are_not_review_seeking(query: str) -> None:
    assert run([ev("search", query=query)]).detections == []


# local_intent


@pytest.mark.parametrize(
    ("event", "reason", "score"),
    [
        (ev("store_locator_view"), "store_locator_view", 0.7),
        (ev("search", query="tv store near me"), "local_words", 0.65),
        (ev("search", query="Click and Collect tv"), "local_words", 0.65),
    ],
)
def test_local_intent(event: Event, reason: str, score: float) -> None:
    detection = run([event]).only("local_intent")
    assert (detection.reasons, detection.score) == ([reason], score)


@pytest.mark.parametrize("query", ["nearly new tv", "pickups", "tv stand"])
def test_searches_without_local_words_are_not_local_intent(query: str) -> None:
    assert run([ev("search", query=query)]).detections == []


# post_purchase_howto


def purchase(offset: str, order_id: str, *products: str) -> Event:
    return ev("purchase", offset, order_id=order_id, items=[{"product_id": p} for p in products])


def test_help_with_a_purchased_product_after_an_order() -> None:
    order = purchase("0s", "o1", "p1", "p2")
    help_view = ev("help_view", "2d", product_id="p2")

    detection = run([order, help_view], LONG_SKEW).only("post_purchase_howto")

    assert detection.reasons == ["help_view", "help_for_purchased_product"]
    assert detection.score == round(1 - 0.45 * 0.5, 4)
    assert detection.attributes == {"products": ["p2", "p1"], "order_ids": ["o1"]}
    assert detection.evidence == [order.event_id, help_view.event_id]
    assert detection.explanation == (
        "Needs help after buying: opened a help page about a purchased product within 2 day(s) of an order."
    )


def test_the_help_viewed_product_comes_first_then_the_most_recent_order() -> None:
    events = [
        purchase("0s", "o1", "p1"),
        purchase("1d", "o2", "p2", "p3"),
        ev("help_view", "2d", product_id="p1"),
    ]
    detection = run(events, LONG_SKEW).only("post_purchase_howto")
    assert detection.attributes == {"products": ["p1", "p2", "p3"], "order_ids": ["o2", "o1"]}


def test_help_about_another_product_names_the_purchases() -> None:
    events = [purchase("0s", "o1", "p1"), ev("help_view", "1h", product_id="p9")]
    detection = run(events).only("post_purchase_howto")
    assert detection.reasons == ["help_view"]
    assert detection.attributes["products"] == ["p1"]


def test_howto_search_after_an_order() -> None:
    events = [purchase("0s", "o1", "p1"), ev("search", "36h", query="How to pair my headphones")]
    detection = run(events, LONG_SKEW).only("post_purchase_howto")
    assert (detection.reasons, detection.score) == (["howto_words"], 0.65)
    assert "within 2 day(s)" in detection.explanation  # 36 hours is not "within 1 day"


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([ev("help_view", product_id="p1")], id="no-order"),
        pytest.param([purchase("0s", "o1", "p1"), ev("help_view", 7 * 86_400_000 + 1)], id="order-7d-ago"),
        pytest.param(
            [purchase("0s", "o1", "p1"), ev("refund", "1h", order_id="o1"), ev("help_view", "1d")],
            id="refunded",
        ),
        pytest.param([purchase("0s", "o1", "p1"), ev("search", "1h", query="headphones")], id="no-howto"),
    ],
)
def test_no_post_purchase_help_without_a_standing_recent_order(events: list[Event]) -> None:
    assert "post_purchase_howto" not in run(events, LONG_SKEW).moments()


def test_help_exactly_7_days_after_an_order_still_counts() -> None:
    events = [purchase("0s", "o1", "p1"), ev("help_view", "7d")]
    assert run(events, LONG_SKEW).moments() == ["post_purchase_howto"]


# frustration


def errors(*offsets: str, code: str = "500") -> list[Event]:
    return [ev("error", offset, error_code=code) for offset in offsets]


def test_three_errors_within_the_window_are_frustrating() -> None:
    seen = errors("0s", "3m", "9m")
    detection = run(seen).only("frustration")
    assert detection.anchor == seen[-1].event_id
    assert (detection.reasons, detection.score) == (["repeated_errors"], 0.55)
    assert detection.evidence == [e.event_id for e in seen]


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(errors("0s"), id="one-error"),
        pytest.param(errors("0s", "1m"), id="two-errors"),
        pytest.param(errors("0s", "5m", "10m1s"), id="three-errors-over-more-than-10m"),
    ],
)
def test_fewer_errors_are_not_frustrating(events: list[Event]) -> None:
    assert run(events).detections == []


def test_a_declined_payment_is_frustrating_on_its_own() -> None:
    detection = run(errors("0s", code="card_declined")).only("frustration")
    assert (detection.reasons, detection.score) == (["payment_declined"], 0.65)


def checkout(step: str, offset: str) -> Event:
    return ev("checkout_step", offset, step=step)


def test_the_same_checkout_step_three_times_is_a_loop() -> None:
    steps = [checkout("payment", f"{i}m") for i in range(3)]
    detection = run(steps).only("frustration")
    assert (detection.reasons, detection.attributes) == (["checkout_loop"], {})
    assert detection.evidence == [e.event_id for e in steps]


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([("payment", "0s"), ("payment", "1m")], id="twice"),
        pytest.param([("shipping", "0s"), ("payment", "1m"), ("review", "2m")], id="progressing"),
        pytest.param([("payment", "0s"), ("payment", "5m"), ("payment", "10m1s")], id="spread-out"),
    ],
)
def test_checkout_without_a_loop_is_not_frustrating(steps: list[tuple[str, str]]) -> None:
    assert run([checkout(step, offset) for step, offset in steps]).detections == []


@pytest.mark.parametrize(
    "help_event",
    [ev("help_view", "90s"), ev("search", "2m", query="payment not working")],
    ids=["help-view", "howto-search"],
)
def test_help_right_after_an_error_is_frustrating(help_event: Event) -> None:
    detection = run([*errors("0s"), help_event]).only("frustration")
    assert detection.reasons == ["help_after_error"]
    assert detection.anchor == help_event.event_id


def test_help_long_after_an_error_is_not_frustrating() -> None:
    assert run([*errors("0s"), ev("help_view", "5m")]).detections == []


def test_defaults_enable_every_moment() -> None:
    assert sorted(Detector(DEFAULTS).moments) == [
        "cart_abandonment",
        "frustration",
        "local_intent",
        "post_purchase_howto",
        "price_comparison",
        "review_seeking",
    ]
