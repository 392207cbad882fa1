"""The input event contract, version 1.

Three kinds of events share a common envelope and are told apart by
``event_type``: clickstream, search and purchase. The JSON Schemas in
``schemas/`` describe the same contract for producers; ``tests/test_schemas.py``
keeps the two in agreement.

The structs are frozen and validated on construction by :mod:`app.decoding`;
code downstream can rely on every constraint written here.

Types and lengths are checked by msgspec as it decodes; the character rules
(the schemas' ``pattern``s) by ``__post_init__``, with plain string methods for
the common ASCII case: msgspec's per-field regular expressions cost more than
the whole rest of decoding.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Final, Literal, cast
from zoneinfo import available_timezones

import msgspec

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=2048)]
Currency = str
Amount = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Channel = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
TimeZoneName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

# The character rules, as in the schemas. ``\Z``, not ``$``: Python's ``$`` also
# matches before a final newline; ``\Z`` gives ``$`` its JSON Schema meaning.
# An id is one printable token without white space: ids end up in keys, logs and CloudEvents.
_NOT_IN_ID: Final = re.compile(r"[\s\x00-\x1f\x7f]")
_CURRENCY: Final = re.compile(r"^[A-Z]{3}\Z")
_CHANNEL: Final = re.compile(r"^[a-z][a-z0-9_]*\Z")
_TIME_ZONE: Final = re.compile(r"^[A-Za-z0-9_+\-/]+\Z")


def _is_id(value: str) -> bool:
    if value.isascii():
        # For ASCII, white space other than the space is made of control characters.
        return value.isprintable() and " " not in value
    return _NOT_IN_ID.search(value) is None


class _Verdicts:
    """Values of one field known to be valid: few distinct ones, seen on most events."""

    def __init__(
        self, field: str, pattern: re.Pattern[str], rule: str, among: frozenset[str] | None = None
    ) -> None:
        self.field, self.pattern, self.rule, self.among = field, pattern, rule, among
        self.valid: set[str] = set()

    def check(self, value: str) -> None:
        if self.pattern.match(value) is None or (self.among is not None and value not in self.among):
            raise ValueError(f"Expected `str` {self.rule} - at `$.{self.field}`")
        if len(self.valid) > 4096:  # bounded, whatever producers send
            self.valid.clear()
        self.valid.add(value)


_CHANNELS: Final = _Verdicts("channel", _CHANNEL, "like `web` or `app`")
# The zones of the IANA database this Python knows (the system's, or the tzdata package):
# a name that matches the pattern but is no zone ("Europe") is refused here, before the
# quiet-hours check of some later batch would fail on it.
_TIME_ZONES: Final = _Verdicts(
    "timezone", _TIME_ZONE, "naming a zone of the IANA time zone database", frozenset(available_timezones())
)
_CURRENCIES: Final = _Verdicts("currency", _CURRENCY, "of 3 capitals")


def _check_each_id(event: msgspec.Struct, fields: tuple[str, ...]) -> None:
    """Every id field is one printable token: the slow path, naming the field that is not."""
    for field in (*_ENVELOPE_IDS, *fields):
        value = getattr(event, field)
        if value is not None and not _is_id(value):
            raise ValueError(f"Expected `str` of printable characters without white space - at `$.{field}`")


def _check_envelope(event: _Event, more_ids: tuple[str, ...] = (), joined: str = "") -> None:
    """The envelope's rules, and those of the ids ``more_ids`` (whose values, joined, are ``joined``)."""
    # All the ids at once first: printable ASCII without a space is the rule's common case.
    ids = f"{event.event_id}{event.customer_id}{event.session_id or ''}{joined}"
    if not (ids.isascii() and ids.isprintable() and " " not in ids):
        _check_each_id(event, more_ids)
    channel, zone = event.channel, event.timezone
    if channel is not None and channel not in _CHANNELS.valid:
        _CHANNELS.check(channel)
    if zone is not None and zone not in _TIME_ZONES.valid:
        _TIME_ZONES.check(zone)


def _check_currency(currency: str | None) -> None:
    if currency is not None and currency not in _CURRENCIES.valid:
        _CURRENCIES.check(currency)


_ENVELOPE_IDS: Final = ("event_id", "customer_id", "session_id")


class Kind:
    """Compact code of an ``event_type``, stored in window entries instead of the string.

    Plain ints, not an IntEnum: entries are compared with these in every window
    scan, and enum members are several times slower to look up and compare.
    """

    PAGE_VIEW: Final = 0
    PRODUCT_VIEW: Final = 1
    ADD_TO_CART: Final = 2
    REMOVE_FROM_CART: Final = 3
    WISHLIST_ADD: Final = 4
    COMPARE_VIEW: Final = 5
    REVIEW_VIEW: Final = 6
    CHECKOUT_STEP: Final = 7
    HELP_VIEW: Final = 8
    STORE_LOCATOR_VIEW: Final = 9
    ERROR: Final = 10
    SEARCH: Final = 11
    PURCHASE: Final = 12
    REFUND: Final = 13
    CONSENT: Final = 14
    SUPPRESSION: Final = 15
    FORGET: Final = 16
    # The event_type of each code, in code order.
    NAMES: Final = (
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
        "search",
        "purchase",
        "refund",
        "consent",
        "suppression",
        "forget",
    )

    @staticmethod
    def of(event_type: str) -> int:
        return _KINDS[event_type]


