"""``price_comparison``: the customer is weighing prices before choosing.

Signals, within ``window`` of the event being evaluated:

- ``category_browsing``: at least ``min_category_views`` distinct products viewed in one category;
- ``compare_view``: a product comparison page;
- ``price_sort`` / ``price_filter``: a search sorted or filtered by price;
- ``price_words``: price words in a search ("cheap", "deal", "vs", "price", ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from app.durations import Duration, format_duration
from app.events import Kind
from app.moments.base import Candidate, Moment, MomentConfig
from app.signals import Signal
from app.window import CustomerState, Entry, between


class PriceComparisonConfig(MomentConfig, kw_only=True, forbid_unknown_fields=True):
    window: Duration
    min_category_views: int
    keywords: list[str]
    price_sorts: list[str]


_SEARCH_SIGNALS = (
    (Signal.PRICE_SORT, "price_sort"),
    (Signal.PRICE_FILTER, "price_filter"),
    (Signal.PRICE_WORDS, "price_words"),
)


class PriceComparison(Moment):
    name = "price_comparison"
    kinds = frozenset({Kind.PRODUCT_VIEW, Kind.COMPARE_VIEW, Kind.SEARCH})
    signals = ("category_browsing", "compare_view", "price_sort", "price_filter", "price_words")
    config: PriceComparisonConfig

    def evaluate(self, state: CustomerState, entry: Entry) -> Candidate | None:
        cfg = self.config
        kind = entry.kind
        if kind == Kind.SEARCH and not entry.flags & _PRICE_FLAGS:
            return None
        window = between(state.entries, entry.ts - cfg.window, entry.ts)
        if kind == Kind.PRODUCT_VIEW and not _browsing(window, entry.category, cfg.min_category_views):
            return None  # the common case, decided without the full tally below
        counts: Counter[str] = Counter()
        evidence: list[str] = []
        products_by_category: dict[str, set[str]] = {}
        for seen in window:
            if seen.kind == Kind.PRODUCT_VIEW:
                if seen.category is not None and seen.product_id is not None:
                    products_by_category.setdefault(seen.category, set()).add(seen.product_id)
                continue
            if seen.kind == Kind.COMPARE_VIEW:
                counts["compare_view"] += 1
                evidence.append(seen.event_id)
            elif seen.kind == Kind.SEARCH and seen.flags & _PRICE_FLAGS:
                for flag, signal in _SEARCH_SIGNALS:
                    if seen.flags & flag:
                        counts[signal] += 1
                evidence.append(seen.event_id)

        category = entry.category if entry.kind == Kind.PRODUCT_VIEW else _busiest(products_by_category)
        browsed = len(products_by_category.get(category, ())) if category is not None else 0
        browsing = browsed >= cfg.min_category_views
        if not (_carries_signal(entry) or (browsing and entry.category == category)):
            return None
        if browsing:
            counts["category_browsing"] = browsed
            evidence = [
                seen.event_id
                for seen in window
                if seen.kind == Kind.PRODUCT_VIEW and seen.category == category
            ] + evidence
        if not counts:
            return None
        return self.candidate(
            entry,
            counts,
            evidence,
            _explain(counts, category if browsing else None, cfg.window),
            minimums={"category_browsing": cfg.min_category_views},
            attributes={"category": category} if browsing else None,
        )


_PRICE_FLAGS = Signal.PRICE_SORT | Signal.PRICE_FILTER | Signal.PRICE_WORDS


def _browsing(window: Sequence[Entry], category: str | None, at_least: int) -> bool:
    if category is None:
        return False
    products = {e.product_id for e in window if e.category == category and e.kind == Kind.PRODUCT_VIEW}
    products.discard(None)
    return len(products) >= at_least


def _carries_signal(entry: Entry) -> bool:
    return entry.kind == Kind.COMPARE_VIEW or (entry.kind == Kind.SEARCH and bool(entry.flags & _PRICE_FLAGS))


def _busiest(products_by_category: dict[str, set[str]]) -> str | None:
    if not products_by_category:
        return None
    # Ties go to the alphabetically first category so the result is deterministic.
    return min(products_by_category, key=lambda c: (-len(products_by_category[c]), c))


def _explain(counts: Counter[str], category: str | None, window: int) -> str:
    parts = []
    if category is not None:
        parts.append(
            f"viewed {counts['category_browsing']} products in {category!r} within {format_duration(window)}"
        )
    if counts["compare_view"]:
        parts.append(f"opened {counts['compare_view']} product comparison(s)")
    if counts["price_sort"] or counts["price_filter"]:
        parts.append("sorted or filtered search results by price")
    if counts["price_words"]:
        parts.append("searched with price words")
    return "Comparing prices: " + "; ".join(parts) + "."
