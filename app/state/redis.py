"""The Redis :class:`~app.state.store.StateStore`: one round trip to load a batch, one to save it.

Layout (every key carries a hash tag, so a Redis Cluster keeps each customer's,
and each stream's, keys together):

- ``{prefix}:s:{<pseudonym>}`` — string: an 8-byte big-endian version, then the
  state (``app.state.codec``: a schema byte and MessagePack). Loading a batch is
  one ``MGET``. The key expires (``PX``) when the state is of no further use in
  event time, but never sooner than ``min_ttl_ms`` of wall-clock time (24 hours by
  default): a Redis outage, or a group stopped for hours, must not drop windows,
  carts and deadlines that event time still needs. An erased customer's key keeps
  only its version (a tombstone), for that long too. The key names the customer by
  a keyed hash (:func:`app.privacy.pseudonym`), so a tombstone says nothing of whom
  it was without the deployment's ``MM_PSEUDONYM_KEY``.
- ``{prefix}:clock:{<stream>}`` — the stream's event-time clock (ms), then its
  latest voters as ``tag:time`` (see :mod:`app.clock`), space-separated (``-``
  for no clock yet).
- ``{prefix}:deadlines:{<stream>}`` — sorted set, customer -> absence deadline (ms).
- ``{prefix}:epoch:{<stream>}`` — the stream's epoch, moved on by each claim.
- ``{prefix}:positions:{<stream>}`` — hash, source (topic) -> the position (offset) of its first
  record the stream's states do not reflect yet.
- ``{prefix}:streams`` — the set of stream names, so ``forget`` can reach every deadline set.

Saving a batch is one Lua script call: it checks every state's version and
every stream's epoch first and writes nothing if any differs (a zombie worker
after a rebalance cannot overwrite the new owner's work, states or
checkpoints), then erases (tombstones), writes the states, the clocks and the
deadline changes. The script's keys span many hash slots, so it needs a single
Redis node (standalone, or Sentinel/replicated).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from typing import Any, Final, cast

import redis.asyncio as aioredis

from app.privacy import pseudonym
from app.state.codec import UnreadableState, decode_state, encode_state
from app.state.store import Checkpoint, ConflictError, StreamSave, Versioned
from app.window import CustomerState

_VERSION = struct.Struct(">Q")
# A state is kept at least this long in wall-clock time, whatever event time says.
MIN_TTL_MS: Final = 24 * 3_600_000

_SAVE = """
-- KEYS: n state keys, m state keys to erase, then per stream: clock, deadlines, epoch and
--       positions keys, then the streams set
-- ARGV: n, m, stream count, tombstone ttl ms, then per state: expected version (8 bytes),
--       value, ttl ms; per erasure: expected version, tombstone (the next version);
--       then per stream: name, epoch ('0': unchecked), clock, deadline count, position
--       count, then pairs (customer, deadline or ''), then pairs (source, position)
local n, m, streams, tomb_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local ZERO = '\\0\\0\\0\\0\\0\\0\\0\\0'
local current = {}
local function version(key)
  if current[key] == nil then
    local v = redis.call('GETRANGE', key, 0, 7)
    if v == '' then v = ZERO end
    current[key] = v
  end
  return current[key]
