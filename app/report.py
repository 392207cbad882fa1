"""``micromoments report``: what the engagement policy did, and whether contacting customers helped.

Per moment: the triggers published, the candidates suppressed by reason, the
detections held out (the holdout groups, see :mod:`app.policy`), and the
outcome rate of each arm: the share of its detections that the moment's
outcome (:class:`~app.learning.config.OutcomeConfig`: event types and a
horizon) followed for that customer, strictly after the detection and within
the horizon, in event time. The *treated* arm is the published triggers, the
*held-out* arm the held-out detections. The lift is the difference of the two
rates, with a confidence interval for a difference of two independent
proportions: Newcombe's hybrid score interval (his method 10), built from the
Wilson score interval of each rate. Unlike the textbook Wald interval it stays
inside [-1, 1] and behaves at 0 % and 100 % and with few detections; with no
detection in an arm there is no rate, no lift and no interval.

The unit is the detection: a customer detected twice counts twice, so the
detections of one arm are not quite independent, and the interval is a little
narrower than it should be for customers who come back often. Treated
detections are those published: a detection the frequency cap suppressed, or
whose deferral expired, is in neither arm, whereas held-out customers are split
off before those rules; the arms are comparable as long as those rules drop
few detections (the report shows how many they did). A detection whose
horizon runs past the end of the input, with no outcome seen, counts as
without outcome (``censored`` says how many).

The computation is pure (:func:`wilson`, :func:`newcombe`, :func:`index_outcomes`,
:func:`measure`, :func:`build_report`); :func:`report` runs a replay
(:func:`app.replay.replay`, deterministic) over event files and feeds it.

>>> outcomes = index_outcomes([("c1", 2_000, "purchase"), ("c2", 9_000_000, "purchase")])
>>> treated = [Exposure("cart_abandonment", "c1", 1_000), Exposure("cart_abandonment", "c2", 1_000)]
>>> arm = measure(treated, outcomes, frozenset({"purchase"}), horizon=1_800_000, end=9_000_000)
>>> arm.n, arm.outcomes, arm.rate
(2, 1, 0.5)
>>> [round(x, 4) for x in wilson(0, 10)]
[0.0, 0.2775]
>>> low, high = newcombe(56, 70, 48, 80)  # Newcombe (1998), Table II, example (a)
>>> round(56 / 70 - 48 / 80, 4), round(low, 4), round(high, 4)
(0.2, 0.0524, 0.3339)
>>> newcombe(3, 10, 0, 0) is None
True
"""

from __future__ import annotations

import io
import math
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Final, NamedTuple

import msgspec
import orjson

from app.config import Catalogue
from app.decoding import Rejection, decode_event
from app.durations import format_duration
from app.learning.config import LearningConfig, OutcomeConfig
from app.policy import Policy
from app.replay import Problem, Summary, read_lines, replay

CONFIDENCE: Final = 0.95
METHOD: Final = "newcombe-wilson"

__all__ = [
    "CONFIDENCE",
    "METHOD",
    "Arm",
    "Exposure",
    "Lift",
    "MomentReport",
    "Report",
    "build_report",
    "exposures",
    "index_outcomes",
    "measure",
    "newcombe",
    "outcomes_of",
    "report",
    "wilson",
]


