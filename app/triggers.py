"""Trigger events: a :class:`~app.detector.Detection` as a CloudEvents 1.0 JSON document.

The contract for consumers is ``schemas/micromoment-trigger.v1.json``. The
``id`` is a deterministic idempotency key: the same moment, for the same
customer, anchored on the same input event, always has the same id — in replay
and in streaming, before and after a crash — so consumers can deduplicate.
Serialisation is deterministic too: same detection, same bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from app.detection import Detection

SPEC_VERSION: Final = "1.0"
DATA_CONTENT_TYPE: Final = "application/json"
CONTENT_TYPE: Final = "application/cloudevents+json"
CONTRACT_VERSION: Final = "v1"
# Fixed forever: changing it would change every trigger id.
_ID_NAMESPACE: Final = uuid.UUID("6f1c3b52-7d0e-5a43-9a3e-4d1f3b1c2e70")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def trigger_id(moment: str, customer_id: str, anchor: str) -> str:
    """The idempotency key of a trigger.

    >>> trigger_id("cart_abandonment", "c1", "e9") == trigger_id("cart_abandonment", "c1", "e9")
    True
    """
    return str(uuid.uuid5(_ID_NAMESPACE, f"{moment}\x1f{customer_id}\x1f{anchor}"))


def trigger_type(moment: str) -> str:
    return f"micromoment.{moment}.{CONTRACT_VERSION}"


def format_time(ms: int) -> str:
    """RFC 3339, UTC, millisecond precision: ``format_time(0) == '1970-01-01T00:00:00.000Z'``."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_cloudevent(detection: Detection, *, source: str, subject: str | None = None) -> dict[str, Any]:
    """The structured-mode CloudEvent; ``subject`` defaults to the customer id."""
    data: dict[str, Any] = {
        "moment": detection.moment,
        "customer_id": subject if subject is not None else detection.customer_id,
        "score": detection.score,
        "threshold": detection.threshold,
        "decided_by": detection.decided_by,
        "reasons": detection.reasons,
        "explanation": detection.explanation,
        "evidence": detection.evidence,
        "journey_stage": detection.journey_stage,
        "window": detection.window,
        "detected_at": format_time(detection.ts),
        "expires_at": format_time(detection.expires_at),
        "session_id": detection.session_id,
        "channel": detection.channel,
    }
    if detection.segment is not None:
        data["segment"] = detection.segment
    data.update(detection.attributes)
    return {
        "specversion": SPEC_VERSION,
        "id": trigger_id(detection.moment, detection.customer_id, detection.anchor),
        "source": source,
        "type": trigger_type(detection.moment),
        "subject": data["customer_id"],
        "time": format_time(detection.ts),
        "datacontenttype": DATA_CONTENT_TYPE,
        "data": data,
    }


def encode(cloudevent: dict[str, Any]) -> bytes:
    return orjson.dumps(cloudevent)


class TriggerWriter:
    """Detections as Kafka records: key and CloudEvent, naming the customer as the policy says."""

    def __init__(self, source: str, subject: Callable[[str], str]) -> None:
        self.source = source
        self.subject = subject

    def record(self, detection: Detection) -> tuple[bytes, bytes]:
        subject = self.subject(detection.customer_id)
        return subject.encode(), encode(to_cloudevent(detection, source=self.source, subject=subject))
