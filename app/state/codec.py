"""The binary form of a :class:`~app.window.CustomerState`: compact MessagePack.

Stores keep bytes, not objects, so the in-memory store behaves exactly like
Redis and holds a customer in a few hundred bytes.
"""

from __future__ import annotations

import msgspec

from app.window import CustomerState

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CustomerState)


def encode_state(state: CustomerState) -> bytes:
    return _encoder.encode(state)


def decode_state(blob: bytes) -> CustomerState:
    return _decoder.decode(blob)
