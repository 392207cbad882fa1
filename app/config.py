"""The moment catalogue: every threshold, window, keyword and cooldown, from TOML.

The defaults ship as ``app/moments.toml``. A user file passed with ``--config``
(or ``MM_MOMENTS_CONFIG``) is merged over them key by key, so it only needs the
values it changes. Unknown keys and out-of-range values are errors that name
the offending key.
"""

from __future__ import annotations

import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import msgspec

from app.durations import Duration, decode_hook
from app.learning.config import LearningConfig
from app.moments import MOMENT_TYPES
from app.moments.cart_abandonment import CartAbandonmentConfig
from app.moments.frustration import FrustrationConfig
from app.moments.local_intent import LocalIntentConfig
from app.moments.post_purchase_howto import PostPurchaseHowtoConfig
from app.moments.price_comparison import PriceComparisonConfig
from app.moments.review_seeking import ReviewSeekingConfig
from app.policy import Policy, PolicyConfig

Count = Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class WindowConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    allowed_lateness: Duration
    max_future_skew: Duration
    max_events: Count
    max_orders: Count
    order_retention: Duration
    stats_window: Duration


class JourneyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    post_purchase: Duration
    loyalty_min_orders: Count


class MomentsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    price_comparison: PriceComparisonConfig
    review_seeking: ReviewSeekingConfig
    cart_abandonment: CartAbandonmentConfig
    post_purchase_howto: PostPurchaseHowtoConfig
    local_intent: LocalIntentConfig
    frustration: FrustrationConfig


class TriggerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The CloudEvents ``source`` of every trigger.
    source: str


class Catalogue(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    window: WindowConfig
    journey: JourneyConfig
    moments: MomentsConfig
    trigger: TriggerConfig
    policy: PolicyConfig
    learning: LearningConfig


class ConfigError(ValueError):
    pass


def default_config_text() -> str:
    return files("app").joinpath("moments.toml").read_text(encoding="utf-8")


def load_catalogue(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Catalogue:
    """The shipped defaults, with the file at ``path`` and then ``overrides`` merged over them."""
    merged = tomllib.loads(default_config_text())
    if path is not None:
        try:
            with open(path, "rb") as fh:
                user = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read moment configuration {path}: {exc}") from exc
        merged = _merge(merged, user)
    if overrides:
        merged = _merge(merged, overrides)
    where = f" in {path}" if path else ""
    try:
        catalogue = msgspec.convert(merged, Catalogue, dec_hook=decode_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid moment configuration{where}: {exc}") from exc
    try:
        Policy(catalogue.policy)
    except ValueError as exc:
        raise ConfigError(f"invalid moment configuration{where}: {exc}") from exc
    unknown = set(catalogue.policy.holdout.share) - {m.name for m in MOMENT_TYPES}
    if unknown:
        raise ConfigError(
            f"invalid moment configuration{where}: policy.holdout.share names no moment {sorted(unknown)}"
        )
    for moment in MOMENT_TYPES:
        try:  # each moment checks its own configuration (its weights name exactly its signals)
            moment(getattr(catalogue.moments, moment.name))
        except ValueError as exc:
            raise ConfigError(f"invalid moment configuration{where}: {exc}") from exc
    return catalogue


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


__all__ = ["Catalogue", "ConfigError", "Duration", "load_catalogue"]
