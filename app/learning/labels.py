"""Delayed outcomes: scored examples wait until what the customer does next labels them.

A candidate is scored now; whether acting on it mattered is known later. Each
scored candidate becomes a :class:`PendingExample` in the customer's state,
with a deadline: its event time plus the moment's outcome horizon. Then, in
event time:

- :func:`resolve`: an event of one of the moment's outcome kinds, after the
  candidate and no later than the deadline, labels the example positive;
- :func:`expire`: once event time has passed the deadline without one, the
  example is labelled negative;
- :func:`add`: at most ``limit`` examples wait per customer; beyond that the
  oldest are dropped (unlabelled, counted: a guess would bias the model).

Pure functions over lists: the inputs are never changed, and a list nothing
happened to is returned as is. Both structs are compact MessagePack
(``array_like``), for the state store and a training topic alike.

>>> from app.events import Kind
>>> purchase, help_view = Kind.PURCHASE, Kind.HELP_VIEW
>>> outcomes = {"price_comparison": frozenset({purchase})}
>>> pending = [
...     PendingExample("price_comparison", 1_000, 1_000 + 1_800_000, {"views": 3.0}, 0.7, "rules"),
...     PendingExample("price_comparison", 5_000, 5_000 + 1_800_000, {"views": 1.0}, 0.2, "model"),
... ]
>>> pending, labelled = resolve(pending, outcomes, help_view, 60_000)  # not an outcome
>>> len(pending), labelled
(2, [])
>>> pending, labelled = resolve(pending, outcomes, purchase, 600_000)  # a purchase 10 minutes on
>>> [(e.ts, e.label) for e in labelled], pending
([(1000, True), (5000, True)], [])
>>> pending = [PendingExample("price_comparison", 1_000, 1_801_000, {}, 0.7, "rules")]
>>> next_deadline(pending)
1801000
>>> expire(pending, 1_801_000)[1], [e.label for e in expire(pending, 1_801_001)[1]]
([], [False])
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Mapping
from operator import attrgetter
from typing import Final

import msgspec

# Scored examples awaiting their outcome per customer, by default (``LearningConfig.max_pending``).
MAX_PENDING: Final = 32

__all__ = [
    "MAX_PENDING",
    "LabelledExample",
    "PendingExample",
    "add",
    "example_id",
    "expire",
    "next_deadline",
    "resolve",
]


class PendingExample(msgspec.Struct, array_like=True, gc=False):
    """A scored candidate awaiting its outcome."""

    moment: str
    # The candidate's event time (ms).
    ts: int
    # The last event time (ms) at which the outcome still counts: ts + the moment's horizon.
    deadline: int
    features: dict[str, float]
    # The score the decision was taken on, and who took it: "rules" or "model".
    score: float
    decided_by: str
    # Whether it became a trigger (it may also have stayed below the threshold).
    published: bool = False
    # See :func:`example_id`; 0 where unknown.
    id: int = 0
    # The customer's keyed pseudonym (app.privacy.pseudonym): what a learner drops their
    # examples by once they are forgotten.
    subject: str = ""

    def labelled(self, label: bool) -> LabelledExample:
        return LabelledExample(
            self.moment,
            self.features,
            label,
            self.score,
            self.decided_by,
            self.ts,
            self.published,
            self.id,
            self.subject,
        )


class LabelledExample(msgspec.Struct, array_like=True, gc=False):
    """A scored candidate with its outcome: what a moment's model learns from."""

    moment: str
    features: dict[str, float]
    # Whether the moment's outcome followed within its horizon.
    label: bool
    score: float
    decided_by: str
    # The candidate's event time (ms).
    ts: int
    published: bool = False
    id: int = 0
    subject: str = ""


def example_id(customer_id: str, moment: str, ts: int, *, salt: bytes = b"") -> int:
    """A candidate's identity: the same however often it is scored, so a learner can drop redeliveries.

    A worker that redoes a batch (after a crash, or a failed save) publishes the batch's
    examples again, with the same ids. A keyed hash (``salt``: the deployment's pseudonym
    key): examples carry no customer id, and nobody without the key can tell whose they are.

    >>> example_id("c-1", "frustration", 5) == example_id("c-1", "frustration", 5)
    True
    >>> example_id("c-1", "frustration", 5) == example_id("c-1", "frustration", 6)
    False
    """
    text = f"{customer_id}\x1f{moment}\x1f{ts}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8, key=salt[:64]).digest(), "big")


def add(
    pending: list[PendingExample], example: PendingExample, *, limit: int = MAX_PENDING
) -> tuple[list[PendingExample], int]:
    """``pending`` with ``example`` (kept in ``ts`` order), and how many of the oldest were dropped to fit.

    >>> old = [PendingExample("frustration", ts, ts + 10, {}, 0.5, "rules") for ts in (1, 2, 3)]
    >>> kept, dropped = add(old, PendingExample("frustration", 4, 14, {}, 0.5, "rules"), limit=3)
    >>> [e.ts for e in kept], dropped
    ([2, 3, 4], 1)
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    at = len(pending)
    if at and pending[-1].ts > example.ts:  # a late candidate: keep the list in time order
        at = bisect_right(pending, example.ts, key=_ts)
    merged = [*pending[:at], example, *pending[at:]]
    dropped = max(len(merged) - limit, 0)
    return (merged[dropped:] if dropped else merged), dropped


def resolve(
    pending: list[PendingExample],
    outcome_kinds_by_moment: Mapping[str, frozenset[int]],
    entry_kind: int,
    entry_ts: int,
) -> tuple[list[PendingExample], list[LabelledExample]]:
    """Label positive, and remove, every example the event (``entry_kind`` at ``entry_ts``) is an outcome of.

    The event is an outcome of an example when its kind is among the example
    moment's outcome kinds and ``ts < entry_ts <= deadline``: strictly after
    the candidate, so neither the candidate's own event nor an earlier event
    arriving late counts. An event after the deadline labels nothing; the
    example stays until :func:`expire` labels it negative. A moment missing
    from ``outcome_kinds_by_moment`` has no outcome: its examples only expire.
    """
    positives: list[LabelledExample] = []
    if not pending:
        return pending, positives
    remaining: list[PendingExample] = []
    for example in pending:
        kinds = outcome_kinds_by_moment.get(example.moment)
        if kinds is not None and entry_kind in kinds and example.ts < entry_ts <= example.deadline:
            positives.append(example.labelled(True))
        else:
            remaining.append(example)
    return (remaining if positives else pending), positives


def expire(pending: list[PendingExample], now: int) -> tuple[list[PendingExample], list[LabelledExample]]:
    """Label negative, and remove, every example whose deadline event time ``now`` has passed.

    ``now`` should be the stream's watermark (its clock minus the allowed
    lateness), not the latest event time: an outcome arriving late but within
    the horizon can then still label its example positive.
    """
    negatives = [example.labelled(False) for example in pending if example.deadline < now]
    if not negatives:
        return pending, negatives
    return [example for example in pending if example.deadline >= now], negatives


def next_deadline(pending: list[PendingExample]) -> int | None:
    """The earliest deadline among ``pending``: when :func:`expire` next has work; ``None`` when empty."""
    return min((example.deadline for example in pending), default=None)


_ts = attrgetter("ts")
