"""``post_purchase_howto``: a recent buyer needs help using what they bought.

Evaluated on help views and searches, and only when the customer has an order
(not refunded) within ``within`` before the event. Signals: ``help_view``,
``howto_words`` ("how to", "setup", "manual", "not working", ... in a search)
and ``help_for_purchased_product`` (a help page about a product they bought).
The candidate names the purchased products, most recent order first.
"""

from __future__ import annotations

from collections import Counter

from app.durations import Duration
from app.events import Kind
from app.moments.base import Candidate, Moment, MomentConfig
from app.signals import Signal
from app.window import CustomerState, Entry, Order

MAX_PRODUCTS = 10


class PostPurchaseHowtoConfig(MomentConfig, kw_only=True, forbid_unknown_fields=True):
    within: Duration
    keywords: list[str]


class PostPurchaseHowto(Moment):
    name = "post_purchase_howto"
    kinds = frozenset({Kind.HELP_VIEW, Kind.SEARCH})
    signals = ("help_view", "howto_words", "help_for_purchased_product")
    config: PostPurchaseHowtoConfig

    def evaluate(self, state: CustomerState, entry: Entry) -> Candidate | None:
        if entry.kind == Kind.SEARCH and not entry.flags & Signal.HOWTO_WORDS:
            return None
        orders = _recent_orders(state.orders, entry.ts - self.config.within, entry.ts)
        if not orders:
            return None
        products: list[str] = []
        for order in orders:
            products.extend(p for p in order.products if p not in products)
        counts: Counter[str] = Counter()
        if entry.kind == Kind.HELP_VIEW:
            counts["help_view"] = 1
            if entry.product_id is not None and entry.product_id in products:
                counts["help_for_purchased_product"] = 1
                products.remove(entry.product_id)
                products.insert(0, entry.product_id)
        else:
            counts["howto_words"] = 1
        days = max(1, -(-(entry.ts - orders[0].ts) // 86_400_000))  # rounded up: "within"
        action = "opened a help page" if entry.kind == Kind.HELP_VIEW else "searched how-to"
        about = "about a purchased product " if counts["help_for_purchased_product"] else ""
        sentence = f"Needs help after buying: {action} {about}within {days} day(s) of an order."
        return self.candidate(
            entry,
            counts,
            [order.event_id for order in reversed(orders)] + [entry.event_id],
            sentence,
            attributes={
                "products": products[:MAX_PRODUCTS],
                "order_ids": [order.order_id for order in orders],
            },
        )


def _recent_orders(orders: list[Order], start: int, end: int) -> list[Order]:
    """Orders placed in ``[start, end]`` and not refunded, most recent first."""
    return [o for o in reversed(orders) if start <= o.ts <= end and not o.refunded]
