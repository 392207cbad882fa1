"""What every micro-moment detector shares: its configuration, its output, its interface.

A moment is evaluated when an event of one of its ``kinds`` enters the window.
It looks at the window as of that event and, when its signals are present,
returns a :class:`Candidate`: the signals found (``reasons``), a rule score, the
evidence and a sentence a marketer can read. Deciding whether a candidate
becomes a trigger (threshold, cooldown) is the detector's job, not the moment's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

import msgspec

from app.durations import Duration
from app.window import CustomerState, Entry

Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# Above this a rule-based score would claim a certainty rules cannot have.
MAX_RULE_SCORE = 0.95


class MomentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool
    # A candidate becomes a trigger when its score is at least this.
    threshold: Probability
    # No second trigger of this moment for the same customer within this event-time span.
    cooldown: Duration
    # How long after detection acting on the trigger still makes sense (``expires_at``).
    ttl: Duration
    # Signal (reason code) -> its weight; the score combines the weights of the
    # signals present as independent evidence: 1 - prod(1 - w).
    weights: dict[str, Probability]
    # Each occurrence of a counted signal beyond its minimum adds this to its weight.
    count_boost: Probability


class Candidate(msgspec.Struct, kw_only=True, gc=False):
    moment: str
    ts: int
    # The event this candidate hangs on; with moment and customer it makes the trigger id.
    anchor: str
    score: float
    reasons: list[str]
    evidence: list[str]
    explanation: str
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)


def combine(weights: Iterable[float]) -> float:
    """Noisy-OR of independent pieces of evidence, capped below certainty.

    >>> combine([0.5, 0.5])
    0.75
    >>> combine([])
    0.0
    """
    miss = 1.0
    for weight in weights:
        miss *= 1.0 - weight
    return round(min(1.0 - miss, MAX_RULE_SCORE), 4)


class Moment(ABC):
    """A detector for one micro-moment; subclasses are small and stateless."""

    name: ClassVar[str]
    # The event kinds (``app.events.Kind``) on whose arrival the moment is evaluated.
    kinds: ClassVar[frozenset[int]]
    # Every reason code the moment can give, each needing a weight in the configuration.
    signals: ClassVar[tuple[str, ...]]

    def __init__(self, config: MomentConfig) -> None:
        missing = set(self.signals) - config.weights.keys()
        unknown = config.weights.keys() - set(self.signals)
        if missing or unknown:
            raise ValueError(
                f"moments.{self.name}.weights: missing {sorted(missing)}, unknown {sorted(unknown)};"
                f" the signals are {list(self.signals)}"
            )
        self.config = config

    @abstractmethod
    def evaluate(self, state: CustomerState, entry: Entry) -> Candidate | None:
        """The candidate ``entry`` completes, given the window it has just joined."""

    def score(self, counts: Mapping[str, int], minimums: Mapping[str, int] | None = None) -> float:
        """Combine the weights of the signals in ``counts``, boosting counted ones."""
        weights = self.config.weights
        boost = self.config.count_boost
        lowest = minimums or {}
        return combine(
            [
                min(weights[signal] + boost * (count - lowest.get(signal, 1)), MAX_RULE_SCORE)
                for signal, count in counts.items()
            ]
        )

    def candidate(
        self,
        entry: Entry,
        counts: Mapping[str, int],
        evidence: list[str],
        explanation: str,
        *,
        minimums: Mapping[str, int] | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Candidate:
        return Candidate(
            moment=self.name,
            ts=entry.ts,
            anchor=entry.event_id,
            score=self.score(counts, minimums),
            reasons=[s for s in self.signals if s in counts],
            evidence=evidence[-MAX_EVIDENCE:],
            explanation=explanation,
            attributes=attributes or {},
        )


# Enough to audit a trigger without letting one trigger carry a whole session.
MAX_EVIDENCE = 10
