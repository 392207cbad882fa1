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
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, cast

import redis.asyncio as aioredis

from app.privacy import pseudonym
from app.state.codec import UnreadableState, decode_state, encode_state
from app.state.store import (
    Checkpoint,
    ConflictError,
    Reconciled,
    StreamSave,
    Versioned,
    compare_positions,
)
from app.window import CustomerState

_VERSION = struct.Struct(">Q")
# A state is kept at least this long in wall-clock time, whatever event time says.
MIN_TTL_MS: Final = 24 * 3_600_000

_SAVE = """
-- KEYS: n state keys, m state keys to erase, then per stream: clock, deadlines, epoch,
--       positions and undo keys, then the streams set
-- ARGV: n, m, stream count, tombstone ttl ms, undo ('1': keep one), then per state: expected
--       version (8 bytes), value, ttl ms, stream index; per erasure: expected version, tombstone
--       (the next version), stream index; then per stream: name, epoch ('0': unchecked), clock,
--       deadline count, position count, then pairs (customer, deadline or ''), then pairs
--       (source, position)
local n, m, streams, tomb_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local undo = ARGV[5] == '1'
local ZERO = '\\0\\0\\0\\0\\0\\0\\0\\0'
local STATE, ERASURE, HEADER = 4, 3, 5
local first_erasure = HEADER + 1 + n * STATE
local function stream_key(s, which) return KEYS[n + m + s * 5 + which] end
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
local arg = first_erasure
for j = 1, m do
  local key = KEYS[n + j]
  if version(key) ~= ARGV[arg] then bad_states[#bad_states + 1] = n + j
  else current[key] = ARGV[arg + 1] end
  arg = arg + ERASURE
end
for i = 1, n do
  if version(KEYS[i]) ~= ARGV[HEADER + 1 + (i - 1) * STATE] then bad_states[#bad_states + 1] = i end
end
local streams_arg = arg
for s = 0, streams - 1 do
  local epoch = ARGV[arg + 1]
  if epoch ~= '0' and (redis.call('GET', stream_key(s, 3)) or '0') ~= epoch then
    bad_streams[#bad_streams + 1] = s + 1
  end
  arg = arg + 5 + (tonumber(ARGV[arg + 3]) + tonumber(ARGV[arg + 4])) * 2
end
if #bad_states > 0 or #bad_streams > 0 then return {bad_states, bad_streams} end
-- The undo of this save, per stream: what each key it changes held before, the first value only
-- (a customer erased then written again keeps what was there before both).
for s = 0, streams - 1 do redis.call('DEL', stream_key(s, 5)) end
local function keep(s, field, value)
  if undo then redis.call('HSETNX', stream_key(s, 5), field, value) end
end
local function keep_state(key, s)
  if undo then
    keep(s, 'k:' .. key, redis.call('GET', key) or '')
    keep(s, 't:' .. key, redis.call('PTTL', key))
  end
end
arg = first_erasure
for j = 1, m do
  keep_state(KEYS[n + j], tonumber(ARGV[arg + 2]))
  redis.call('SET', KEYS[n + j], ARGV[arg + 1], 'PX', tomb_ttl)
  arg = arg + ERASURE
end
for i = 1, n do
  local base = HEADER + 1 + (i - 1) * STATE
  keep_state(KEYS[i], tonumber(ARGV[base + 3]))
  redis.call('SET', KEYS[i], ARGV[base + 1], 'PX', ARGV[base + 2])
end
arg = streams_arg
local streams_key = KEYS[n + m + streams * 5 + 1]
for s = 0, streams - 1 do
  local clock_key, deadlines_key, positions_key = stream_key(s, 1), stream_key(s, 2), stream_key(s, 4)
  redis.call('SADD', streams_key, ARGV[arg])
  keep(s, 'clock', redis.call('GET', clock_key) or '')
  if ARGV[arg + 2] ~= '' then redis.call('SET', clock_key, ARGV[arg + 2]) end
  local count, positions = tonumber(ARGV[arg + 3]), tonumber(ARGV[arg + 4])
  arg = arg + 5
  for d = 1, count do
    local customer, deadline = ARGV[arg], ARGV[arg + 1]
    keep(s, 'd:' .. customer, redis.call('ZSCORE', deadlines_key, customer) or '')
    if deadline == '' then
      redis.call('ZREM', deadlines_key, customer)
    else
      redis.call('ZADD', deadlines_key, deadline, customer)
    end
    arg = arg + 2
  end
  for d = 1, positions do
    keep(s, 'p:' .. ARGV[arg], redis.call('HGET', positions_key, ARGV[arg]) or '')
    redis.call('HSET', positions_key, ARGV[arg], ARGV[arg + 1])
    arg = arg + 2
  end
end
return {}
"""

