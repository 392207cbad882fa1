"""cart_abandonment: an absence, fired when the watermark (clock - 2m) passes cart activity + 30m."""

from __future__ import annotations

from helpers import SOURCE, at, ev, run, ticks

from app.events import Event
from app.triggers import format_time, to_cloudevent


def add(offset: str, product: str = "p1", price: float = 20.0) -> Event:
    return ev("add_to_cart", offset, product_id=product, price=price)


def test_fires_once_the_watermark_passes_the_deadline() -> None:
    cart = add("0s")

    assert run([cart, *ticks(at("32m") - at("0s") - 1)]).detections == []  # watermark 1 ms short
    fired = run([cart, *ticks("32m")])

    detection = fired.only("cart_abandonment")
    assert detection.customer_id == "c1"
    assert detection.ts == at("30m")
    assert detection.anchor == cart.event_id
    assert detection.reasons == ["cart_idle"]
    assert detection.score == 0.6
    assert detection.evidence == [cart.event_id]
    assert detection.attributes == {"products": ["p1"], "cart_value": 20.0}
    assert detection.expires_at == at("30m") + 24 * 3_600_000
    assert fired.processor.deadlines == {}


def test_fires_at_the_deadline_not_at_the_event_that_advanced_the_clock() -> None:
    result = run([add("0s"), *ticks("3h")])
    detection = result.only("cart_abandonment")
    assert detection.ts == at("30m")
    assert to_cloudevent(detection, source=SOURCE)["time"] == "2026-11-25T10:30:00.000Z"
    assert format_time(detection.ts) == "2026-11-25T10:30:00.000Z"


def test_the_pending_deadline_is_tracked_by_the_processor() -> None:
    result = run([add("0s"), *ticks("10m")])
    assert result.processor.deadlines == {"c1": at("30m")}
    assert result.states["c1"].cart is not None


def test_a_purchase_disarms_the_cart() -> None:
    purchase = ev("purchase", "10m", order_id="o1", items=[{"product_id": "p1"}])
    result = run([add("0s"), purchase, *ticks("3h")], flush=True)
    assert result.moments() == []
    assert result.states["c1"].cart is None
    assert result.processor.deadlines == {}


def test_emptying_the_cart_disarms_it() -> None:
    remove = ev("remove_from_cart", "5m", product_id="p1")
    result = run([add("0s"), remove, *ticks("3h")], flush=True)
    assert result.moments() == []


def test_removing_one_of_two_products_keeps_the_deadline() -> None:
    remove = ev("remove_from_cart", "5m", product_id="p1")
    result = run([add("0s", "p1"), add("1m", "p2"), remove], flush=True)
    detection = result.only("cart_abandonment")
    assert detection.ts == at("31m")
    assert detection.attributes == {"products": ["p2"], "cart_value": 40.0}


def test_a_later_add_moves_the_deadline() -> None:
    first, second = add("0s", "p1", 10.0), add("20m", "p2", 5.5)
    waiting = run([first, second, *ticks("40m")])
    assert waiting.detections == []
    assert waiting.processor.deadlines == {"c1": at("50m")}

    detection = run([first, second, *ticks("52m")]).only("cart_abandonment")
    assert detection.ts == at("50m")
    assert detection.anchor == second.event_id
    assert detection.evidence == [first.event_id, second.event_id]
    assert detection.attributes == {"products": ["p1", "p2"], "cart_value": 15.5}


def test_flush_fires_what_is_still_pending_at_the_end_of_the_input() -> None:
    pending = run([add("0s"), *ticks("5m")])
    assert pending.detections == []
    flushed = run([add("0s"), *ticks("5m")], flush=True)
    assert flushed.only("cart_abandonment").ts == at("30m")


def test_checkout_started_strengthens_the_signal() -> None:
    step = ev("checkout_step", "1m", step="shipping")
    detection = run([add("0s"), step], flush=True).only("cart_abandonment")
    assert detection.reasons == ["cart_idle", "checkout_started"]
    assert detection.score == round(1 - 0.4 * 0.7, 4)
    assert detection.ts == at("31m")
    assert detection.anchor == step.event_id
    assert detection.explanation == (
        "Abandoned cart: 1 product(s) after starting checkout, no purchase within 30m."
    )


def test_a_second_abandonment_within_the_cooldown_is_suppressed() -> None:
    events = [add("0s"), *ticks("1h"), add("2h", "p2"), *ticks("3h")]
    result = run(events)
    assert [d.ts for d in result.detections] == [at("30m")]
    assert result.suppressed == [("cart_abandonment", "cooldown")]


def test_emptying_the_cart_after_checkout_started_disarms_it() -> None:
    steps = [
        add("0s"),
        ev("checkout_step", "1m", step="shipping"),
        ev("remove_from_cart", "2m", product_id="p1"),
    ]
    result = run([*steps, *ticks("3h")], flush=True)
    assert result.moments() == []
    assert result.states["c1"].cart is None


def test_a_late_purchase_that_settles_every_product_disarms_the_cart() -> None:
    # Arrives after the later checkout step but happened before it, within the lateness.
    late_purchase = ev("purchase", "1m30s", order_id="o1", items=[{"product_id": "p1"}])
    result = run(
        [add("0s"), ev("checkout_step", "2m", step="payment"), late_purchase, *ticks("3h")], flush=True
    )
    assert result.moments() == []


def test_a_checkout_without_known_products_can_still_be_abandoned() -> None:
    result = run([ev("checkout_step", "0s", step="payment"), *ticks("3h")])
    assert result.moments() == ["cart_abandonment"]


def test_the_customers_own_later_event_fires_the_deadline_before_it_is_applied() -> None:
    # Alone on its stream, the clock (which needs several events to agree) has not
    # passed the deadline; the customer's own event, long after it, proves it passed.
    cart = ev("add_to_cart", "0s", product_id="p1", session_id="s1")
    back_later = ev("page_view", "40m", session_id="s2")
    result = run([cart, back_later])
    detection = result.only("cart_abandonment")
    assert detection.ts == at("30m")
    assert detection.session_id == "s1"  # as of the deadline, not of the visit that followed
