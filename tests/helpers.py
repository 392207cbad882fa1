"""Small shared helpers: build events the way producers send them, run them through the core."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from app.clock import QUORUM
from app.config import Catalogue, load_catalogue
from app.decoding import MAX_EVENT_BYTES, Reason, Rejection, decode_event
from app.detection import Detection
from app.detector import Detector
from app.durations import Duration
from app.events import Event
from app.learning.labels import LabelledExample
from app.pipeline import Pipeline
from app.policy import Policy
from app.processor import Status, StreamProcessor
from app.state.memory import MemoryStateStore
from app.triggers import encode, format_time, to_cloudevent
from app.window import CustomerState

# Every test's stream starts here; offsets are relative to it.
T0 = int(datetime(2026, 11, 25, 10, tzinfo=UTC).timestamp() * 1000)
# The shipped configuration with the engagement policy set aside (consent implied, no caps,
# quiet hours or holdouts): most tests exercise detection; the policy's own tests opt in.
DETECTION_ONLY = Path(__file__).resolve().parent.parent / "fixtures" / "scenarios" / "detection-only.toml"
DEFAULTS = load_catalogue(DETECTION_ONLY)
SOURCE = DEFAULTS.trigger.source

_ids = itertools.count(1)


def ms(offset: str | int) -> int:
    """An offset from T0 in ms: ``"90s"``, ``"1h30m"`` or plain milliseconds."""
    return Duration.parse(offset) if isinstance(offset, str) else offset


def at(offset: str | int) -> int:
    """Absolute event time (ms since the epoch) of an offset from T0."""
    return T0 + ms(offset)


def raw(event_type: str, offset: str | int = 0, *, customer: str = "c1", **fields: Any) -> dict[str, Any]:
    """An input event as the JSON object a producer sends; ``event_id`` is unique unless given."""
    return {
        "event_id": fields.pop("event_id", None) or f"e{next(_ids)}",
        "customer_id": customer,
        "event_type": event_type,
        "occurred_at": format_time(at(offset)),
        **fields,
    }


def decode(obj: dict[str, Any]) -> Event:
    decoded = decode_event(orjson.dumps(obj))
    assert not isinstance(decoded, Rejection), decoded
    return decoded


def ev(event_type: str, offset: str | int = 0, *, customer: str = "c1", **fields: Any) -> Event:
    """A decoded event: ``ev("product_view", "3m", product_id="p1", category="tv")``."""
    return decode(raw(event_type, offset, customer=customer, **fields))


def ticks(offset: str | int, customer: str = "someone-else") -> list[Event]:
    """Enough page views of other customers, all at ``offset``, to move the stream clock there.

    One each of ``QUORUM`` customers: no number of events of one customer moves the clock.
    """
    return [ev("page_view", offset, customer=f"{customer}-{i}") for i in range(QUORUM)]


def views(category: str, *offsets: str | int, customer: str = "c1") -> list[Event]:
    """Product views of distinct products in ``category``, one at each offset."""
    return [
        ev("product_view", offset, customer=customer, product_id=f"{category}-{i}", category=category)
        for i, offset in enumerate(offsets)
    ]


@dataclass
class Run:
    processor: StreamProcessor
    states: dict[str, CustomerState]
    statuses: list[Status] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    suppressed: list[tuple[str, str]] = field(default_factory=list)
    examples: list[LabelledExample] = field(default_factory=list)
    # Parked events decided later: (event_id, status).
    unparked: list[tuple[str, Status]] = field(default_factory=list)

    def moments(self, customer: str | None = None) -> list[str]:
        return [d.moment for d in self.detections if customer is None or d.customer_id == customer]

    def only(self, moment: str) -> Detection:
        """The single detection of ``moment``."""
        found = [d for d in self.detections if d.moment == moment]
        assert len(found) == 1, [(d.moment, d.ts) for d in self.detections]
        return found[0]


def run(
    events: Iterable[Event],
    catalogue: Catalogue = DEFAULTS,
    *,
    flush: bool = False,
    batch_size: int | None = None,
) -> Run:
    """Process ``events`` through one :class:`StreamProcessor` (in batches), optionally flushing."""
    events = list(events)
    result = Run(StreamProcessor(Detector(catalogue), Policy(catalogue.policy)), {})
    size = batch_size or max(len(events), 1)
    outcomes = [
        result.processor.process(events[i : i + size], result.states) for i in range(0, len(events), size)
    ]
    for outcome in outcomes:
        result.statuses.extend(outcome.statuses)
    if flush:
        outcomes.append(result.processor.flush(result.states))
    for outcome in outcomes:
        result.detections.extend(outcome.detections)
        result.suppressed.extend(outcome.suppressed.elements())
        result.examples.extend(outcome.examples)
        result.unparked.extend((event.event_id, status) for event, status, _ in outcome.unparked)
    return result


def state_after(
    events: Iterable[Event], catalogue: Catalogue = DEFAULTS, customer: str = "c1"
) -> CustomerState:
    """The customer's window state once ``events`` were processed."""
    return run(events, catalogue).states[customer]


