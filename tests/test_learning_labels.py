"""Delayed outcomes: examples labelled on time, late (past the horizon) and never; bounded."""

from __future__ import annotations

import msgspec
import pytest

from app.events import Kind
from app.learning.config import LearningConfig
from app.learning.labels import (
    MAX_PENDING,
    LabelledExample,
    PendingExample,
    add,
    expire,
    next_deadline,
    resolve,
)

MINUTE = 60_000
HORIZON = 30 * MINUTE
T = 1_000_000_000  # a candidate's event time
CONFIG = LearningConfig()
OUTCOMES = CONFIG.outcome_kinds()


def pending(moment: str = "price_comparison", ts: int = T, *, horizon: int = HORIZON) -> PendingExample:
    return PendingExample(moment, ts, ts + horizon, {"views": 3.0}, 0.7, "rules")


def test_an_outcome_on_time_labels_positive() -> None:
    waiting = [pending()]
    remaining, labelled = resolve(waiting, OUTCOMES, Kind.PURCHASE, T + 10 * MINUTE)
    assert remaining == []
    assert labelled == [LabelledExample("price_comparison", {"views": 3.0}, True, 0.7, "rules", T)]
    assert waiting == [pending()]  # the input is left alone


def test_the_horizon_is_inclusive() -> None:
    remaining, labelled = resolve([pending()], OUTCOMES, Kind.PURCHASE, T + HORIZON)
    assert [e.label for e in labelled] == [True]
    assert remaining == []


def test_a_late_outcome_labels_nothing_and_the_example_expires_negative() -> None:
    waiting = [pending()]
    remaining, labelled = resolve(waiting, OUTCOMES, Kind.PURCHASE, T + HORIZON + 1)
    assert labelled == []
    assert remaining is waiting
    remaining, negatives = expire(remaining, T + HORIZON + 1)
    assert remaining == []
    assert [(e.moment, e.label, e.ts) for e in negatives] == [("price_comparison", False, T)]


def test_no_outcome_ever_labels_negative_once_event_time_passes_the_horizon() -> None:
    waiting = [pending()]
    for kind in (Kind.PAGE_VIEW, Kind.PRODUCT_VIEW, Kind.ADD_TO_CART, Kind.HELP_VIEW):
        waiting, labelled = resolve(waiting, OUTCOMES, kind, T + MINUTE)
        assert labelled == []
    assert expire(waiting, T + HORIZON) == (waiting, [])  # at the deadline: still waiting
    remaining, negatives = expire(waiting, T + HORIZON + 1)
    assert (remaining, [e.label for e in negatives]) == ([], [False])


def test_only_events_after_the_candidate_count() -> None:
    waiting = [pending()]
    for ts in (T - 1, T):  # an earlier purchase arriving late; one at the candidate's own time
        remaining, labelled = resolve(waiting, OUTCOMES, Kind.PURCHASE, ts)
        assert (remaining, labelled) == (waiting, [])


def test_each_moment_has_its_own_outcome_and_horizon() -> None:
    horizons = CONFIG.horizons()
    waiting = [
        pending("price_comparison", horizon=horizons["price_comparison"]),
        pending("post_purchase_howto", horizon=horizons["post_purchase_howto"]),
        pending("frustration", horizon=horizons["frustration"]),
    ]
    # A help view an hour on: the post-purchase customer still needed help.
    waiting, labelled = resolve(waiting, OUTCOMES, Kind.HELP_VIEW, T + 60 * MINUTE)
    assert [(e.moment, e.label) for e in labelled] == [("post_purchase_howto", True)]
    # A purchase ten minutes on resolves both purchase moments.
    waiting = [pending("price_comparison"), pending("frustration"), pending("post_purchase_howto")]
    waiting, labelled = resolve(waiting, OUTCOMES, Kind.PURCHASE, T + 10 * MINUTE)
    assert [e.moment for e in labelled] == ["price_comparison", "frustration"]
    assert [e.moment for e in waiting] == ["post_purchase_howto"]
    # A refund within 7 days is an outcome too.
    late = pending("post_purchase_howto", horizon=horizons["post_purchase_howto"])
    _, labelled = resolve([late], OUTCOMES, Kind.REFUND, T + 6 * 24 * 60 * MINUTE)
    assert [e.label for e in labelled] == [True]


def test_a_moment_without_an_outcome_only_expires() -> None:
    waiting = [pending("price_comparison")]
    assert resolve(waiting, {}, Kind.PURCHASE, T + MINUTE) == (waiting, [])


def test_several_examples_resolve_at_once_and_others_stay() -> None:
    waiting = [pending(ts=T), pending(ts=T + MINUTE), pending(ts=T + 20 * MINUTE)]
    remaining, labelled = resolve(waiting, OUTCOMES, Kind.PURCHASE, T + 10 * MINUTE)
    assert [e.ts for e in labelled] == [T, T + MINUTE]
    assert [e.ts for e in remaining] == [T + 20 * MINUTE]


def test_next_deadline() -> None:
    assert next_deadline([]) is None
    waiting = [pending("post_purchase_howto", horizon=7 * 24 * 60 * MINUTE), pending(ts=T + MINUTE)]
    assert next_deadline(waiting) == T + MINUTE + HORIZON


def test_pending_examples_are_bounded_oldest_first() -> None:
    waiting: list[PendingExample] = []
    dropped = 0
    for i in range(MAX_PENDING + 5):
        waiting, lost = add(waiting, pending(ts=T + i))
        dropped += lost
    assert len(waiting) == MAX_PENDING
    assert dropped == 5
    assert [e.ts for e in waiting] == [T + i for i in range(5, MAX_PENDING + 5)]


def test_a_late_candidate_is_kept_in_time_order() -> None:
    waiting = [pending(ts=T), pending(ts=T + 2)]
    waiting, dropped = add(waiting, pending(ts=T + 1), limit=3)
    assert ([e.ts for e in waiting], dropped) == ([T, T + 1, T + 2], 0)
    # Full: the oldest goes, even when the newcomer is not the newest.
    waiting, dropped = add(waiting, pending(ts=T + 1), limit=3)
    assert ([e.ts for e in waiting], dropped) == ([T + 1, T + 1, T + 2], 1)
    with pytest.raises(ValueError, match="limit"):
        add(waiting, pending(), limit=0)


def test_examples_are_compact_messagepack() -> None:
    example = pending()
    blob = msgspec.msgpack.encode([example])
    assert msgspec.msgpack.decode(blob, type=list[PendingExample]) == [example]
    assert msgspec.msgpack.encode(example).startswith(b"\x99")  # a 9-element array, not a map
    labelled = example.labelled(False)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(labelled), type=LabelledExample) == labelled