_KINDS: Final = {name: code for code, name in enumerate(Kind.NAMES)}
# The codes by kind of event. Hot paths test these rather than the struct types:
# ``isinstance`` on a msgspec struct goes through its metaclass's check: about 70 ns
# against one class, 130-180 ns against several, several times an event; an int in a
# frozenset costs 24 ns (timeit, this machine).
CLICKSTREAM_KINDS: Final = frozenset(range(Kind.PAGE_VIEW, Kind.ERROR + 1))
PURCHASE_KINDS: Final = frozenset({Kind.PURCHASE, Kind.REFUND})
FACT_KINDS: Final = frozenset({Kind.CONSENT, Kind.SUPPRESSION})
# The event types by topic; the clickstream's are the codes PAGE_VIEW to ERROR.
CLICKSTREAM_TYPES: Final = frozenset(Kind.NAMES[Kind.PAGE_VIEW : Kind.ERROR + 1])
SEARCH_TYPES: Final = frozenset({"search"})
PURCHASE_TYPES: Final = frozenset({"purchase", "refund"})
# What a customer allows, and requests about their data: facts about the customer,
# not behaviour, on their own topics.
CONSENT_TYPES: Final = frozenset({"consent", "suppression"})
PRIVACY_TYPES: Final = frozenset({"forget"})
BEHAVIOUR_TYPES: Final = CLICKSTREAM_TYPES | SEARCH_TYPES | PURCHASE_TYPES


def _tie_rank(kind: int) -> int:
    if kind in FACT_KINDS:
        return 0
    if kind == Kind.FORGET:
        return 1
    if kind in CLICKSTREAM_KINDS:
        return 2
    return 3 if kind == Kind.SEARCH else 4


# Events of one time, in any order they arrive, are applied in this order of their kinds:
# what a customer allows, then requests about their data, then clickstream, search and
# purchase events (the order of the worker's input topics, ``Settings.input_topics``,
# which it merges in; replay sorts such ties the same way). By Kind code.
TIE_RANK: Final = tuple(_tie_rank(kind) for kind in range(len(Kind.NAMES)))
EVENT_TYPES: Final = BEHAVIOUR_TYPES | CONSENT_TYPES | PRIVACY_TYPES
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


class _Event(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="event_type"):
    """Fields common to every event; unknown extra fields are ignored on decode.

    ``event_type`` is msgspec's tag: each type has its own small subclass (see
    :data:`STRUCTS`), so one decoder pass both validates and picks the kind.
    """

    # The Kind code of the event type, set on each type's subclass.
    kind: ClassVar[int] = -1

    event_id: Id
    customer_id: Id
    occurred_at: Timestamp
    session_id: Id | None = None
    channel: Channel | None = None
    device: Token | None = None
    timezone: TimeZoneName | None = None

    @property
    def event_type(self) -> str:
        return str(self.__struct_config__.tag)

    @property
    def ts(self) -> int:
        """``occurred_at`` as integer milliseconds since the Unix epoch."""
        return (self.occurred_at - _EPOCH) // _MILLISECOND

    def __post_init__(self) -> None:
        _check_envelope(self)


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

    def __post_init__(self) -> None:
        _check_envelope(self, ("product_id",), self.product_id or "")
        _check_currency(self.currency)


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

    def __post_init__(self) -> None:
        _check_envelope(self, ("order_id",), self.order_id)
        _check_currency(self.currency)
        for i, item in enumerate(self.items):
            if not _is_id(item.product_id):
                raise ValueError(
                    f"Expected `str` of printable characters without white space"
                    f" - at `$.items[{i}].product_id`"
                )


class ConsentEvent(_Event, frozen=True, kw_only=True, gc=False):
    """``consent``: the customer granted or revoked consent for a purpose."""

    status: Literal["granted", "revoked"]
    purpose: Token


class SuppressionEvent(_Event, frozen=True, kw_only=True, gc=False):
    """``suppression``: the customer was put on (or taken off) the do-not-contact list."""

    action: Literal["add", "remove"]
    reason: Token | None = None


class ForgetRequest(_Event, frozen=True, kw_only=True, gc=False):
    """``forget``: erase everything held about the customer (the right to be forgotten)."""

    request_id: Id | None = None


Event = ClickstreamEvent | SearchEvent | PurchaseEvent | ConsentEvent | SuppressionEvent | ForgetRequest

_BASES: Final[dict[str, type[Event]]] = {
    **dict.fromkeys(CLICKSTREAM_TYPES, ClickstreamEvent),
    **dict.fromkeys(SEARCH_TYPES, SearchEvent),
    **dict.fromkeys(PURCHASE_TYPES, PurchaseEvent),
    "consent": ConsentEvent,
    "suppression": SuppressionEvent,
    "forget": ForgetRequest,
}


def _struct(event_type: str) -> type[Event]:
    base = _BASES[event_type]
    name = "".join(word.title() for word in event_type.split("_"))
    kind = {"kind": Kind.of(event_type)}
    struct = msgspec.defstruct(name, [], bases=(base,), tag=event_type, namespace=kind)
    return cast("type[Event]", struct)


# One struct per event_type, each a subclass of its kind's.
STRUCTS: Final = {event_type: _struct(event_type) for event_type in Kind.NAMES}


def struct_for(event_type: str) -> type[Event] | None:
    """The struct that validates ``event_type``, or ``None`` for an unknown type."""
    return STRUCTS.get(event_type)
