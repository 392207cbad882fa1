"""Signed model snapshots: pickles that are only ever unpickled once their HMAC verifies.

Unpickling runs arbitrary code, so bytes read back from Redis or disk are
authenticated first: :func:`dumps` signs the pickle with HMAC-SHA256 under a
configured secret key, and :func:`loads` checks the tag (in constant time)
before it touches the payload. Anything that does not verify (altered,
truncated, signed with another key, another format) raises
:class:`UntrustedSnapshot` and is never unpickled.

Layout (big-endian)::

    magic  b"MMSN"  4 bytes
    format 1        1 byte   (this layout; another value is refused)
    version         8 bytes  (the caller's model version, e.g. a counter)
    tag             32 bytes HMAC-SHA256(key, magic | format | version | len(context) | context | payload)
    payload         pickle, protocol 5

``context`` (optional, not stored) binds a snapshot to its use, e.g. the
model's name, so one model's snapshot cannot be passed off as another's.

>>> key = b"k" * 32
>>> blob = dumps({"weights": [0.5, 1.5]}, key, version=7)
>>> loads(blob, key)
({'weights': [0.5, 1.5]}, 7)
>>> loads(blob, b"x" * 32)
Traceback (most recent call last):
...
app.learning.snapshot.UntrustedSnapshot: snapshot signature does not verify: signed with another key, \
or altered since
>>> loads(blob[:-1], key)
Traceback (most recent call last):
...
app.learning.snapshot.UntrustedSnapshot: snapshot signature does not verify: signed with another key, \
or altered since
>>> dumps({}, b"short", version=1)
Traceback (most recent call last):
...
app.learning.snapshot.InvalidSnapshotKey: the snapshot key must be at least 32 bytes, got 5
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
from typing import Any, Final

MAGIC: Final = b"MMSN"
FORMAT: Final = 1
# RFC 2104: a key shorter than the hash output weakens the MAC.
MIN_KEY_BYTES: Final = 32
PICKLE_PROTOCOL: Final = 5
_HEADER: Final = struct.Struct(">4sBQ")
# What :func:`version_of` needs to read.
HEADER_BYTES: Final = _HEADER.size
_TAG_BYTES: Final = hashlib.sha256().digest_size
_PREFIX_BYTES: Final = _HEADER.size + _TAG_BYTES
_MAX_VERSION: Final = 2**64 - 1
_DOES_NOT_VERIFY: Final = "snapshot signature does not verify: signed with another key, or altered since"


class SnapshotError(Exception):
    """A snapshot could not be read back."""


class UntrustedSnapshot(SnapshotError):
    """The bytes are not a snapshot signed with this key, as written: they were not unpickled."""


class UnreadableSnapshot(SnapshotError):
    """The snapshot verified but does not unpickle here (e.g. written by another River version)."""


class InvalidSnapshotKey(ValueError):
    """A configuration error: the signing key is missing or too short."""


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray):
        raise InvalidSnapshotKey(f"the snapshot key must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise InvalidSnapshotKey(f"the snapshot key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")


def _tag(key: bytes, header: bytes, context: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key, header, hashlib.sha256)
    mac.update(struct.pack(">I", len(context)))
    mac.update(context)
    mac.update(payload)
    return mac.digest()


def dumps(obj: Any, key: bytes, *, version: int, context: bytes = b"") -> bytes:
    """``obj`` pickled and signed with ``key``, stamped with ``version`` (0 to 2**64 - 1)."""
    _check_key(key)
    if not 0 <= version <= _MAX_VERSION:
        raise ValueError(f"a snapshot version must be between 0 and 2**64 - 1, got {version}")
    payload = pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    header = _HEADER.pack(MAGIC, FORMAT, version)
    return header + _tag(key, header, context, payload) + payload


def loads(blob: bytes, key: bytes, *, context: bytes = b"") -> tuple[Any, int]:
    """The object in ``blob`` and its version, once its signature under ``key`` verifies.

    Raises :class:`UntrustedSnapshot` (without unpickling anything) unless
    ``blob`` is, byte for byte, what :func:`dumps` produced with this ``key``
    and ``context``.
    """
    _check_key(key)
    blob = bytes(blob)
    if len(blob) < _PREFIX_BYTES:
        raise UntrustedSnapshot(f"not a snapshot: {len(blob)} bytes, shorter than its header")
    magic, layout, version = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise UntrustedSnapshot("not a snapshot: wrong magic bytes")
    if layout != FORMAT:
        raise UntrustedSnapshot(f"unsupported snapshot format {layout}; this version reads format {FORMAT}")
    header, tag, payload = blob[: _HEADER.size], blob[_HEADER.size : _PREFIX_BYTES], blob[_PREFIX_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, header, context, payload)):
        raise UntrustedSnapshot(_DOES_NOT_VERIFY)
    try:
        return pickle.loads(payload), version
    except Exception as exc:  # authentic bytes this process cannot rebuild (another River version?)
        raise UnreadableSnapshot(
            f"snapshot version {version} verified but does not unpickle: {exc!r}"
        ) from exc


def version_of(blob: bytes) -> int | None:
    """The version in ``blob``'s header, unverified: only to skip loading what is not newer.

    >>> blob = dumps([], b"k" * 32, version=3)
    >>> version_of(blob), version_of(blob[:HEADER_BYTES]), version_of(b"junk")
    (3, 3, None)
    """
    if len(blob) < _HEADER.size:  # the header alone will do
        return None
    magic, layout, version = _HEADER.unpack_from(blob)
    return int(version) if magic == MAGIC and layout == FORMAT else None


__all__ = [
    "HEADER_BYTES",
    "InvalidSnapshotKey",
    "SnapshotError",
    "UnreadableSnapshot",
    "UntrustedSnapshot",
    "dumps",
    "loads",
    "version_of",
]
