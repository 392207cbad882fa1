"""``local_intent``: the customer wants a physical store, now.

Signals, within ``window``: ``store_locator_view`` and ``local_words``
("near me", "open now", "pickup", ... in a search).
"""

from __future__ import annotations

from collections import Counter

from app.durations import Duration
from app.events import Kind
from app.moments.base import Candidate, Moment, MomentConfig
from app.signals import Signal
from app.window import CustomerState, Entry, between


class LocalIntentConfig(MomentConfig, kw_only=True, forbid_unknown_fields=True):
    window: Duration
    keywords: list[str]


class LocalIntent(Moment):
    name = "local_intent"
    kinds = frozenset({Kind.STORE_LOCATOR_VIEW, Kind.SEARCH})
    signals = ("store_locator_view", "local_words")
    config: LocalIntentConfig

    def evaluate(self, state: CustomerState, entry: Entry) -> Candidate | None:
        if entry.kind == Kind.SEARCH and not entry.flags & Signal.LOCAL_WORDS:
            return None
        counts: Counter[str] = Counter()
        evidence: list[str] = []
        for seen in between(state.entries, entry.ts - self.config.window, entry.ts):
            if seen.kind == Kind.STORE_LOCATOR_VIEW:
                counts["store_locator_view"] += 1
            elif seen.kind == Kind.SEARCH and seen.flags & Signal.LOCAL_WORDS:
                counts["local_words"] += 1
            else:
                continue
            evidence.append(seen.event_id)
        parts = []
        if counts["store_locator_view"]:
            parts.append("opened the store locator")
        if counts["local_words"]:
            parts.append("searched for a nearby store or pickup")
        return self.candidate(entry, counts, evidence, f"Local intent: {' and '.join(parts)}.")
