"""``review_seeking``: the customer is looking for other people's opinions.

Signals, within ``window``: ``review_view`` (review pages opened, counted),
``review_words`` ("review", "best", "rating", ... in a search) and
``review_sort`` (search results sorted by rating).
"""

from __future__ import annotations

from collections import Counter

from app.durations import Duration, format_duration
from app.events import Kind
from app.moments.base import Candidate, Moment, MomentConfig
from app.signals import Signal
from app.window import CustomerState, Entry, between


class ReviewSeekingConfig(MomentConfig, kw_only=True, forbid_unknown_fields=True):
    window: Duration
    keywords: list[str]
    review_sorts: list[str]


_REVIEW_FLAGS = Signal.REVIEW_WORDS | Signal.REVIEW_SORT


class ReviewSeeking(Moment):
    name = "review_seeking"
    kinds = frozenset({Kind.REVIEW_VIEW, Kind.SEARCH})
    signals = ("review_view", "review_words", "review_sort")
    config: ReviewSeekingConfig

    def evaluate(self, state: CustomerState, entry: Entry) -> Candidate | None:
        if entry.kind == Kind.SEARCH and not entry.flags & _REVIEW_FLAGS:
            return None
        counts: Counter[str] = Counter()
        evidence: list[str] = []
        products: list[str] = []
        for seen in between(state.entries, entry.ts - self.config.window, entry.ts):
            if seen.kind == Kind.REVIEW_VIEW:
                counts["review_view"] += 1
                if seen.product_id is not None and seen.product_id not in products:
                    products.append(seen.product_id)
            elif seen.kind == Kind.SEARCH and seen.flags & _REVIEW_FLAGS:
                if seen.flags & Signal.REVIEW_WORDS:
                    counts["review_words"] += 1
                if seen.flags & Signal.REVIEW_SORT:
                    counts["review_sort"] += 1
            else:
                continue
            evidence.append(seen.event_id)
        parts = []
        if counts["review_view"]:
            parts.append(f"read reviews {counts['review_view']} time(s)")
        if counts["review_words"] or counts["review_sort"]:
            parts.append("searched for ratings or reviews")
        sentence = f"Seeking reviews: {' and '.join(parts)} within {format_duration(self.config.window)}."
        return self.candidate(
            entry,
            counts,
            evidence,
            sentence,
            attributes={"products": products[-10:]} if products else None,
        )
