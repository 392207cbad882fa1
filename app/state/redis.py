"""The Redis :class:`~app.state.store.StateStore`: one round trip to load a batch, one to save it.

Layout (every key carries a hash tag, so a Redis Cluster keeps each customer's,
and each stream's, keys together):

- ``{prefix}:s:{<customer>}`` — string: an 8-byte big-endian version, then the
  MessagePack state. Loading a batch is one ``MGET``. The key expires (``PX``)
  when the state is of no further use, so idle customers cost nothing.
- ``{prefix}:clock:{<stream>}`` — the stream's event-time clock (ms), then its
  latest voters as ``tag:time`` (see :mod:`app.clock`), space-separated (``-``
  for no clock yet).
- ``{prefix}:deadlines:{<stream>}`` — sorted set, customer -> absence deadline (ms).
- ``{prefix}:streams`` — the set of stream names, so ``forget`` can reach every deadline set.

Saving a batch is one Lua script call: it checks every state's version first
and writes nothing if any differs (a zombie worker after a rebalance cannot
overwrite the new owner's work), then writes the states, the clock and the
deadline changes. The script's keys span many hash slots, so it needs a single
Redis node (standalone, or Sentinel/replicated); on a Redis Cluster the keys
are ready to shard but the batch script would need splitting per slot.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from typing import Any, Final, cast

import redis.asyncio as aioredis

from app.state.codec import decode_state, encode_state
from app.state.store import Checkpoint, ConflictError, StreamSave, Versioned

_VERSION = struct.Struct(">Q")
# A state is kept at least this long in wall-clock time, whatever event time says.
MIN_TTL_MS: Final = 60_000

_SAVE = """
-- KEYS: n state keys, m state keys to erase, then per stream: clock key, deadlines key,
--       then the streams set
-- ARGV: n, stream count, m, then per state: expected version (8 bytes), value, ttl ms;
--       then per stream: name, clock, deadline count, then pairs (customer, deadline or '')
local n, streams, m = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local erasing = {}
for j = 1, m do erasing[KEYS[n + j]] = true end
local conflicts = {}
for i = 1, n do
  local current = false
  if not erasing[KEYS[i]] then current = redis.call('GET', KEYS[i]) end
  local expected = ARGV[3 + (i - 1) * 3 + 1]
  if current then
    if string.sub(current, 1, 8) ~= expected then conflicts[#conflicts + 1] = i end
  elseif expected ~= '\\0\\0\\0\\0\\0\\0\\0\\0' then
    conflicts[#conflicts + 1] = i
  end
end
if #conflicts > 0 then return conflicts end
for j = 1, m do redis.call('DEL', KEYS[n + j]) end
for i = 1, n do
  local base = 3 + (i - 1) * 3
  redis.call('SET', KEYS[i], ARGV[base + 2], 'PX', ARGV[base + 3])
end
local arg = 4 + n * 3
local streams_key = KEYS[n + m + streams * 2 + 1]
for s = 0, streams - 1 do
  local clock_key, deadlines_key = KEYS[n + m + s * 2 + 1], KEYS[n + m + s * 2 + 2]
  redis.call('SADD', streams_key, ARGV[arg])
  if ARGV[arg + 1] ~= '' then redis.call('SET', clock_key, ARGV[arg + 1]) end
  local count = tonumber(ARGV[arg + 2])
  arg = arg + 3
  for d = 1, count do
    local customer, deadline = ARGV[arg], ARGV[arg + 1]
    if deadline == '' then
      redis.call('ZREM', deadlines_key, customer)
    else
      redis.call('ZADD', deadlines_key, deadline, customer)
    end
    arg = arg + 2
  end
end
return {}
"""

_ZERO_VERSION: Final = _VERSION.pack(0)


class RedisStateStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "mm") -> None:
        self.client = client
        self.prefix = prefix
        self._save = client.register_script(_SAVE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "mm", **options: Any) -> RedisStateStore:
        """``redis://``, ``rediss://`` (TLS) or ``unix://``; password and TLS settings go in the URL."""
        return cls(aioredis.Redis.from_url(url, decode_responses=False, **options), prefix=prefix)

    def state_key(self, customer: str) -> str:
        return f"{self.prefix}:s:{{{customer}}}"

    def clock_key(self, stream: str) -> str:
        return f"{self.prefix}:clock:{{{stream}}}"

    def deadlines_key(self, stream: str) -> str:
        return f"{self.prefix}:deadlines:{{{stream}}}"

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
                stored = blob[8:]
                found[customer] = Versioned(decode_state(stored), _VERSION.unpack_from(blob)[0], stored)
        return found

    async def save(self, saves: Sequence[StreamSave]) -> None:
        """Save several streams' batches in one atomic round trip."""
        keys: list[str] = []
        args: list[Any] = [0, len(saves), 0]
        customers: list[str] = []
        for save in saves:
            now = save.clock
            for write in save.writes:
                customer = write.state.customer_id
                customers.append(customer)
                keys.append(self.state_key(customer))
                ttl = MIN_TTL_MS if now is None else max(MIN_TTL_MS, write.expires_at - now)
                args += [
                    _VERSION.pack(write.expected_version),
                    _VERSION.pack(write.expected_version + 1) + encode_state(write.state),
                    ttl,
                ]
        args[0] = len(customers)
        erase = [self.state_key(customer) for save in saves for customer in save.erase]
        args[2] = len(erase)
        keys += erase
        for save in saves:
            keys += [self.clock_key(save.stream), self.deadlines_key(save.stream)]
            voters = (f"{tag}:{ts}" for tag, ts in save.recent)
            clock = " ".join(["-" if save.clock is None else str(save.clock), *voters])
            args += [save.stream, clock, len(save.deadlines)]
            for customer, deadline in save.deadlines.items():
                args += [customer, "" if deadline is None else deadline]
        keys.append(self.streams_key)
        conflicts = await self._save(keys=keys, args=args)
        if conflicts:
            raise ConflictError([customers[int(i) - 1] for i in conflicts])

    async def checkpoint(self, stream: str) -> Checkpoint:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self.clock_key(stream))
            pipe.zrange(self.deadlines_key(stream), 0, -1, withscores=True)
            clock, pending = await pipe.execute()
        time, *recent = (clock or b"-").split()
        return Checkpoint(
            None if time == b"-" else int(time),
            {customer.decode(): int(deadline) for customer, deadline in pending},
            [_voter(i, entry) for i, entry in enumerate(recent)],
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
        streams = cast("set[bytes]", await self.client.smembers(self.streams_key))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.delete(self.state_key(customer))
            for stream in sorted(streams):
                pipe.zrem(self.deadlines_key(stream.decode()), customer)
            removed = await pipe.execute()
        return any(removed)

    async def close(self) -> None:
        await self.client.aclose()


def _voter(position: int, entry: bytes) -> tuple[int, int]:
    """A clock voter stored as ``tag:time``; one written before voters had tags is a voter of its own."""
    tag, _, ts = entry.rpartition(b":")
    return (int(tag) if tag else -1 - position), int(ts)
