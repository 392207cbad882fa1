"""What the core says when a micro-moment happens: a :class:`Detection`.

Everything a trigger event carries (see :mod:`app.triggers`). Its own module
because customers' states hold detections too, while they wait out quiet hours.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec


class Decider(StrEnum):
    RULES = "rules"
    # The moment's online model, once it has learnt from enough outcomes.
    MODEL = "model"


class Detection(msgspec.Struct, kw_only=True, gc=False):
    """A candidate that cleared its threshold and cooldown: everything a trigger says."""

    moment: str
    customer_id: str
    ts: int
    anchor: str
    score: float
    threshold: float
    decided_by: str
    reasons: list[str]
    evidence: list[str]
    explanation: str
    journey_stage: str
    window: dict[str, int]
    expires_at: int
    attributes: dict[str, Any]
    session_id: str | None
    channel: str | None
    # The customer's micro-segment (online clustering of behaviour), when learning is on.
    segment: int | None = None
