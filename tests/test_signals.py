import pytest
from helpers import DEFAULTS, ev

from app.detector import Detector
from app.signals import Signal, phrase_pattern

VOCABULARY = Detector(DEFAULTS).vocabulary


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("iphone vs samsung", Signal.PRICE_WORDS),
        ("iPhone VS. Samsung", Signal.PRICE_WORDS),
        ("canvas tote", Signal.NONE),  # "vs" inside a word
        ("undercover agent", Signal.NONE),  # "under" inside a word
        ("tv under 500", Signal.PRICE_WORDS),
        ("best rated tv", Signal.REVIEW_WORDS),
        ("bestseller tv", Signal.NONE),
        ("how   to set up my tv", Signal.HOWTO_WORDS),
        ("tv store near me", Signal.LOCAL_WORDS),
        ("nearly new tv", Signal.NONE),
        ("cheapest tv near me", Signal.PRICE_WORDS | Signal.LOCAL_WORDS),
    ],
)
def test_query_words_match_whole_words_only(query: str, expected: Signal) -> None:
    assert VOCABULARY.signals(ev("search", query=query)) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"sort": "PRICE_ASC"}, Signal.PRICE_SORT),
        ({"sort": "rating_desc"}, Signal.REVIEW_SORT),
        ({"sort": "newest"}, Signal.NONE),
        ({"filters": {"max_price": 100}}, Signal.PRICE_FILTER),
        ({"filters": {"brand": "acme"}}, Signal.NONE),
    ],
)
def test_search_sorts_and_filters(fields: dict[str, object], expected: Signal) -> None:
    assert VOCABULARY.signals(ev("search", query="tv", **fields)) == expected


def test_declined_payment_codes_are_case_insensitive() -> None:
    assert VOCABULARY.signals(ev("error", error_code="Card_Declined")) == Signal.PAYMENT_DECLINED
    assert VOCABULARY.signals(ev("error", error_code="timeout")) == Signal.NONE


def test_phrase_pattern_ignores_blank_phrases() -> None:
    assert phrase_pattern(["  ", ""]) is None
    pattern = phrase_pattern(["open now", " "])
    assert pattern is not None
    assert pattern.search("shops OPEN\tnow") is not None
