"""Configuration of online learning: which model, when it takes over, what counts as an outcome.

Plain msgspec Structs in the style of :mod:`app.config`: keyword-only,
``forbid_unknown_fields``, durations as :class:`~app.durations.Duration`, each
with a default, so a TOML ``[learning]`` table only needs the values it changes.
Decode with ``msgspec.convert(table, LearningConfig, dec_hook=decode_hook)``;
every invalid value (an unknown model kind or event type, a moment that does
not exist) is a ``msgspec.ValidationError`` naming the offending key.

>>> from app.durations import decode_hook
>>> cfg = msgspec.convert(
...     {"model": {"kind": "hoeffding_tree"},
...      "outcomes": {"frustration": {"outcome": ["purchase"], "horizon": "15m"}}},
...     LearningConfig,
...     dec_hook=decode_hook,
... )
>>> cfg.model.kind, cfg.outcomes["frustration"].horizon, cfg.outcomes["frustration"].outcome
('hoeffding_tree', Duration('15m'), ['purchase'])
>>> sorted(cfg.outcome_kinds()["post_purchase_howto"])
[8, 13]
>>> msgspec.convert({"model": {"kind": "svm"}}, LearningConfig)
Traceback (most recent call last):
...
msgspec.ValidationError: unknown model kind 'svm'; choose one of 'logistic_regression', \
'hoeffding_tree', 'adaptive_random_forest' - at `$.model`
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from app.durations import Duration
from app.events import Kind
from app.moments import MOMENT_TYPES

# The River classifiers a model configuration can name (see :mod:`app.learning.model`).
MODEL_KINDS: Final = ("logistic_regression", "hoeffding_tree", "adaptive_random_forest")
# A constructor argument of the chosen River classifier, as TOML can write it.
Param = int | float | str | bool
PositiveCount = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
MOMENT_NAMES: Final = tuple(moment.name for moment in MOMENT_TYPES)


class ModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The classifier every moment's model is built from (one independent model per moment)."""

    # One of MODEL_KINDS.
    kind: str = "logistic_regression"
    # Put a ``preprocessing.StandardScaler`` in front of the classifier; ``None``
    # means the kind's default: on for logistic regression (gradient steps need
    # comparable scales), off for the trees (splits do not care about scale).
    scale: bool | None = None
    # Constructor arguments of the River classifier, e.g. ``{l2 = 0.001}`` for
    # logistic regression or ``{grace_period = 100}`` for a tree. For logistic
    # regression ``lr`` sets the learning rate of its SGD optimizer. Unknown
    # names are an error when the model is built (see ``model.build_classifier``).
    params: dict[str, Param] = msgspec.field(default_factory=dict)
    # Seeds every random choice (the forest's bagging and feature subsets), so a
    # replay learns exactly the same model every time.
    seed: int = 42
    # Slices of [0, 1] the progressive ROC AUC counts scores in (see ``app.learning.auc``):
    # fine, since probabilities of rare outcomes crowd near 0; the cost per example
    # does not depend on it.
    auc_bins: Annotated[int, msgspec.Meta(ge=2, le=100_000)] = 1000
    # Labelled examples a model learns at once (see ``MomentModel.learn_many``): the
    # regression still steps once per example, in order, but the scaler's statistics
    # move once per batch. Larger batches cost less per example and keep a model
    # that long behind its latest outcomes.
    learn_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 128
    # ADWIN's confidence: smaller means fewer, surer drift alarms.
    drift_delta: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.002

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(
                f"unknown model kind {self.kind!r}; choose one of {', '.join(map(repr, MODEL_KINDS))}"
            )

    @property
    def scaled(self) -> bool:
        """Whether a scaler goes in front of the classifier."""
        return self.kind == "logistic_regression" if self.scale is None else self.scale


class OutcomeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a moment's customers do next that makes acting on the moment worthwhile."""

    # Event types (``Kind.NAMES``); any one of them within ``horizon`` labels the example positive.
    outcome: Annotated[list[str], msgspec.Meta(min_length=1, max_length=len(Kind.NAMES))]
    # How long after the candidate the outcome may happen; past it, the example is negative.
    horizon: Duration

    def __post_init__(self) -> None:
        unknown = [name for name in self.outcome if name not in Kind.NAMES]
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown} in outcome; the event types are {Kind.NAMES}")
        if self.horizon <= 0:
            raise ValueError("an outcome horizon must be positive")

    @property
    def kinds(self) -> frozenset[int]:
        """The outcome event types as :class:`~app.events.Kind` codes."""
        return frozenset(Kind.of(name) for name in self.outcome)


def _outcome(horizon: str, *event_types: str) -> OutcomeConfig:
    return OutcomeConfig(outcome=list(event_types), horizon=Duration.parse(horizon))


def default_outcomes() -> dict[str, OutcomeConfig]:
    """Each moment's outcome when the configuration names none."""
    return {
        "price_comparison": _outcome("30m", "purchase"),
        "review_seeking": _outcome("30m", "purchase"),
        "cart_abandonment": _outcome("30m", "purchase"),
        # The customer still needed help (the contract's help contact is a help view) or gave up.
        "post_purchase_howto": _outcome("7d", "help_view", "refund"),
        "local_intent": _outcome("30m", "purchase"),
        # Recovery: the frustrated customer still completes a purchase. Help views
        # would leak the label (help after an error is itself a frustration signal).
        "frustration": _outcome("30m", "purchase"),
    }


class SegmentsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Online clustering of behaviour vectors into micro-segments (:mod:`app.learning.segments`)."""

    enabled: bool = True
    n_clusters: Annotated[int, msgspec.Meta(ge=2, le=64)] = 6
    # How far a centre moves towards each vector assigned to it: small keeps segments stable.
    halflife: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.1
    # While centres are left, a vector farther than this (Euclidean) from every
    # centre so far becomes a new one. Behaviour vectors live in the unit cube:
    # customers doing mostly different things are about 1 to 1.4 apart.
    radius: Annotated[float, msgspec.Meta(gt=0.0)] = 0.5
    # Places the centres not yet seeded from data (never assigned).
    seed: int = 42


class LearningConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    # Labelled examples (including at least one of each label) a moment's model
    # needs before it decides instead of the rules.
    min_examples: PositiveCount = 200
    # Moment name -> its outcome; a moment left out keeps its default (``default_outcomes``).
    outcomes: dict[str, OutcomeConfig] = msgspec.field(default_factory=default_outcomes)
    # Scored examples awaiting their outcome, per customer; the oldest go first.
    max_pending: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    segments: SegmentsConfig = msgspec.field(default_factory=SegmentsConfig)

    def __post_init__(self) -> None:
        unknown = sorted(self.outcomes.keys() - set(MOMENT_NAMES))
        if unknown:
            raise ValueError(f"outcomes for unknown moment(s) {unknown}; the moments are {MOMENT_NAMES}")
        defaults = default_outcomes()
        # In catalogue order, whatever the order of the configuration file.
        self.outcomes = {name: self.outcomes.get(name) or defaults[name] for name in MOMENT_NAMES}

    def outcome_kinds(self) -> dict[str, frozenset[int]]:
        """Moment -> the Kind codes of its outcome, as :func:`app.learning.labels.resolve` takes them."""
        return {moment: outcome.kinds for moment, outcome in self.outcomes.items()}

    def horizons(self) -> dict[str, int]:
        """Moment -> its outcome horizon in ms."""
        return {moment: int(outcome.horizon) for moment, outcome in self.outcomes.items()}


__all__ = [
    "MODEL_KINDS",
    "MOMENT_NAMES",
    "LearningConfig",
    "ModelConfig",
    "OutcomeConfig",
    "SegmentsConfig",
    "default_outcomes",
]
