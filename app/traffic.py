"""Synthetic but realistic retail traffic, reproducible from a seed.

Customers arrive in sessions whose rate follows the time of day; each session
follows a persona's script (browsing, comparing prices, reading reviews,
buying, abandoning a cart, asking for help after a purchase, looking for a
store, hitting errors). Sessions overlap, so the output interleaves many
customers in event-time order, like a real stream. Used for the demo fixture,
the benchmarks and ``micromoments dev``.

>>> events = list(TrafficGenerator(seed=7, customers=50).events(count=20))
>>> len(events), events[0]["event_type"]
(20, 'consent')
>>> events == list(TrafficGenerator(seed=7, customers=50).events(count=20))
True
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from app.triggers import format_time

Fields = dict[str, Any]
# A session script yields (milliseconds since the previous step, the event's fields).
Script = Iterator[tuple[int, Fields]]

CATALOGUE: Final = {
    "headphones": (40, 400, ["wireless headphones", "noise cancelling headphones", "earbuds"]),
    "running-shoes": (50, 220, ["running shoes", "trail shoes", "marathon shoes"]),
    "coffee-machines": (60, 900, ["espresso machine", "coffee maker", "bean to cup"]),
    "smartphones": (150, 1400, ["smartphone", "5g phone", "android phone"]),
    "laptops": (350, 2600, ["laptop", "ultrabook", "gaming laptop"]),
    "televisions": (250, 3000, ["4k tv", "oled tv", "smart tv"]),
    "jackets": (40, 450, ["rain jacket", "down jacket", "softshell"]),
    "blenders": (30, 500, ["blender", "smoothie blender", "hand blender"]),
}
PRODUCTS_PER_CATEGORY: Final = 40
CHANNELS: Final = (("web", 0.55), ("app", 0.35), ("email", 0.06), ("store", 0.04))
DEVICES: Final = (("desktop", 0.4), ("ios", 0.3), ("android", 0.3))
TIMEZONES: Final = ("Europe/London", "Europe/Paris", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
# Share of sessions per persona.
PERSONAS: Final = (
    ("browse", 0.34),
    ("compare_prices", 0.16),
    ("read_reviews", 0.1),
    ("buy", 0.12),
    ("abandon_cart", 0.1),
    ("after_purchase", 0.06),
    ("find_store", 0.06),
    ("frustrated", 0.06),
)
MEAN_EVENTS_PER_SESSION: Final = 5.3  # measured over the personas below
# Share of new customers granting marketing consent, and of later visits revoking it.
CONSENT_GRANTED: Final = 0.85
CONSENT_REVOKED: Final = 0.01


class TrafficGenerator:
    def __init__(
        self,
        *,
        seed: int = 1,
        customers: int = 1000,
        start: datetime | None = None,
        events_per_second: float = 1.0,
        diurnal: bool = True,
    ) -> None:
        if customers < 1:
            raise ValueError("customers must be at least 1")
        self.rng = random.Random(seed)
        self.customers = customers
        self.start_ms = int((start or datetime(2026, 11, 25, tzinfo=UTC)).timestamp() * 1000)
        self.events_per_second = events_per_second
        self.diurnal = diurnal
        # What each customer bought lately, for their after-purchase sessions.
        self._buyers: dict[str, list[str]] = {}
        self._buyer_ids: list[str] = []
        self._seen: set[str] = set()
        self._sessions = 0

    def events(self, *, count: int | None = None, until_ms: int | None = None) -> Iterator[Fields]:
        """Events in ``occurred_at`` order, until ``count`` events or event time ``until_ms``."""
        rng = self.rng
        heap: list[tuple[int, int, Fields, Script]] = []
        next_session = self.start_ms
        emitted = 0
        sequence = 0
        while count is None or emitted < count:
            if not heap or next_session <= heap[0][0]:
                script = self._session(next_session)
                first = next(script, None)
                if first is not None:
                    sequence += 1
                    heapq.heappush(heap, (next_session, sequence, first[1], script))
                next_session += self._gap_between_sessions(next_session)
                continue
            ts, _, fields, script = heapq.heappop(heap)
            if until_ms is not None and ts > until_ms:
                return
            yield {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "customer_id": fields["customer_id"],
                "event_type": fields["event_type"],
                "occurred_at": format_time(ts),
                **fields,
            }
            emitted += 1
            step = next(script, None)
            if step is not None:
                sequence += 1
                heapq.heappush(heap, (ts + step[0], sequence, step[1], script))

    def _gap_between_sessions(self, now_ms: int) -> int:
        sessions_per_second = self.events_per_second / MEAN_EVENTS_PER_SESSION
        if self.diurnal:
            hour = (now_ms // 3_600_000) % 24
            # Quiet at night, busy in the evening; averages to 1 over the day.
            sessions_per_second *= 1 + 0.8 * math.sin((hour - 10) / 24 * 2 * math.pi)
        return max(1, int(self.rng.expovariate(sessions_per_second) * 1000))

    def _session(self, start_ms: int) -> Script:
        rng = self.rng
        persona = _pick(rng, PERSONAS)
        if persona == "after_purchase" and self._buyer_ids:
            customer = rng.choice(self._buyer_ids)
        else:
            customer = f"cust-{rng.randrange(self.customers):06d}"
            if persona == "after_purchase":
                persona = "buy"
        self._sessions += 1
        common = {
            "customer_id": customer,
            "session_id": f"s-{self._sessions:08d}",
            "channel": _pick(rng, CHANNELS),
            "device": _pick(rng, DEVICES),
            "timezone": _zone(customer),
        }
        script: Callable[[random.Random, Fields], Script] = getattr(self, f"_{persona}")
        return _stamped(self._with_consent(rng, customer, script(rng, common)), common)

    def _with_consent(self, rng: random.Random, customer: str, script: Script) -> Script:
        """Consent as a site's banner collects it: most grant it on their first visit, a few revoke it."""
        if customer not in self._seen:
            self._seen.add(customer)
            if rng.random() < CONSENT_GRANTED:
                yield 0, {"event_type": "consent", "status": "granted", "purpose": "marketing"}
        elif rng.random() < CONSENT_REVOKED:
            yield 0, {"event_type": "consent", "status": "revoked", "purpose": "marketing"}
        yield from script

    # --- persona scripts: each yields (delay ms, fields) -------------------------------

    def _browse(self, rng: random.Random, c: Fields) -> Script:
        yield 0, {"event_type": "page_view", "page": "/", "page_type": "home"}
        for _ in range(rng.randint(1, 6)):
            category = rng.choice(list(CATALOGUE))
            if rng.random() < 0.5:
                yield (
                    _think(rng),
                    {"event_type": "page_view", "page": f"/c/{category}", "page_type": "category"},
                )
            yield _think(rng), _product_view(rng, category)
        if rng.random() < 0.15:
            yield _think(rng), {**_product(rng, rng.choice(list(CATALOGUE))), "event_type": "wishlist_add"}

    def _compare_prices(self, rng: random.Random, c: Fields) -> Script:
        category = rng.choice(list(CATALOGUE))
        term = rng.choice(CATALOGUE[category][2])
        yield (
            0,
            _search(
                rng,
                term if rng.random() < 0.5 else f"cheap {term}",
                sort="price_asc" if rng.random() < 0.4 else None,
            ),
        )
        for _ in range(rng.randint(2, 6)):
            yield _think(rng, 20, 120), _product_view(rng, category)
        if rng.random() < 0.5:
            yield _think(rng), {"event_type": "compare_view", "page_type": "compare", "category": category}
        if rng.random() < 0.3:
            yield from self._checkout(rng, c, category, complete=rng.random() < 0.6)

    def _read_reviews(self, rng: random.Random, c: Fields) -> Script:
        category = rng.choice(list(CATALOGUE))
        term = rng.choice(CATALOGUE[category][2])
        yield 0, _search(rng, rng.choice([f"best {term}", f"{term} reviews", f"top rated {term}"]))
        product = _product(rng, category)
        yield _think(rng), {**product, "event_type": "product_view"}
        for _ in range(rng.randint(1, 3)):
            yield _think(rng, 30, 240), {**product, "event_type": "review_view", "page_type": "reviews"}
        if rng.random() < 0.25:
            yield from self._checkout(rng, c, category, complete=True, product=product)

    def _buy(self, rng: random.Random, c: Fields) -> Script:
        category = rng.choice(list(CATALOGUE))
        yield 0, {"event_type": "page_view", "page": f"/c/{category}", "page_type": "category"}
        for _ in range(rng.randint(1, 2)):
            yield _think(rng), _product_view(rng, category)
        yield from self._checkout(rng, c, category, complete=True)

    def _abandon_cart(self, rng: random.Random, c: Fields) -> Script:
        category = rng.choice(list(CATALOGUE))
        yield 0, _product_view(rng, category)
        yield from self._checkout(rng, c, category, complete=False)

    def _after_purchase(self, rng: random.Random, c: Fields) -> Script:
        products = self._buyers.get(c["customer_id"], [])
        product = rng.choice(products) if products else None
        category = product.split("-", 1)[1].rsplit("-", 1)[0] if product else rng.choice(list(CATALOGUE))
        noun = CATALOGUE.get(category, (0, 0, ["it"]))[2][0]
        yield 0, {"event_type": "page_view", "page": "/account/orders", "page_type": "account"}
        if rng.random() < 0.6:
            yield (
                _think(rng),
                _search(
                    rng,
                    rng.choice(
                        [f"how to set up {noun}", f"{noun} not working", f"{noun} manual", f"reset {noun}"]
                    ),
                ),
            )
        yield (
            _think(rng),
            {"event_type": "help_view", "page": "/help", "page_type": "help", "product_id": product},
        )

    def _find_store(self, rng: random.Random, c: Fields) -> Script:
        category = rng.choice(list(CATALOGUE))
        term = rng.choice(CATALOGUE[category][2])
        if rng.random() < 0.6:
            yield (
                0,
                _search(
                    rng,
                    rng.choice([f"{term} near me", f"{term} store open now", f"{term} click and collect"]),
                ),
            )
            yield _think(rng), {"event_type": "store_locator_view", "page": "/stores", "page_type": "stores"}
        else:
            yield 0, {"event_type": "store_locator_view", "page": "/stores", "page_type": "stores"}

    def _frustrated(self, rng: random.Random, c: Fields) -> Script:
        category = rng.choice(list(CATALOGUE))
        yield 0, _product_view(rng, category)
        trouble = rng.choice(("errors", "declined", "loop"))
        if trouble == "errors":
            for _ in range(rng.randint(2, 4)):
                yield (
                    _think(rng, 5, 40),
                    {
                        "event_type": "error",
                        "error_code": rng.choice(["http_500", "timeout", "page_not_found"]),
                        "page": f"/c/{category}",
                    },
                )
            if rng.random() < 0.5:
                yield _think(rng, 10, 60), {"event_type": "help_view", "page": "/help", "page_type": "help"}
        else:
            product = _product(rng, category)
            yield _think(rng), {**product, "event_type": "add_to_cart"}
            for _ in range(rng.randint(2, 4)):
                yield (
                    _think(rng, 10, 60),
                    {
                        "event_type": "checkout_step",
                        "step": "payment",
                        **({"error_code": "card_declined"} if trouble == "declined" else {}),
                    },
                )

    def _checkout(
        self, rng: random.Random, c: Fields, category: str, *, complete: bool, product: Fields | None = None
    ) -> Script:
        item = product or _product(rng, category)
        yield _think(rng), {**item, "event_type": "add_to_cart"}
        steps = ["cart", "shipping", "payment"]
        for step in steps[: rng.randint(0, 3) if not complete else 3]:
            yield _think(rng, 15, 90), {"event_type": "checkout_step", "step": step}
        if not complete:
            return
        if c["customer_id"] not in self._buyers:
            self._buyer_ids.append(c["customer_id"])
        bought = self._buyers.setdefault(c["customer_id"], [])
        bought.append(item["product_id"])
        del bought[:-5]
        yield (
            _think(rng, 10, 40),
            {
                "event_type": "purchase",
                "order_id": f"o-{rng.getrandbits(40):010x}",
                "items": [
                    {
                        "product_id": item["product_id"],
                        "category": category,
                        "price": item["price"],
                        "quantity": 1,
                    }
                ],
                "total": item["price"],
                "currency": "EUR",
            },
        )