def trigger_bytes(detections: Iterable[Detection]) -> bytes:
    return b"".join(encode(to_cloudevent(d, source=SOURCE)) + b"\n" for d in detections)


async def pipeline_triggers(
    events: Sequence[Event], batch_size: int, catalogue: Catalogue = DEFAULTS
) -> bytes:
    """Triggers of a replay of ``events`` through :class:`Pipeline` and the in-memory store."""
    pipeline = Pipeline(Detector(catalogue), Policy(catalogue.policy), MemoryStateStore())
    detections: list[Detection] = []
    for i in range(0, len(events), batch_size):
        batch = await pipeline.run({"test": events[i : i + batch_size]})
        detections.extend(batch.detections)
        await pipeline.commit(batch)
    batch = await pipeline.flush("test")
    detections.extend(batch.detections)
    await pipeline.commit(batch)
    return trigger_bytes(detections)


_QUERIES = [
    "cheap headphones",
    "best headphones",
    "headphones near me",
    "how to pair headphones",
    "canvas bag",
    "tv vs monitor",
]


def random_objects(seed: int, count: int, customers: int = 6) -> list[dict[str, Any]]:
    """A reproducible mixed stream of input objects: every event type, out-of-order and late
    events, producer retries (duplicates)."""
    rng = random.Random(seed)
    objects: list[dict[str, Any]] = []
    now = 0
    for n in range(count):
        now += rng.randrange(0, 90_000)
        if objects and rng.random() < 0.05:
            objects.append(rng.choice(objects[-3:]))  # a producer retry
            continue
        offset = now - rng.choice([0, 0, 0, 30_000, 150_000])  # some out of order, some late
        event_type = rng.choice(
            ["product_view"] * 5
            + ["search"] * 3
            + ["add_to_cart", "remove_from_cart", "checkout_step", "purchase", "compare_view"]
            + ["review_view", "help_view", "store_locator_view", "error", "error"]
        )
        product = f"p{rng.randrange(6)}"
        fields: dict[str, Any] = {"customer": f"c{rng.randrange(customers)}", "session_id": "s1"}
        if event_type == "search":
            fields["query"] = rng.choice(_QUERIES)
        elif event_type == "purchase":
            fields.update(order_id=f"o{n}", items=[{"product_id": product}])
        elif event_type == "checkout_step":
            fields["step"] = rng.choice(["shipping", "payment"])
        elif event_type == "error":
            fields["error_code"] = rng.choice(["500", "card_declined"])
        else:
            fields.update(product_id=product, category=rng.choice(["tv", "audio"]), price=10.0)
        objects.append(raw(event_type, offset, **fields))
    return objects


def random_stream(seed: int, count: int, customers: int = 6) -> list[Event]:
    return [decode(obj) for obj in random_objects(seed, count, customers)]


def bad_line(**changes: Any) -> bytes:
    """A valid search event, encoded, with fields changed (``None`` removes one)."""
    obj = raw("search", event_id="e1", query="best tv") | changes
    return orjson.dumps({k: v for k, v in obj.items() if v is not None})


def deeply_nested(depth: int, line: bytes | None = None) -> bytes:
    """``line`` (a valid search event by default) with an unknown field of ``depth`` nested arrays."""
    base = line if line is not None else bad_line()
    return base[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"


# One realistic input line per rejection reason.
BAD_LINES = {
    Reason.TOO_LARGE: bad_line(padding="x" * MAX_EVENT_BYTES),
    Reason.NOT_JSON: b'{"event_id": "e1", "customer_id": ',
    Reason.NOT_OBJECT: b'[{"event_id": "e1"}]',
    Reason.MISSING_FIELD: bad_line(customer_id=None),
    Reason.WRONG_TYPE: bad_line(customer_id=42),
    Reason.INVALID_VALUE: bad_line(results_count=-1),
    Reason.FIELD_TOO_LONG: bad_line(event_id="e" * 129),
    Reason.UNKNOWN_EVENT_TYPE: bad_line(event_type="teleport"),
    Reason.BAD_TIMESTAMP: bad_line(occurred_at="2026-11-25 10:00:00"),  # no time zone
    Reason.TIMESTAMP_OUT_OF_RANGE: bad_line(occurred_at="1970-01-01T00:00:00Z"),
    # An unknown field (ignored, were it not) nested 1,000 arrays deep: a parser recursing per level
    # would hit Python's recursion limit.
    Reason.NESTED_TOO_DEEP: deeply_nested(1000),
}
