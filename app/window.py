"""A customer's sliding window in event time: the state the detection core reads and updates.

Everything here is plain data plus small pure helpers. The state is bounded by
construction: entries are pruned by age and capped in number, orders likewise,
and free text never enters it (search queries are reduced to signal flags).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from operator import attrgetter
from typing import Final

import msgspec

from app.detection import Detection
from app.learning.labels import PendingExample


class Entry(msgspec.Struct, array_like=True, gc=False):
    """One observed event, reduced to what detection needs."""

    ts: int
    kind: int
    event_id: str
    product_id: str | None = None
    category: str | None = None
    price: float | None = None
    flags: int = 0
    # The checkout step for ``checkout_step`` events, the error code for ``error`` events.
    detail: str | None = None


class Order(msgspec.Struct, array_like=True, gc=False):
    ts: int
    event_id: str
    order_id: str
    products: list[str]
    refunded: bool = False


class Cart(msgspec.Struct, array_like=True, gc=False):
    """An open cart and the abandonment deadline it arms."""

    products: list[str]
    event_ids: list[str]
    last_activity: int
    deadline: int | None
    # The event that set the current deadline; the trigger id derives from it.
    anchor: str
    value: float = 0.0
    checkout_started: bool = False


class Consent(msgspec.Struct, array_like=True, gc=False):
    granted: bool
    # Event time of the consent event this comes from: a later one wins.
    ts: int


class Deferred(msgspec.Struct, array_like=True, gc=False):
    """A trigger held back by quiet hours: published, unchanged, at ``release_at``."""

    release_at: int
    detection: Detection


class CustomerState(msgspec.Struct, gc=False):
    customer_id: str
    entries: list[Entry] = msgspec.field(default_factory=list)
    orders: list[Order] = msgspec.field(default_factory=list)
    cart: Cart | None = None
    # moment name -> event time (ms) of the last published trigger
    cooldowns: dict[str, int] = msgspec.field(default_factory=dict)
    # The latest ``occurred_at`` (ms) seen for this customer.
    last_ts: int = 0
    session_id: str | None = None
    session_start: int = 0
    channel: str | None = None
    device: str | None = None
    timezone: str | None = None
    # Facts about the customer rather than behaviour: kept for as long as the policy says.
    consent: dict[str, Consent] = msgspec.field(default_factory=dict)
    # Event times of the latest addition to the do-not-contact list and of the latest
    # removal from it: the later one decides (see suppressed()).
    suppressed_since: int | None = None
    unsuppressed_at: int | None = None
    # Event times of the triggers published (or deferred) within the frequency-cap period.
    sent: list[int] = msgspec.field(default_factory=list)
    deferred: list[Deferred] = msgspec.field(default_factory=list)
    # Scored candidates waiting for their outcome (learning), and the latest micro-segment.
    pending: list[PendingExample] = msgspec.field(default_factory=list)
    segment: int | None = None


# Facts about the customer that outlive their behaviour's usefulness.
DURABLE_FIELDS: Final = ("customer_id", "consent", "suppressed_since", "unsuppressed_at")


def suppressed(state: CustomerState) -> bool:
    """Whether the customer is on the do-not-contact list: added, and not removed since in event time."""
    added, removed = state.suppressed_since, state.unsuppressed_at
    return added is not None and (removed is None or added > removed)


def clear(state: CustomerState) -> None:
    """Forget the customer's behaviour; keep who they are and what they allow."""
    fresh = CustomerState(customer_id=state.customer_id)
    for field in CustomerState.__struct_fields__:
        if field not in DURABLE_FIELDS:
            setattr(state, field, getattr(fresh, field))


def between(entries: Sequence[Entry], start: int, end: int) -> Sequence[Entry]:
    """The entries with ``start <= ts <= end``; ``entries`` is sorted by ``ts``."""
    lo = bisect_left(entries, start, key=_ts)
    if entries and entries[-1].ts <= end:
        return entries[lo:]  # the usual case: evaluated as of the latest event
    return entries[lo : bisect_right(entries, end, lo=lo, key=_ts)]


def insert(entries: list[Entry], entry: Entry) -> None:
    """Insert keeping ``entries`` sorted by time; equal times keep arrival order."""
    if not entries or entries[-1].ts <= entry.ts:
        entries.append(entry)
    else:
        entries.insert(bisect_right(entries, entry.ts, key=_ts), entry)


def contains_event(state: CustomerState, event_id: str) -> bool:
    # A C-level scan (map over attrgetter): several times faster than a generator.
    return event_id in map(_event_id, state.entries)


def prune(
    state: CustomerState, retention: int, max_events: int, order_retention: int, max_orders: int
) -> None:
    """Drop what no detection can use any more, and cap what is left."""
    entries = state.entries
    horizon = state.last_ts - retention
    if entries[0].ts < horizon:
        del entries[: bisect_left(entries, horizon, key=_ts)]
    if len(entries) > max_events:
        del entries[: len(entries) - max_events]
    orders = state.orders
    if orders and (orders[0].ts < state.last_ts - order_retention or len(orders) > max_orders):
        order_horizon = state.last_ts - order_retention
        state.orders = [o for o in orders if o.ts >= order_horizon][-max_orders:]


# C-level key functions: bisect calls them at every step.
_ts = attrgetter("ts")
_event_id = attrgetter("event_id")
