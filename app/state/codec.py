"""The binary form of a :class:`~app.window.CustomerState`: compact MessagePack, with a schema version.

Stores keep bytes, not objects, so the in-memory store behaves exactly like
Redis and holds a customer in a few hundred bytes.

A stored state outlives the code that wrote it: a deploy must read what the
previous release stored. So the bytes start with the schema they were written
in (one byte, :data:`SCHEMA`), and :func:`decode_state` reads every schema since
versions were introduced, and the one before (version 1: bare MessagePack, a map,
which never starts with that byte). ``CustomerState`` is a map of named fields, so
a field added with a default reads from older bytes as it is; its parts
(``Entry``, ``Order``...) are arrays, whose fields may only be appended, with
defaults. A change beyond that takes a new schema number and a conversion here
from the previous one. Bytes that are no state this code can read raise
:class:`UnreadableState`: stores then start the customer afresh, and count it.

>>> state = CustomerState(customer_id="c1", last_ts=5)
>>> blob = encode_state(state)
>>> blob[0] == SCHEMA, decode_state(blob) == state
(True, True)
>>> decode_state(encode_state(state)[1:]) == state  # as version 1 stored it
True
"""

from __future__ import annotations

from typing import Final

import msgspec

from app.window import CustomerState

SCHEMA: Final = 2
_PREFIX: Final = bytes([SCHEMA])
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CustomerState)
# MessagePack map headers: how a state of schema 1 begins (fixmap, map 16, map 32).
_MAPS: Final = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])


class UnreadableState(ValueError):
    """Stored bytes that are no customer state of any schema this code reads."""


def encode_state(state: CustomerState) -> bytes:
    return _PREFIX + _encoder.encode(state)


def decode_state(blob: bytes | memoryview) -> CustomerState:
    """The state in ``blob``, of the current schema or an earlier one; else :class:`UnreadableState`."""
    try:
        if blob[:1] == _PREFIX:
            return _decoder.decode(memoryview(blob)[1:])
        if blob and blob[0] in _MAPS:
            return _decoder.decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UnreadableState(
            f"a state of schema {blob[0] if blob else '?'} that does not decode: {exc}"
        ) from exc
    raise UnreadableState(f"no state schema begins with byte {blob[0] if blob else 'nothing'}")
