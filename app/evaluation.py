"""``micromoments evaluate``: how good the learnt models are, against the rules alone.

The events are replayed twice, in memory and deterministically: once with
learning as configured (each moment's model takes over from the rules after
its warm-up), once with the rules deciding throughout (the models never warm
up). Every scored candidate's outcome is known by the end (replay flushes the
pending ones), so per moment the report gives: triggers published; precision
(the share of triggers followed by the moment's outcome within its horizon);
the base rate (the share of all scored candidates followed by it); and the
ranking quality (ROC AUC) of the scores that decided — the model's
progressive (test-then-train) AUC, and the rule scores' AUC on the same data.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from app.config import Catalogue
from app.learning.labels import LabelledExample
from app.replay import Problem, replay

NEVER: int = 1_000_000


class Side(msgspec.Struct, kw_only=True):
    """One run's view of a moment."""

    triggers: int
    precision: float | None
    auc: float | None


class MomentReport(msgspec.Struct, kw_only=True):
    moment: str
    candidates: int
    base_rate: float | None
    learnt: Side
    rules: Side
    # Of the learnt run's triggers, how many the model decided (the rest: warm-up).
    decided_by_model: int


class Evaluation(msgspec.Struct, kw_only=True):
    moments: list[MomentReport]

    def render(self) -> str:
        head = (
            f"{'moment':<20}{'candidates':>11}{'base rate':>10} | {'triggers':>8}{'precision':>10}"
            f"{'AUC':>7}{'by model':>9} | {'rules: triggers':>15}{'precision':>10}{'AUC':>7}"
        )
        rows = [head, "-" * len(head)]
        for m in self.moments:
            rows.append(
                f"{m.moment:<20}{m.candidates:>11}{_pct(m.base_rate):>10} | {m.learnt.triggers:>8}"
                f"{_pct(m.learnt.precision):>10}{_num(m.learnt.auc):>7}{m.decided_by_model:>9} |"
                f" {m.rules.triggers:>15}{_pct(m.rules.precision):>10}{_num(m.rules.auc):>7}"
            )
        return "\n".join(rows)


def roc_auc(scored: Iterable[tuple[float, bool]]) -> float | None:
    """The exact ROC AUC (the chance a positive outscores a negative; ties count half).

    >>> roc_auc([(0.9, True), (0.8, False), (0.3, True), (0.1, False)])
    0.75
    >>> roc_auc([(0.5, True)]) is None  # one class only: undefined
    True
    """
    pairs = sorted(scored)
    positives = sum(1 for _, label in pairs if label)
    negatives = len(pairs) - positives
    if not positives or not negatives:
        return None
    # Mann-Whitney: sum of the positives' ranks, averaging ranks over ties.
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2
        rank_sum += average_rank * sum(1 for _, label in pairs[i:j] if label)
        i = j
    return round((rank_sum - positives * (positives + 1) / 2) / (positives * negatives), 4)


async def evaluate(paths: Sequence[Path], catalogue: Catalogue) -> Evaluation:
    """Both runs over ``paths``; ``catalogue.learning`` must be enabled."""
    learnt_examples, quality = await _run(paths, catalogue)
    rules_only = msgspec.structs.replace(
        catalogue, learning=msgspec.structs.replace(catalogue.learning, min_examples=NEVER)
    )
    rules_examples, _ = await _run(paths, rules_only)
    moments = []
    for moment in catalogue.learning.outcomes:
        learnt = [e for e in learnt_examples if e.moment == moment]
        rules = [e for e in rules_examples if e.moment == moment]
        learnt_triggers = [e for e in learnt if e.published]
        moments.append(
            MomentReport(
                moment=moment,
                candidates=len(rules),
                base_rate=_rate(rules),
                # The model's own progressive AUC: each example scored before it was learnt.
                learnt=Side(
                    triggers=len(learnt_triggers),
                    precision=_rate(learnt_triggers),
                    auc=_auc(quality.get(moment, {}).get("auc")),
                ),
                rules=_side(rules),
                decided_by_model=sum(1 for e in learnt_triggers if e.decided_by == "model"),
            )
        )
    return Evaluation(moments=moments)


async def _run(
    paths: Sequence[Path], catalogue: Catalogue
) -> tuple[list[LabelledExample], dict[str, dict[str, float | int | None]]]:
    examples: list[LabelledExample] = []
    problems: list[Problem] = []
    summary = await replay(
        paths, catalogue, out=io.BytesIO(), on_problem=problems.append, show_progress=False, examples=examples
    )
    return examples, summary.models


def _side(examples: list[LabelledExample]) -> Side:
    published = [e for e in examples if e.published]
    return Side(
        triggers=len(published), precision=_rate(published), auc=roc_auc((e.score, e.label) for e in examples)
    )


def _auc(value: float | int | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _rate(examples: list[LabelledExample]) -> float | None:
    return round(sum(e.label for e in examples) / len(examples), 4) if examples else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
