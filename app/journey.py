"""Where a customer stands in their journey, derived from the window alone."""

from __future__ import annotations

from enum import StrEnum

from app.events import Kind
from app.window import CustomerState, between

_PURCHASE_KINDS = frozenset({Kind.ADD_TO_CART, Kind.CHECKOUT_STEP})
_CONSIDERATION_KINDS = frozenset({Kind.PRODUCT_VIEW, Kind.COMPARE_VIEW, Kind.REVIEW_VIEW, Kind.WISHLIST_ADD})


class Stage(StrEnum):
    AWARENESS = "awareness"
    CONSIDERATION = "consideration"
    PURCHASE = "purchase"
    POST_PURCHASE = "post_purchase"
    LOYALTY = "loyalty"


def journey_stage(
    state: CustomerState, now: int, *, recent: int, post_purchase: int, loyalty_min_orders: int
) -> Stage:
    """The stage as of ``now``, looking back ``recent`` ms for shopping activity.

    Shopping since the latest order wins over history: an open cart or a
    checkout step means ``purchase``; browsing products means ``consideration``.
    Otherwise a customer with at least ``loyalty_min_orders`` orders on record
    is in ``loyalty``, one with an order within ``post_purchase`` ms in
    ``post_purchase``, and anybody else in ``awareness``.
    """
    orders = [order for order in state.orders if order.ts <= now and not order.refunded]
    since = max(now - recent, orders[-1].ts + 1 if orders else 0)
    kinds = {entry.kind for entry in between(state.entries, since, now)}
    if (state.cart is not None and state.cart.products) or kinds & _PURCHASE_KINDS:
        return Stage.PURCHASE
    if kinds & _CONSIDERATION_KINDS:
        return Stage.CONSIDERATION
    if len(orders) >= loyalty_min_orders:
        return Stage.LOYALTY
    if orders and orders[-1].ts >= now - post_purchase:
        return Stage.POST_PURCHASE
    return Stage.AWARENESS
