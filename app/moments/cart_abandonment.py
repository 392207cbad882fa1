"""``cart_abandonment``: items went into the cart, and no purchase followed.

An absence of events, so it is not evaluated on arrival: adding to the cart or
taking a checkout step arms a deadline ``timeout`` after that activity; a
purchase disarms it, and so does emptying the cart. The stream processor fires
the deadline once event time (the watermark) has passed it; replay flushes the
ones left when the input ends. Signals: ``cart_idle`` always, plus
``checkout_started`` when the customer had begun checking out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from app.durations import Duration, format_duration
from app.events import Kind
from app.moments.base import Candidate, Moment, MomentConfig
from app.window import Cart, CustomerState, Entry

MAX_CART_PRODUCTS = 50
MAX_CART_EVIDENCE = 10


class CartAbandonmentConfig(MomentConfig, kw_only=True, forbid_unknown_fields=True):
    timeout: Duration


class CartAbandonment(Moment):
    name = "cart_abandonment"
    kinds = frozenset({Kind.ADD_TO_CART, Kind.CHECKOUT_STEP, Kind.REMOVE_FROM_CART, Kind.PURCHASE})
    signals = ("cart_idle", "checkout_started")
    config: CartAbandonmentConfig

    def evaluate(self, state: CustomerState, entry: Entry) -> Candidate | None:
        return None

    def track(self, state: CustomerState, entry: Entry, purchased: Sequence[str]) -> None:
        """Arm, move or disarm the deadline for ``entry`` (one of :attr:`kinds`)."""
        cart = state.cart
        if entry.kind == Kind.PURCHASE:
            if cart is None:
                return
            if entry.ts >= cart.last_activity:
                state.cart = None
            else:
                # A late-arriving purchase older than the latest cart activity only
                # settles what it bought; the later activity still stands.
                remaining = [p for p in cart.products if p not in purchased]
                if cart.products and not remaining:
                    state.cart = None
                else:
                    cart.products = remaining
            return
        if entry.kind == Kind.REMOVE_FROM_CART:
            if cart is not None and entry.product_id in cart.products:
                cart.products.remove(entry.product_id)
                if not cart.products:
                    state.cart = None  # emptied: nothing left to abandon
            return
        if cart is None:
            cart = state.cart = Cart(
                products=[], event_ids=[], last_activity=entry.ts, deadline=None, anchor=entry.event_id
            )
        if entry.product_id is not None and entry.product_id not in cart.products:
            cart.products = [*cart.products, entry.product_id][-MAX_CART_PRODUCTS:]
            if entry.kind == Kind.ADD_TO_CART and entry.price is not None:
                cart.value = round(cart.value + entry.price, 2)
        cart.event_ids = [*cart.event_ids, entry.event_id][-MAX_CART_EVIDENCE:]
        cart.checkout_started = cart.checkout_started or entry.kind == Kind.CHECKOUT_STEP
        if entry.ts >= cart.last_activity:
            cart.last_activity = entry.ts
            cart.deadline = entry.ts + self.config.timeout
            cart.anchor = entry.event_id

    def fire(self, state: CustomerState) -> Candidate | None:
        """The candidate for the customer's passed deadline; disarms it."""
        cart = state.cart
        if cart is None or cart.deadline is None:
            return None
        deadline, cart.deadline = cart.deadline, None
        counts: Counter[str] = Counter(cart_idle=1)
        if cart.checkout_started:
            counts["checkout_started"] = 1
        products = len(cart.products)
        sentence = (
            f"Abandoned cart: {products} product(s)"
            f"{' after starting checkout' if cart.checkout_started else ''},"
            f" no purchase within {format_duration(self.config.timeout)}."
        )
        return Candidate(
            moment=self.name,
            ts=deadline,
            anchor=cart.anchor,
            score=self.score(counts),
            reasons=[s for s in self.signals if s in counts],
            evidence=list(cart.event_ids),
            explanation=sentence,
            attributes={"products": list(cart.products), "cart_value": cart.value},
        )