def _stamped(script: Script, common: Fields) -> Script:
    for delay, fields in script:
        yield delay, {**common, **{k: v for k, v in fields.items() if v is not None}}


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    names = [name for name, _ in weighted]
    return rng.choices(names, weights=[w for _, w in weighted])[0]


def _zone(customer: str) -> str:
    return TIMEZONES[sum(customer.encode()) % len(TIMEZONES)]


def _think(rng: random.Random, low: int = 5, high: int = 90) -> int:
    """Time a shopper spends on a page, in ms."""
    return int(rng.uniform(low, high) * 1000)


def _product(rng: random.Random, category: str) -> Fields:
    low, high, _ = CATALOGUE[category]
    number = min(int(rng.paretovariate(1.2)), PRODUCTS_PER_CATEGORY)
    price_rng = random.Random(f"{category}-{number}")
    return {
        "product_id": f"sku-{category}-{number:03d}",
        "category": category,
        "price": round(price_rng.uniform(low, high), 2),
        "currency": "EUR",
    }


def _product_view(rng: random.Random, category: str) -> Fields:
    return {**_product(rng, category), "event_type": "product_view", "page_type": "product"}


def _search(rng: random.Random, query: str, sort: str | None = None) -> Fields:
    return {"event_type": "search", "query": query, "results_count": rng.randint(0, 240), "sort": sort}