_RECONCILE = """
-- KEYS: the stream's epoch, positions, undo, clock and deadlines keys
-- ARGV: epoch, then pairs (source, committed position or '' for none)
-- Returns -1: claimed by another since; 0: consistent; 1: the last save undone; 2: neither.
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return -1 end
local consistent = true
for i = 2, #ARGV, 2 do
  if (redis.call('HGET', KEYS[2], ARGV[i]) or '') ~= ARGV[i + 1] then consistent = false end
end
if consistent then
  redis.call('DEL', KEYS[3])
  return 0
end
local undo = redis.call('HGETALL', KEYS[3])
if #undo == 0 then return 2 end
local before = {}
for i = 1, #undo, 2 do
  if string.sub(undo[i], 1, 2) == 'p:' then before[string.sub(undo[i], 3)] = undo[i + 1] end
end
for i = 2, #ARGV, 2 do
  local was = before[ARGV[i]]
  if was == nil then was = redis.call('HGET', KEYS[2], ARGV[i]) or '' end
  if was ~= ARGV[i + 1] then return 2 end
end
local ttls = {}
for i = 1, #undo, 2 do
  if string.sub(undo[i], 1, 2) == 't:' then ttls[string.sub(undo[i], 3)] = tonumber(undo[i + 1]) end
end
for i = 1, #undo, 2 do
  local field, value = undo[i], undo[i + 1]
  local kind, name = string.sub(field, 1, 2), string.sub(field, 3)
  if kind == 'k:' then
    if value == '' then
      redis.call('DEL', name)
    elseif ttls[name] and ttls[name] > 0 then
      redis.call('SET', name, value, 'PX', ttls[name])
    else
      redis.call('SET', name, value)
    end
  elseif kind == 'd:' then
    if value == '' then redis.call('ZREM', KEYS[5], name) else redis.call('ZADD', KEYS[5], value, name) end
  elseif kind == 'p:' then
    if value == '' then redis.call('HDEL', KEYS[2], name) else redis.call('HSET', KEYS[2], name, value) end
  elseif field == 'clock' then
    if value == '' then redis.call('DEL', KEYS[4]) else redis.call('SET', KEYS[4], value) end
  end
end
redis.call('DEL', KEYS[3])
return 1
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
        self._reconcile = client.register_script(_RECONCILE)

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

    def undo_key(self, stream: str) -> str:
        return f"{self.prefix}:undo:{{{stream}}}"

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
        args: list[Any] = [0, 0, len(saves), self.min_ttl_ms, "1" if any(s.undo for s in saves) else "0"]
        customers: list[str] = []
        for index, save in enumerate(saves):
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
                    index,
                ]
        args[0] = len(customers)
        for index, save in enumerate(saves):
            for erasure in save.erase:
                customers.append(erasure.customer)
                keys.append(self.state_key(erasure.customer))
                args += [
                    _VERSION.pack(erasure.expected_version),
                    _VERSION.pack(erasure.expected_version + 1),
                    index,
                ]
        args[1] = len(customers) - args[0]
        for save in saves:
            keys += [
                self.clock_key(save.stream),
                self.deadlines_key(save.stream),
                self.epoch_key(save.stream),
                self.positions_key(save.stream),
                self.undo_key(save.stream),
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

    async def reconcile(self, stream: str, epoch: int, committed: Mapping[str, int | None]) -> Reconciled:
        keys = [
            self.epoch_key(stream),
            self.positions_key(stream),
            self.undo_key(stream),
            self.clock_key(stream),
            self.deadlines_key(stream),
        ]
        args: list[Any] = [epoch]
        for source, position in sorted(committed.items()):
            args += [source, "" if position is None else position]
        found = int(await self._reconcile(keys=keys, args=args))
        if found < 0:
            raise ConflictError([], [stream])
        if found < 2:
            return Reconciled.ROLLED_BACK if found else Reconciled.CONSISTENT
        return compare_positions((await self.checkpoint(stream)).positions, committed)

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
