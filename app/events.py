"""The input event contract, version 1.

Three kinds of events share a common envelope and are told apart by
``event_type``: clickstream, search and purchase. The JSON Schemas in
``schemas/`` describe the same contract for producers; ``tests/test_schemas.py``
keeps the two in agreement.

The structs are frozen and validated on construction by :mod:`app.decoding`;
code downstream can rely on every constraint written here.
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum
from typing import Annotated, Any, Final

import msgspec

# One printable token without white space: ids end up in logs, keys and CloudEvents.
# Patterns end in ``\Z``, not ``$``: Python's ``$`` also matches before a final
# newline, so ``"c1\n"`` would pass. ``\Z`` gives ``$`` its JSON Schema (ECMA-262) meaning.
_ID_PATTERN: Final = r"^[^\s\x00-\x1f\x7f]+\Z"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_ID_PATTERN)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=2048)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}\Z")]
Amount = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Channel = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*\Z")]
TimeZoneName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+\-/]+\Z")]

CLICKSTREAM_TYPES: Final = frozenset(
    {
        "page_view",
        "product_view",
        "add_to_cart",
        "remove_from_cart",
        "wishlist_add",
        "compare_view",
        "review_view",
        "checkout_step",
        "help_view",
        "store_locator_view",
        "error",
    }
)
SEARCH_TYPES: Final = frozenset({"search"})
PURCHASE_TYPES: Final = frozenset({"purchase", "refund"})
EVENT_TYPES: Final = CLICKSTREAM_TYPES | SEARCH_TYPES | PURCHASE_TYPES


class Kind(IntEnum):
    """Compact code of an ``event_type``, stored in window entries instead of the string."""

    PAGE_VIEW = 0
    PRODUCT_VIEW = 1
    ADD_TO_CART = 2
    REMOVE_FROM_CART = 3
    WISHLIST_ADD = 4
    COMPARE_VIEW = 5
    REVIEW_VIEW = 6
    CHECKOUT_STEP = 7
    HELP_VIEW = 8
    STORE_LOCATOR_VIEW = 9
    ERROR = 10
    SEARCH = 11
    PURCHASE = 12
    REFUND = 13

    @classmethod
    def of(cls, event_type: str) -> Kind:
        return cls[event_type.upper()]


class _Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Fields common to every event; unknown extra fields are ignored on decode."""

    event_id: Id
    customer_id: Id
    event_type: str
    occurred_at: Timestamp
    session_id: Id | None = None
    channel: Channel | None = None
    device: Token | None = None
    timezone: TimeZoneName | None = None

    @property
    def ts(self) -> int:
        """``occurred_at`` as integer milliseconds since the Unix epoch."""
        return int(self.occurred_at.timestamp() * 1000)


class ClickstreamEvent(_Event, frozen=True, kw_only=True, gc=False):
    page: Text | None = None
    page_type: Token | None = None
    product_id: Id | None = None
    category: Token | None = None
    price: Amount | None = None
    currency: Currency | None = None
    referrer: Text | None = None
    error_code: Token | None = None
    # The checkout step's name (``shipping``, ``payment``...) for ``checkout_step`` events.
    step: Token | None = None


class SearchEvent(_Event, frozen=True, kw_only=True, gc=False):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    results_count: Annotated[int, msgspec.Meta(ge=0)] | None = None
    filters: Annotated[dict[str, Any], msgspec.Meta(max_length=32)] | None = None
    sort: Token | None = None


class Item(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    product_id: Id
    category: Token | None = None
    price: Amount | None = None
    quantity: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1


class PurchaseEvent(_Event, frozen=True, kw_only=True, gc=False):
    order_id: Id
    items: Annotated[list[Item], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    total: Amount | None = None
    currency: Currency | None = None


Event = ClickstreamEvent | SearchEvent | PurchaseEvent


def struct_for(event_type: str) -> type[Event] | None:
    """The struct that validates ``event_type``, or ``None`` for an unknown type."""
    if event_type in CLICKSTREAM_TYPES:
        return ClickstreamEvent
    if event_type in SEARCH_TYPES:
        return SearchEvent
    if event_type in PURCHASE_TYPES:
        return PurchaseEvent
    return None
