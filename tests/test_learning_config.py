"""LearningConfig: defaults, overrides, errors that name the key."""

from __future__ import annotations

import msgspec
import pytest

from app.durations import decode_hook
from app.events import Kind
from app.learning.config import MOMENT_NAMES, LearningConfig
from app.moments import MOMENT_TYPES


def convert(table: dict[str, object]) -> LearningConfig:
    return msgspec.convert(table, LearningConfig, dec_hook=decode_hook)


def test_defaults() -> None:
    cfg = LearningConfig()
    assert cfg == convert({})
    assert cfg.model.kind == "logistic_regression"
    assert cfg.model.scaled
    assert cfg.min_examples == 200
    assert cfg.max_pending == 32
    assert list(cfg.outcomes) == list(MOMENT_NAMES) == [m.name for m in MOMENT_TYPES]
    purchase = frozenset({Kind.PURCHASE})
    assert cfg.outcome_kinds() == {
        "price_comparison": purchase,
        "review_seeking": purchase,
        "cart_abandonment": purchase,
        "post_purchase_howto": frozenset({Kind.HELP_VIEW, Kind.REFUND}),
        "local_intent": purchase,
        "frustration": purchase,
    }
    assert cfg.horizons() == {
        "price_comparison": 30 * 60_000,
        "review_seeking": 30 * 60_000,
        "cart_abandonment": 30 * 60_000,
        "post_purchase_howto": 7 * 86_400_000,
        "local_intent": 30 * 60_000,
        "frustration": 30 * 60_000,
    }


def test_overrides() -> None:
    cfg = convert(
        {
            "model": {"kind": "adaptive_random_forest", "params": {"n_models": 5}, "seed": 3},
            "min_examples": 50,
            "outcomes": {"local_intent": {"outcome": ["purchase", "store_locator_view"], "horizon": "1d"}},
            "segments": {"n_clusters": 8},
        }
    )
    assert (cfg.model.kind, cfg.model.params, cfg.model.seed, cfg.model.scaled) == (
        "adaptive_random_forest",
        {"n_models": 5},
        3,
        False,
    )
    assert cfg.min_examples == 50
    assert cfg.outcome_kinds()["local_intent"] == {Kind.PURCHASE, Kind.STORE_LOCATOR_VIEW}
    assert cfg.horizons()["local_intent"] == 86_400_000
    assert cfg.horizons()["frustration"] == 30 * 60_000  # the others keep their defaults
    assert list(cfg.outcomes) == list(MOMENT_NAMES)
    assert cfg.segments.n_clusters == 8


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"model": {"kind": "svm"}}, r"unknown model kind 'svm'.* - at `\$.model`"),
        ({"model": {"depth": 3}}, r"unknown field `depth` - at `\$.model`"),
        ({"outcomes": {"price_comparison": {"outcome": ["buy"], "horizon": "30m"}}}, "unknown event type"),
        ({"outcomes": {"price_comparison": {"outcome": [], "horizon": "30m"}}}, "length >= 1"),
        ({"outcomes": {"price_comparison": {"outcome": ["purchase"], "horizon": "0s"}}}, "positive"),
        (
            {"outcomes": {"price_comparison": {"outcome": ["purchase"], "horizon": "soon"}}},
            "invalid duration",
        ),
        ({"outcomes": {"price_comparison": {"outcome": ["purchase"]}}}, "missing required field `horizon`"),
        ({"outcomes": {"impulse_buy": {"outcome": ["purchase"], "horizon": "1h"}}}, "unknown moment"),
        ({"min_examples": 0}, r"`\$.min_examples`"),
        ({"max_pending": 0}, r"`\$.max_pending`"),
        ({"segments": {"n_clusters": 1}}, r"`\$.segments.n_clusters`"),
        ({"colour": "blue"}, "unknown field `colour`"),
    ],
)
def test_errors_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        convert(table)
