"""The CloudEvents envelope of a trigger."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from helpers import SOURCE, at, decode, ev, raw, run
from hypothesis import given
from hypothesis import strategies as st

from app.detection import Detection
from app.triggers import encode, format_time, to_cloudevent, trigger_id


def compare_view(customer: str = "c1", event_id: str = "view-1") -> Detection:
    event = decode(
        raw("compare_view", "1234ms", customer=customer, event_id=event_id, session_id="s1", channel="web")
    )
    return run([event]).only("price_comparison")


def test_the_envelope() -> None:
    detection = compare_view()
    cloudevent = to_cloudevent(detection, source=SOURCE)
    data = cloudevent.pop("data")

    assert cloudevent == {
        "specversion": "1.0",
        "id": trigger_id("price_comparison", "c1", "view-1"),
        "source": "urn:micromoments:detector",
        "type": "micromoment.price_comparison.v1",
        "subject": "c1",
        "time": "2026-11-25T10:00:01.234Z",
        "datacontenttype": "application/json",
    }
    assert uuid.UUID(cloudevent["id"]).version == 5
    assert data["moment"] == "price_comparison"
    assert data["customer_id"] == "c1"
    assert (data["score"], data["threshold"], data["decided_by"]) == (0.6, 0.5, "rules")
    assert data["reasons"] == ["compare_view"]
    assert data["evidence"] == ["view-1"]
    assert data["detected_at"] == "2026-11-25T10:00:01.234Z"
    assert data["expires_at"] == "2026-11-25T10:30:01.234Z"  # ttl 30m
    assert (data["session_id"], data["channel"], data["journey_stage"]) == ("s1", "web", "consideration")


def test_expires_at_is_detection_time_plus_the_moments_ttl() -> None:
    # cart_abandonment: ttl 24h from the deadline
    detection = run([ev("add_to_cart", product_id="p1")], flush=True).only("cart_abandonment")
    assert detection.expires_at == at("30m") + 86_400_000
    assert to_cloudevent(detection, source=SOURCE)["data"]["expires_at"] == "2026-11-26T10:30:00.000Z"


def test_same_input_same_bytes() -> None:
    first, second = compare_view(), compare_view()
    assert encode(to_cloudevent(first, source=SOURCE)) == encode(to_cloudevent(second, source=SOURCE))
    assert orjson.loads(encode(to_cloudevent(first, source=SOURCE))) == to_cloudevent(first, source=SOURCE)


@pytest.mark.parametrize(
    "other",
    [
        ("review_seeking", "c1", "view-1"),
        ("price_comparison", "c2", "view-1"),
        ("price_comparison", "c1", "view-2"),
    ],
    ids=["moment", "customer", "anchor"],
)
def test_the_id_changes_with_moment_customer_and_anchor(other: tuple[str, str, str]) -> None:
    assert trigger_id(*other) != trigger_id("price_comparison", "c1", "view-1")


def test_the_id_of_a_detection_follows_its_customer_and_anchor() -> None:
    ids = {
        to_cloudevent(d, source=SOURCE)["id"]
        for d in (compare_view(), compare_view("c2"), compare_view(event_id="v2"))
    }
    assert len(ids) == 3


def test_the_id_does_not_mix_up_its_parts() -> None:
    assert trigger_id("m", "a", "bc") != trigger_id("m", "ab", "c")


def test_a_subject_replaces_the_customer_id_but_not_the_id() -> None:
    detection = compare_view()
    cloudevent = to_cloudevent(detection, source=SOURCE, subject="pseudonym-9")
    assert (cloudevent["subject"], cloudevent["data"]["customer_id"]) == ("pseudonym-9", "pseudonym-9")
    assert cloudevent["id"] == trigger_id("price_comparison", "c1", "view-1")


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (at("1234ms"), "2026-11-25T10:00:01.234Z"),
        (at("23h59m59s999ms"), "2026-11-26T09:59:59.999Z"),
    ],
)
def test_time_format(ms: int, text: str) -> None:
    assert format_time(ms) == text


@given(st.integers(min_value=0, max_value=4_102_444_799_999))
def test_time_format_agrees_with_datetime(ms: int) -> None:
    expected = datetime.fromtimestamp(0, UTC) + timedelta(milliseconds=ms)
    assert format_time(ms) == expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=60))
def test_trigger_ids_are_the_rfc_4122_version_5_uuids(moment: str, customer: str, anchor: str) -> None:
    namespace = uuid.UUID("6f1c3b52-7d0e-5a43-9a3e-4d1f3b1c2e70")  # fixed forever
    assert trigger_id(moment, customer, anchor) == str(
        uuid.uuid5(namespace, f"{moment}\x1f{customer}\x1f{anchor}")
    )
