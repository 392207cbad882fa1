"""Turn raw bytes into a validated :data:`~app.events.Event`, or say exactly why not.

:func:`decode_event` never raises: every input, however malformed, yields either
an event or a :class:`Rejection` with a reason code from a small fixed set (safe
as a metric label) and a human-readable detail.
"""

from __future__ import annotations

import re
from enum import StrEnum
from itertools import accumulate
from typing import Final, Union

import msgspec

from app.events import STRUCTS, Event

MAX_EVENT_BYTES: Final = 64 * 1024
# Arrays and objects nested deeper than this are refused before parsing: no event needs
# more than three levels (a purchase's items), and a parser recursing once per level
# would otherwise hit Python's recursion limit on a record made of brackets.
MAX_NESTING: Final = 32
# Years outside this range are typos or unit mix-ups (seconds read as milliseconds).
MIN_YEAR: Final = 2000
MAX_YEAR: Final = 2100


class Reason(StrEnum):
    """Why an input was rejected; a closed set, so it can label metrics."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_VALUE = "invalid_value"
    FIELD_TOO_LONG = "field_too_long"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    BAD_TIMESTAMP = "bad_timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    NESTED_TOO_DEEP = "nested_too_deep"
    # Decoding raised where it should have said why: a defect, reported rather than crashing.
    INTERNAL_ERROR = "internal_error"


class Rejection(msgspec.Struct, frozen=True):
    reason: Reason
    detail: str


# One decoder for every event type: msgspec picks the struct by the `event_type` tag.
_decoder: Final = msgspec.json.Decoder(Union[tuple(STRUCTS.values())])  # noqa: UP007 (runtime union)


def _classify(error: msgspec.ValidationError) -> Reason:
    message = str(error)
    if message.endswith("at `$.occurred_at`"):
        return Reason.BAD_TIMESTAMP
    if message.endswith("at `$.event_type`"):
        return Reason.UNKNOWN_EVENT_TYPE if message.startswith("Invalid value") else Reason.WRONG_TYPE
    if message.startswith("Expected `object`, got"):
        return Reason.NOT_OBJECT
    if message.startswith("Object missing required field"):
        return Reason.MISSING_FIELD
    if "of length <=" in message:
        return Reason.FIELD_TOO_LONG
    if message.startswith("Expected `") and "`, got `" in message:
        return Reason.WRONG_TYPE
    return Reason.INVALID_VALUE


def decode_event(raw: bytes | bytearray | memoryview | str) -> Event | Rejection:
    """Decode one JSON event.

    >>> decode_event(b'{"event_id": "e1", "customer_id": "c1", "event_type": "search",'
    ...              b' "occurred_at": "2026-11-25T10:00:00Z", "query": "best headphones"}').query
    'best headphones'
    >>> decode_event(b'{"event_id": "e1"}').reason
    <Reason.MISSING_FIELD: 'missing_field'>
    """
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection(Reason.TOO_LARGE, f"event is {len(raw)} bytes, the limit is {MAX_EVENT_BYTES}")
    try:
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        if data.count(b"[") + data.count(b"{") > MAX_NESTING and nesting(data) > MAX_NESTING:
            return Rejection(
                Reason.NESTED_TOO_DEEP, f"arrays and objects are nested deeper than {MAX_NESTING} levels"
            )
        event: Event = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        return Rejection(_classify(exc), str(exc))
    except msgspec.DecodeError as exc:
        return Rejection(Reason.NOT_JSON, str(exc))
    except RecursionError:
        return Rejection(Reason.NESTED_TOO_DEEP, "arrays and objects are nested too deep to parse")
    except Exception as exc:
        return Rejection(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    year = event.occurred_at.year
    if not MIN_YEAR <= year <= MAX_YEAR:
        return Rejection(
            Reason.TIMESTAMP_OUT_OF_RANGE,
            f"occurred_at year {year} is outside {MIN_YEAR}..{MAX_YEAR}",
        )
    return event


# A JSON string (quotes, and any escaped character within), removed before counting brackets.
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"?')
_BRACKETS: Final = bytes(range(256)).translate(None, b"[]{}")
# Per byte: +1 opens a level, -1 closes one.
_STEP: Final = [0] * 256
for _open in b"[{":
    _STEP[_open] = 1
for _close in b"]}":
    _STEP[_close] = -1


def nesting(data: bytes) -> int:
    """How deep arrays and objects nest in the JSON text ``data`` (brackets in strings aside).

    >>> nesting(b'{"a": [1, {"b": "[[["}]}'), nesting(b"[]"), nesting(b'"x"')
    (3, 1, 0)
    """
    brackets = _STRING.sub(b"", data).translate(None, _BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)
