"""Confirmations of erasure: one CloudEvent per ``forget`` request, once the data is gone.

Published to ``privacy.confirmations`` after the state store has deleted
everything held about the customer, so a privacy team can close the request.
Deterministic like triggers: reprocessing a request gives the same event id.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from app.events import ForgetRequest
from app.triggers import SPEC_VERSION, format_time

CONFIRMATION_TYPE: Final = "micromoments.privacy.forgotten.v1"
# What the state store held about a customer, all of which a forget request erases.
ERASED: Final = (
    "window",
    "orders",
    "cart",
    "cooldowns",
    "consent",
    "suppression",
    "triggers_sent",
    "deferred_triggers",
    "deadlines",
)
_NAMESPACE: Final = uuid.UUID("1d8c7b5e-4a8f-5b3a-9d0e-6c2f1e3a5b71")


def confirmation(request: ForgetRequest, *, source: str, subject: str) -> dict[str, Any]:
    return {
        "specversion": SPEC_VERSION,
        "id": str(uuid.uuid5(_NAMESPACE, f"{request.customer_id}\x1f{request.event_id}")),
        "source": source,
        "type": CONFIRMATION_TYPE,
        "subject": subject,
        "time": format_time(request.ts),
        "datacontenttype": "application/json",
        "data": {
            "customer_id": subject,
            "request_event_id": request.event_id,
            "request_id": request.request_id,
            "erased": list(ERASED),
        },
    }
