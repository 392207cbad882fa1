"""decode_event: every bad input gets a precise reason, and nothing ever raises."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from helpers import BAD_LINES, raw
from helpers import bad_line as line
from hypothesis import given, settings
from hypothesis import strategies as st

from app.decoding import Reason, Rejection, decode_event
from app.events import (
    CLICKSTREAM_KINDS,
    EVENT_TYPES,
    FACT_KINDS,
    PURCHASE_KINDS,
    STRUCTS,
    ClickstreamEvent,
    ConsentEvent,
    ForgetRequest,
    Kind,
    PurchaseEvent,
    SearchEvent,
    SuppressionEvent,
)


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.INTERNAL_ERROR])
def test_each_reason_has_a_realistic_bad_line(reason: Reason) -> None:
    rejected = decode_event(BAD_LINES[reason])
    assert isinstance(rejected, Rejection)
    assert rejected.reason is reason
    assert rejected.detail


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"", Reason.NOT_JSON),
        (b"\xff\xfe", Reason.NOT_JSON),
        (b'"search"', Reason.NOT_OBJECT),
        (line(event_type=None), Reason.MISSING_FIELD),
        (line(event_type=7), Reason.WRONG_TYPE),
        (line(occurred_at=None), Reason.MISSING_FIELD),
        (line(occurred_at=1764064800), Reason.BAD_TIMESTAMP),
        (line(occurred_at="2026-13-01T00:00:00Z"), Reason.BAD_TIMESTAMP),
        (line(occurred_at="2101-01-01T00:00:00Z"), Reason.TIMESTAMP_OUT_OF_RANGE),
        (line(event_id="has space"), Reason.INVALID_VALUE),
        (line(query=""), Reason.INVALID_VALUE),
        (line(channel="Web"), Reason.INVALID_VALUE),
        (line(filters=["price"]), Reason.WRONG_TYPE),
        (
            orjson.dumps(raw("purchase", order_id="o1", items=[{"product_id": "p1", "quantity": 0}])),
            Reason.INVALID_VALUE,
        ),
        (orjson.dumps(raw("purchase", order_id="o1", currency="eur")), Reason.INVALID_VALUE),
        (orjson.dumps(raw("product_view", price="9.99")), Reason.WRONG_TYPE),
    ],
)
def test_more_rejections(bad: bytes, reason: Reason) -> None:
    rejected = decode_event(bad)
    assert isinstance(rejected, Rejection)
    assert rejected.reason is reason, rejected.detail


@pytest.mark.parametrize(
    ("obj", "struct"),
    [
        (
            raw("product_view", product_id="p1", category="tv", price=9.5, unknown_extra="ignored"),
            ClickstreamEvent,
        ),
        (raw("search", query="tv", filters={"price_max": 9}, sort="price_asc"), SearchEvent),
        (raw("refund", order_id="o1", items=[{"product_id": "p1", "quantity": 2}]), PurchaseEvent),
    ],
)
def test_valid_events_decode_to_their_struct(obj: dict[str, Any], struct: type) -> None:
    for encoded in (orjson.dumps(obj), orjson.dumps(obj).decode(), bytearray(orjson.dumps(obj))):
        event = decode_event(encoded)
        assert isinstance(event, struct)
        assert event.event_id == obj["event_id"]


def test_timestamps_with_an_offset_are_normalised_to_epoch_milliseconds() -> None:
    event = decode_event(line(occurred_at="2026-11-25T11:00:00.250+01:00"))
    assert not isinstance(event, Rejection)
    assert event.ts == decode_event(line(occurred_at="2026-11-25T10:00:00.250Z")).ts  # type: ignore[union-attr]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "event_id",
    "customer_id",
    "event_type",
    "occurred_at",
    "query",
    "items",
    "order_id",
    "price",
    "filters",
    "results_count",
    "session_id",
    "channel",
    "currency",
    "product_id",
    "total",
]


def assert_decodes_or_rejects(data: bytes | str) -> None:
    result = decode_event(data)
    assert isinstance(result, Rejection | ClickstreamEvent | SearchEvent | PurchaseEvent)
    if isinstance(result, Rejection):
        assert isinstance(result.reason, Reason)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert_decodes_or_rejects(data)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    assert_decodes_or_rejects(orjson.dumps(value))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["search", "product_view", "purchase", "error"]),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4),
)
def test_nearly_valid_events_never_raise(event_type: str, changes: dict[str, Any]) -> None:
    obj = raw(event_type, query="tv", order_id="o1") | changes
    assert_decodes_or_rejects(orjson.dumps(obj))
    assert_decodes_or_rejects(orjson.dumps(obj).decode("utf-8"))


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_the_kind_groups_agree_with_the_structs(event_type: str) -> None:
    # The core dispatches on these groups instead of isinstance, and casts accordingly.
    kind, struct = Kind.of(event_type), STRUCTS[event_type]
    assert struct.kind == kind
    assert (kind in CLICKSTREAM_KINDS) == issubclass(struct, ClickstreamEvent)
    assert (kind in PURCHASE_KINDS) == issubclass(struct, PurchaseEvent)
    assert (kind in FACT_KINDS) == issubclass(struct, ConsentEvent | SuppressionEvent)
    assert (kind == Kind.FORGET) == issubclass(struct, ForgetRequest)