# --- statistics --------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n``; n must be positive.

    >>> [round(x, 4) for x in wilson(10, 10)]
    [0.7225, 1.0]
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes}/{n}")
    z = _z(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # Exact at the ends (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def newcombe(
    x1: int, n1: int, x2: int, n2: int, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval of ``x1/n1 - x2/n2``; None when an arm is empty.

    >>> [round(x, 4) for x in newcombe(0, 10, 0, 20)]  # Newcombe (1998), example (e)
    [-0.1611, 0.2775]
    """
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, confidence)
    l2, u2 = wilson(x2, n2, confidence)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


# --- outcomes ----------------------------------------------------------------------------------


class Exposure(NamedTuple):
    """One detection: of which moment, whom (the trigger's subject), when (event time, ms)."""

    moment: str
    subject: str
    ts: int


# subject -> (event time, event type) of their outcome events, in time order
OutcomeIndex = Mapping[str, Sequence[tuple[int, str]]]


def index_outcomes(events: Iterable[tuple[str, int, str]]) -> dict[str, list[tuple[int, str]]]:
    """(subject, event time, event type) triples by subject, each subject's in time order."""
    by_subject: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for subject, ts, event_type in events:
        by_subject[subject].append((ts, event_type))
    for times in by_subject.values():
        times.sort()
    return dict(by_subject)


def followed(index: OutcomeIndex, exposure: Exposure, event_types: frozenset[str], horizon: int) -> bool:
    """Whether one of ``event_types`` followed the detection: ``ts < outcome <= ts + horizon``."""
    times = index.get(exposure.subject, ())
    # (ts, "\uffff") sorts after every event of the detection's own millisecond.
    start = bisect_right(times, (exposure.ts, "\uffff"))
    until = exposure.ts + horizon
    for ts, event_type in times[start:]:
        if ts > until:
            return False
        if event_type in event_types:
            return True
    return False


class Arm(msgspec.Struct, kw_only=True):
    """One arm of a moment's comparison: its detections, and how many the outcome followed."""

    n: int
    outcomes: int
    # outcomes / n; None without detections.
    rate: float | None
    # Detections without an outcome whose horizon runs past the end of the input.
    censored: int = 0


def measure(
    detections: Iterable[Exposure],
    index: OutcomeIndex,
    event_types: frozenset[str],
    *,
    horizon: int,
    end: int | None = None,
) -> Arm:
    """The arm of ``detections``: how many the outcome followed within ``horizon``.

    ``end`` is the latest event time of the input, to count the censored ones.
    """
    n = hits = censored = 0
    for exposure in detections:
        n += 1
        if followed(index, exposure, event_types, horizon):
            hits += 1
        elif end is not None and exposure.ts + horizon > end:
            censored += 1
    return Arm(n=n, outcomes=hits, rate=hits / n if n else None, censored=censored)


class Lift(msgspec.Struct, kw_only=True):
    """Treated rate minus held-out rate, with its interval; relative = difference / held-out rate."""

    difference: float
    low: float
    high: float
    # None when the held-out rate is 0.
    relative: float | None


class MomentReport(msgspec.Struct, kw_only=True):
    moment: str
    # The outcome: its event types, and how long after the detection it may happen.
    outcome: list[str]
    horizon: str
    triggers: int
    held_out: int
    # reason -> candidates of the moment that did not become triggers
    suppressed: dict[str, int]
    treated: Arm
    holdout: Arm
    # None when an arm has no detection.
    lift: Lift | None


class Report(msgspec.Struct, kw_only=True):
    files: int
    events: int
    rejected: int
    triggers: int
    held_out: int
    # Triggers deferred by quiet hours (released later as triggers, or dropped as expired).
    deferred: int
    forgotten: int
    confidence: float
    interval: str
    moments: list[MomentReport]

    def to_json(self) -> bytes:
        return orjson.dumps(msgspec.to_builtins(self), option=orjson.OPT_INDENT_2) + b"\n"

    def render(self) -> str:
        """A human-readable table."""
        return _render(self)


def build_report(
    summary: Summary,
    treated: Iterable[Exposure],
    held_out: Iterable[Exposure],
    index: OutcomeIndex,
    outcomes: Mapping[str, OutcomeConfig],
    *,
    end: int | None = None,
    confidence: float = CONFIDENCE,
) -> Report:
    """The report of a replay: its ``summary``, what it published and held out, the outcome events.

    Every moment of ``outcomes`` has a row (in that order), plus any other moment the
    replay detected; a moment without outcome configuration gets no rates.
    """
    _z(confidence)
    by_moment: dict[str, tuple[list[Exposure], list[Exposure]]] = defaultdict(lambda: ([], []))
    for exposure in treated:
        by_moment[exposure.moment][0].append(exposure)
    for exposure in held_out:
        by_moment[exposure.moment][1].append(exposure)
    suppressed: dict[str, Counter[str]] = defaultdict(Counter)
    for (moment, reason), count in summary.suppressed.items():
        suppressed[moment][reason] += count
    seen = {*summary.triggers, *summary.held_out, *suppressed, *by_moment}
    moments = [*outcomes, *sorted(seen - outcomes.keys())]
    rows = []
    for moment in moments:
        treated_arm, holdout_arm = by_moment.get(moment, ([], []))
        outcome = outcomes.get(moment)
        types = frozenset(outcome.outcome) if outcome else frozenset()
        horizon = int(outcome.horizon) if outcome else 0
        arms = [measure(arm, index, types, horizon=horizon, end=end) for arm in (treated_arm, holdout_arm)]
        rows.append(
            MomentReport(
                moment=moment,
                outcome=list(outcome.outcome) if outcome else [],
                horizon=format_duration(horizon) if outcome else "",
                triggers=summary.triggers.get(moment, 0),
                held_out=summary.held_out.get(moment, 0),
                suppressed=dict(sorted(suppressed[moment].items())),
                treated=arms[0],
                holdout=arms[1],
                lift=_lift(arms[0], arms[1], confidence) if outcome else None,
            )
        )
    return Report(
        files=summary.files,
        events=summary.read,
        rejected=sum(summary.rejected.values()),
        triggers=sum(summary.triggers.values()),
        held_out=sum(summary.held_out.values()),
        deferred=summary.deferred,
        forgotten=summary.forgotten,
        confidence=confidence,
        interval=METHOD,
        moments=rows,
    )


def _lift(treated: Arm, holdout: Arm, confidence: float) -> Lift | None:
    interval = newcombe(treated.outcomes, treated.n, holdout.outcomes, holdout.n, confidence)
    if interval is None or treated.rate is None or holdout.rate is None:
        return None
    difference = treated.rate - holdout.rate
    relative = difference / holdout.rate if holdout.rate > 0 else None
    return Lift(difference=difference, low=interval[0], high=interval[1], relative=relative)


# --- from event files --------------------------------------------------------------------------


def outcomes_of(catalogue: Catalogue) -> dict[str, OutcomeConfig]:
    """Each moment's outcome: the catalogue's ``[learning.outcomes]``, else the defaults."""
    learning = getattr(catalogue, "learning", None)
    return dict((learning if isinstance(learning, LearningConfig) else LearningConfig()).outcomes)


def exposures(lines: bytes) -> list[Exposure]:
    """The detections in trigger CloudEvents, one per line (replay's output)."""
    found = []
    for line in lines.splitlines():
        if line.strip():
            event = orjson.loads(line)
            detected = datetime.fromisoformat(event["time"])
            found.append(Exposure(event["data"]["moment"], event["subject"], _ms(detected)))
    return found


def _ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


async def report(
    paths: Sequence[Path],
    catalogue: Catalogue,
    *,
    outcomes: Mapping[str, OutcomeConfig] | None = None,
    confidence: float = CONFIDENCE,
) -> Report:
    """Replay ``paths`` (as ``micromoments replay`` does) and report on what it published and held out.

    Bad lines are counted, as replay counts them. Outcome events are read from the
    same files, valid lines only, late or duplicate or not: they happened.
    """
    outcomes = dict(outcomes if outcomes is not None else outcomes_of(catalogue))
    published, held = io.BytesIO(), io.BytesIO()

    def ignore(problem: Problem) -> None:
        return None

    summary = await replay(
        paths, catalogue, out=published, held_out=held, on_problem=ignore, show_progress=False
    )
    # Triggers name the customer by their subject (hashed when so configured): so does the index.
    subject = Policy(catalogue.policy).subject
    wanted = {event_type for outcome in outcomes.values() for event_type in outcome.outcome}
    found: list[tuple[str, int, str]] = []
    end: int | None = None
    for _, _, raw in read_lines(paths):
        event = decode_event(raw)
        if isinstance(event, Rejection):
            continue
        ts = event.ts
        end = ts if end is None else max(end, ts)
        if event.event_type in wanted:
            found.append((subject(event.customer_id), ts, event.event_type))
    return build_report(
        summary,
        exposures(published.getvalue()),
        exposures(held.getvalue()),
        index_outcomes(found),
        outcomes,
        end=end,
        confidence=confidence,
    )


# --- rendering ---------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Columns padded to width: the first ``left`` aligned left, the others right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _arm(arm: Arm) -> str:
    return "-" if arm.rate is None else f"{arm.outcomes}/{arm.n} {arm.rate:6.1%}"


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def _render(report: Report) -> str:
    level = f"{report.confidence:.0%}"
    lines = [
        f"report on {report.files} file(s): {report.events:,} events"
        + (f" ({report.rejected:,} rejected)" if report.rejected else ""),
        f"triggers {report.triggers:,} | held out {report.held_out:,}"
        f" | deferred by quiet hours {report.deferred:,} (released or dropped later)"
        + (f" | customers forgotten {report.forgotten:,}" if report.forgotten else ""),
        "",
    ]
    reasons = sorted({reason for row in report.moments for reason in row.suppressed})
    counts = [
        [
            row.moment,
            f"{row.triggers:,}",
            f"{row.held_out:,}",
            *(f"{row.suppressed.get(r, 0):,}" for r in reasons),
        ]
        for row in report.moments
    ]
    counts.append(
        [
            "all",
            f"{report.triggers:,}",
            f"{report.held_out:,}",
            *(f"{sum(row.suppressed.get(r, 0) for row in report.moments):,}" for r in reasons),
        ]
    )
    header = ["moment", "triggers", "held out", *reasons]
    lines += ["per moment: triggers published, detections held out, candidates not triggered by reason:"]
    lines += [*_table(header, counts), ""]
    rows = []
    censored = 0
    for row in report.moments:
        lift = row.lift
        censored += row.treated.censored + row.holdout.censored
        rows.append(
            [
                row.moment,
                f"{'|'.join(row.outcome)} in {row.horizon}" if row.outcome else "-",
                _arm(row.treated),
                _arm(row.holdout),
                "-" if lift is None else f"{_points(lift.difference)} pp",
                "-" if lift is None else f"[{_points(lift.low)}, {_points(lift.high)}]",
                "-" if lift is None or lift.relative is None else f"{lift.relative:+.0%}",
            ]
        )
    header = ["moment", "outcome", "treated", "held out", "lift", f"{level} CI (pp)", "relative"]
    lines += ["outcome rates, treated (triggers published) vs held out:", *_table(header, rows, left=2)]
    lines += [
        "",
        "lift = treated rate - held-out rate, in percentage points (pp); relative = lift / held-out rate.",
        f"{level} CI: Newcombe's hybrid score interval (from Wilson intervals) for a difference of two"
        " proportions;",
        "an interval that contains 0 is no evidence of an effect either way. Each detection counts once.",
    ]
    if censored:
        lines.append(
            f"{censored:,} detection(s) without outcome had their horizon run past the end of the input:"
            " counted as no outcome."
        )
    return "\n".join(lines)
