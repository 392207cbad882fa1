"""Trigger events: a :class:`~app.detector.Detection` as a CloudEvents 1.0 JSON document.

The contract for consumers is ``schemas/micromoment-trigger.v1.json``. The
``id`` is a deterministic idempotency key: the same moment, for the same
customer, anchored on the same input event, always has the same id — in replay
and in streaming, before and after a crash — so consumers can deduplicate.
Serialisation is deterministic too: same detection, same bytes.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import orjson

from app.detection import Detection

SPEC_VERSION: Final = "1.0"
DATA_CONTENT_TYPE: Final = "application/json"
CONTENT_TYPE: Final = "application/cloudevents+json"
CONTRACT_VERSION: Final = "v1"
# Fixed forever: changing it would change every trigger id.
_ID_NAMESPACE: Final = uuid.UUID("6f1c3b52-7d0e-5a43-9a3e-4d1f3b1c2e70")
_NAMESPACE_BYTES: Final = _ID_NAMESPACE.bytes


def trigger_id(moment: str, customer_id: str, anchor: str) -> str:
    """The idempotency key of a trigger: the RFC 4122 name-based (SHA-1, version 5) UUID of
    moment, customer and anchor event.

    Equal to ``str(uuid.uuid5(namespace, name))``, built without the ``UUID`` object,
    which costs more than the hash itself on a path taken for every trigger.

    >>> trigger_id("cart_abandonment", "c1", "e9") == trigger_id("cart_abandonment", "c1", "e9")
    True
    >>> trigger_id("m", "c1", "e9") == str(uuid.uuid5(_ID_NAMESPACE, "m\x1fc1\x1fe9"))
    True
    """
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + f"{moment}\x1f{customer_id}\x1f{anchor}".encode()).digest()
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def trigger_type(moment: str) -> str:
    return f"micromoment.{moment}.{CONTRACT_VERSION}"


def format_time(ms: int) -> str:
    """RFC 3339, UTC, millisecond precision: ``format_time(0) == '1970-01-01T00:00:00.000Z'``."""
    seconds, millis = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def to_cloudevent(detection: Detection, *, source: str, subject: str | None = None) -> dict[str, Any]:
    """The structured-mode CloudEvent; ``subject`` defaults to the customer id."""
    detected_at = format_time(detection.ts)
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
        "detected_at": detected_at,
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
        "time": detected_at,
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