end
local bad_states, bad_streams = {}, {}
local arg = 5 + n * 3
for j = 1, m do
  local key = KEYS[n + j]
  if version(key) ~= ARGV[arg] then bad_states[#bad_states + 1] = n + j
  else current[key] = ARGV[arg + 1] end
  arg = arg + 2
end
for i = 1, n do
  if version(KEYS[i]) ~= ARGV[5 + (i - 1) * 3] then bad_states[#bad_states + 1] = i end
end
local streams_arg = arg
for s = 0, streams - 1 do
  local epoch = ARGV[arg + 1]
  if epoch ~= '0' and (redis.call('GET', KEYS[n + m + s * 4 + 3]) or '0') ~= epoch then
    bad_streams[#bad_streams + 1] = s + 1
  end
  arg = arg + 5 + (tonumber(ARGV[arg + 3]) + tonumber(ARGV[arg + 4])) * 2
end
if #bad_states > 0 or #bad_streams > 0 then return {bad_states, bad_streams} end
arg = 5 + n * 3
for j = 1, m do
  redis.call('SET', KEYS[n + j], ARGV[arg + 1], 'PX', tomb_ttl)
  arg = arg + 2
end
for i = 1, n do
  local base = 5 + (i - 1) * 3
  redis.call('SET', KEYS[i], ARGV[base + 1], 'PX', ARGV[base + 2])
end
arg = streams_arg
local streams_key = KEYS[n + m + streams * 4 + 1]
for s = 0, streams - 1 do
  local clock_key, deadlines_key = KEYS[n + m + s * 4 + 1], KEYS[n + m + s * 4 + 2]
  local positions_key = KEYS[n + m + s * 4 + 4]
  redis.call('SADD', streams_key, ARGV[arg])
  if ARGV[arg + 2] ~= '' then redis.call('SET', clock_key, ARGV[arg + 2]) end
  local count, positions = tonumber(ARGV[arg + 3]), tonumber(ARGV[arg + 4])
  arg = arg + 5
  for d = 1, count do
    local customer, deadline = ARGV[arg], ARGV[arg + 1]
    if deadline == '' then
      redis.call('ZREM', deadlines_key, customer)
    else
      redis.call('ZADD', deadlines_key, deadline, customer)
    end
    arg = arg + 2
  end
  for d = 1, positions do
    redis.call('HSET', positions_key, ARGV[arg], ARGV[arg + 1])
    arg = arg + 2
  end
end
return {}
"""

_FORGET = """
-- KEYS[1]: the state key; KEYS[2]: the streams set.
-- ARGV[1]: tombstone ttl ms, ARGV[2]: key prefix, ARGV[3]: the customer id (deadlines' member)
local held = redis.call('GETRANGE', KEYS[1], 0, -1)
local version = 0
if #held >= 8 then
  for i = 1, 8 do version = version * 256 + string.byte(held, i) end
end
local tombstone = ''
local next = version + 1
for i = 8, 1, -1 do
  tombstone = string.char(next % 256) .. tombstone
  next = math.floor(next / 256)
end
redis.call('SET', KEYS[1], tombstone, 'PX', ARGV[1])
local removed = 0
local customer = ARGV[3]
for _, stream in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  removed = removed + redis.call('ZREM', ARGV[2] .. ':deadlines:{' .. stream .. '}', customer)
end
if #held > 8 or removed > 0 then return 1 end
return 0
"""


class RedisStateStore:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "mm",
        min_ttl_ms: int = MIN_TTL_MS,
        pseudonym_key: bytes = b"",
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.min_ttl_ms = min_ttl_ms
        self._pseudonym_key = pseudonym_key
        self._save = client.register_script(_SAVE)
        self._forget = client.register_script(_FORGET)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "mm",
        min_ttl_ms: int = MIN_TTL_MS,
        pseudonym_key: bytes = b"",
        **options: Any,
    ) -> RedisStateStore:
        """``redis://``, ``rediss://`` (TLS) or ``unix://``; password and TLS settings go in the URL."""
        client = aioredis.Redis.from_url(url, decode_responses=False, **options)
        return cls(client, prefix=prefix, min_ttl_ms=min_ttl_ms, pseudonym_key=pseudonym_key)

    def state_key(self, customer: str) -> str:
        return f"{self.prefix}:s:{{{pseudonym(customer, self._pseudonym_key)}}}"

    def clock_key(self, stream: str) -> str:
        return f"{self.prefix}:clock:{{{stream}}}"

    def deadlines_key(self, stream: str) -> str:
        return f"{self.prefix}:deadlines:{{{stream}}}"

    def epoch_key(self, stream: str) -> str:
        return f"{self.prefix}:epoch:{{{stream}}}"

    def positions_key(self, stream: str) -> str:
        return f"{self.prefix}:positions:{{{stream}}}"

    @property
    def streams_key(self) -> str:
        return f"{self.prefix}:streams"

    async def load(self, customers: Collection[str]) -> dict[str, Versioned]:
        if not customers:
            return {}
        ordered = list(customers)
        # decode_responses=False: Redis answers bytes.
        blobs = cast("list[bytes | None]", await self.client.mget([self.state_key(c) for c in ordered]))
        found = {}
        for customer, blob in zip(ordered, blobs, strict=True):
            if blob is not None:
                found[customer] = _versioned(customer, blob)
        return found

    async def save(self, saves: Sequence[StreamSave]) -> None:
        """Save several streams' batches in one atomic round trip."""
        keys: list[str] = []
        args: list[Any] = [0, 0, len(saves), self.min_ttl_ms]
        customers: list[str] = []
        for save in saves:
            now = save.clock
            for write in save.writes:
                customer = write.state.customer_id
                customers.append(customer)
                keys.append(self.state_key(customer))
                ttl = self.min_ttl_ms if now is None else max(self.min_ttl_ms, write.expires_at - now)
                args += [
                    _VERSION.pack(write.expected_version),
                    _VERSION.pack(write.expected_version + 1) + encode_state(write.state),
                    ttl,
                ]
        args[0] = len(customers)
        for save in saves:
            for erasure in save.erase:
                customers.append(erasure.customer)
                keys.append(self.state_key(erasure.customer))
                args += [_VERSION.pack(erasure.expected_version), _VERSION.pack(erasure.expected_version + 1)]
        args[1] = len(customers) - args[0]
        for save in saves:
            keys += [
                self.clock_key(save.stream),
                self.deadlines_key(save.stream),
                self.epoch_key(save.stream),
                self.positions_key(save.stream),
            ]
            voters = (f"{tag}:{ts}" for tag, ts in save.recent)
            clock = " ".join(["-" if save.clock is None else str(save.clock), *voters])
            args += [save.stream, save.epoch, clock, len(save.deadlines), len(save.positions)]
            for customer, deadline in save.deadlines.items():
                args += [customer, "" if deadline is None else deadline]
            for source, position in save.positions.items():
                args += [source, position]
        keys.append(self.streams_key)
        refused = await self._save(keys=keys, args=args)
        if refused:
            bad_states, bad_streams = refused
            raise ConflictError(
                [customers[int(i) - 1] for i in bad_states], [saves[int(s) - 1].stream for s in bad_streams]
            )

    async def claim(self, stream: str) -> int:
        return int(await self.client.incr(self.epoch_key(stream)))

    async def checkpoint(self, stream: str) -> Checkpoint:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self.clock_key(stream))
            pipe.zrange(self.deadlines_key(stream), 0, -1, withscores=True)
            pipe.hgetall(self.positions_key(stream))
            clock, pending, positions = await pipe.execute()
        time, *recent = (clock or b"-").split()
        return Checkpoint(
            None if time == b"-" else int(time),
            {customer.decode(): int(deadline) for customer, deadline in pending},
            [_voter(i, entry) for i, entry in enumerate(recent)],
            {source.decode(): int(position) for source, position in positions.items()},
        )

    async def clocks(self) -> dict[str, int]:
        streams = sorted(s.decode() for s in cast("set[bytes]", await self.client.smembers(self.streams_key)))
        if not streams:
            return {}
        values = cast("list[bytes | None]", await self.client.mget([self.clock_key(s) for s in streams]))
        found = {}
        for stream, value in zip(streams, values, strict=True):
            time = (value or b"-").split(maxsplit=1)[0]
            if time != b"-":
                found[stream] = int(time)
        return found

    async def forget(self, customer: str) -> bool:
        found = await self._forget(
            keys=[self.state_key(customer), self.streams_key], args=[self.min_ttl_ms, self.prefix, customer]
        )
        return bool(found)

    async def close(self) -> None:
        await self.client.aclose()


def _versioned(customer: str, blob: bytes) -> Versioned:
    """A stored value: a state (of any schema this code reads), or a tombstone, at its version."""
    version = _VERSION.unpack_from(blob)[0]
    stored = blob[8:]
    if not stored:
        blank = CustomerState(customer_id=customer)
        return Versioned(blank, version, encode_state(blank))
    try:
        return Versioned(decode_state(stored), version, stored)
    except UnreadableState:
        blank = CustomerState(customer_id=customer)
        return Versioned(blank, version, encode_state(blank), unreadable=True)


def _voter(position: int, entry: bytes) -> tuple[int, int]:
    """A clock voter stored as ``tag:time``; one written before voters had tags is a voter of its own."""
    tag, _, ts = entry.rpartition(b":")
    return (int(tag) if tag else -1 - position), int(ts)
