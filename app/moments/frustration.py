"""``frustration``: something is going wrong for the customer, right now.

Signals, within ``window``: ``repeated_errors`` (at least ``min_errors`` error
events), ``payment_declined`` (an error code in ``declined_codes``),
``checkout_loop`` (one checkout step at least ``min_step_repeats`` times) and
``help_after_error`` (help sought within ``help_after_error`` of an error).
The event being evaluated must itself carry one of them.
"""

from __future__ import annotations

from app.durations import Duration
from app.events import Kind
from app.moments.base import Candidate, Moment, MomentConfig
from app.signals import Signal
from app.window import CustomerState, Entry, between


class FrustrationConfig(MomentConfig, kw_only=True, forbid_unknown_fields=True):
    window: Duration
    min_errors: int
    min_step_repeats: int
    help_after_error: Duration
    declined_codes: list[str]


# Help sought: a help view, or a search with how-to words (other searches return early).
_HELP_KINDS = frozenset({Kind.HELP_VIEW, Kind.SEARCH})

_SENTENCES = {
    "repeated_errors": "hit {repeated_errors} errors",
    "payment_declined": "had a payment declined",
    "checkout_loop": "went through the same checkout step {checkout_loop} times",
    "help_after_error": "looked for help right after an error",
}


class Frustration(Moment):
    name = "frustration"
    kinds = frozenset({Kind.ERROR, Kind.CHECKOUT_STEP, Kind.HELP_VIEW, Kind.SEARCH})
    signals = ("repeated_errors", "payment_declined", "checkout_loop", "help_after_error")
    config: FrustrationConfig

    def evaluate(self, state: CustomerState, entry: Entry) -> Candidate | None:
        cfg = self.config
        kind = entry.kind
        if kind == Kind.SEARCH and not entry.flags & Signal.HOWTO_WORDS:
            return None
        window = between(state.entries, entry.ts - cfg.window, entry.ts)
        counts: dict[str, int] = {}
        # Evidence besides the window's errors, which every frustration cites.
        cited: list[str] = []
        if entry.flags & Signal.PAYMENT_DECLINED:
            counts["payment_declined"] = 1
            if kind != Kind.ERROR:
                cited.append(entry.event_id)
        if kind == Kind.ERROR:
            errors = sum(1 for e in window if e.kind == Kind.ERROR)
            if errors >= cfg.min_errors:
                counts["repeated_errors"] = errors
        elif kind == Kind.CHECKOUT_STEP:
            loop = [e.event_id for e in window if e.kind == Kind.CHECKOUT_STEP and e.detail == entry.detail]
            if len(loop) >= cfg.min_step_repeats:
                counts["checkout_loop"] = len(loop)
                cited.extend(loop)
        elif kind in _HELP_KINDS:
            # A help view, or a how-to search, right after an error.
            since = entry.ts - cfg.help_after_error
            if any(e.kind == Kind.ERROR and e.ts >= since for e in window):
                counts["help_after_error"] = 1
                cited.append(entry.event_id)
        if not counts:
            return None
        sentence = (
            "Frustrated: "
            + "; ".join(_SENTENCES[s].format(**counts) for s in self.signals if s in counts)
            + "."
        )
        return self.candidate(
            entry,
            counts,
            [e.event_id for e in window if e.kind == Kind.ERROR] + cited,
            sentence,
            minimums={"repeated_errors": cfg.min_errors, "checkout_loop": cfg.min_step_repeats},
        )
