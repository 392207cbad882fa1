"""Intent signals read off a single event, before it enters the window.

Search text is reduced here to a few bit flags, so the window never keeps a
customer's raw query (data minimisation) and detection compares integers
instead of strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from app.events import ClickstreamEvent, Event, SearchEvent


class Signal:
    """Bit flags of an entry. Plain ints, not an IntFlag: enum arithmetic is slow on the hot path."""

    NONE: Final = 0
    PRICE_WORDS: Final = 1 << 0
    PRICE_SORT: Final = 1 << 1
    PRICE_FILTER: Final = 1 << 2
    REVIEW_WORDS: Final = 1 << 3
    REVIEW_SORT: Final = 1 << 4
    HOWTO_WORDS: Final = 1 << 5
    LOCAL_WORDS: Final = 1 << 6
    PAYMENT_DECLINED: Final = 1 << 7


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern matching any phrase as whole words.

    >>> bool(phrase_pattern(["near me", "pickup"]).search("Stores NEAR  me"))
    True
    >>> bool(phrase_pattern(["vs"]).search("canvas bag"))
    False
    """
    alternatives = sorted(
        (r"\s+".join(re.escape(word) for word in phrase.split()) for phrase in phrases if phrase.strip()),
        key=len,
        reverse=True,
    )
    if not alternatives:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


class Vocabulary:
    """Keyword lists and codes from the moment configuration, compiled once."""

    def __init__(
        self,
        *,
        price_words: Iterable[str] = (),
        review_words: Iterable[str] = (),
        howto_words: Iterable[str] = (),
        local_words: Iterable[str] = (),
        price_sorts: Iterable[str] = (),
        review_sorts: Iterable[str] = (),
        price_filter_marker: str = "price",
        declined_codes: Iterable[str] = (),
    ) -> None:
        self._words = [
            (pattern, flag)
            for pattern, flag in (
                (phrase_pattern(price_words), Signal.PRICE_WORDS),
                (phrase_pattern(review_words), Signal.REVIEW_WORDS),
                (phrase_pattern(howto_words), Signal.HOWTO_WORDS),
                (phrase_pattern(local_words), Signal.LOCAL_WORDS),
            )
            if pattern is not None
        ]
        self._price_sorts = frozenset(s.lower() for s in price_sorts)
        self._review_sorts = frozenset(s.lower() for s in review_sorts)
        self._price_filter_marker = price_filter_marker.lower()
        self._declined_codes = frozenset(c.lower() for c in declined_codes)

    def signals(self, event: Event) -> int:
        """The :class:`Signal` flags ``event`` carries, as an ``int``."""
        if isinstance(event, SearchEvent):
            return self._search_signals(event)
        if (
            isinstance(event, ClickstreamEvent)
            and event.error_code is not None
            and event.error_code.lower() in self._declined_codes
        ):
            return Signal.PAYMENT_DECLINED
        return 0

    def _search_signals(self, event: SearchEvent) -> int:
        flags = 0
        for pattern, flag in self._words:
            if pattern.search(event.query):
                flags |= flag
        if event.sort is not None:
            sort = event.sort.lower()
            if sort in self._price_sorts:
                flags |= Signal.PRICE_SORT
            elif sort in self._review_sorts:
                flags |= Signal.REVIEW_SORT
        if event.filters and any(self._price_filter_marker in key.lower() for key in event.filters):
            flags |= Signal.PRICE_FILTER
        return flags
