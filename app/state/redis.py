"""The Redis :class:`~app.state.store.StateStore`: one round trip to load a batch, one to save it.

Layout (every key carries a hash tag, so a Redis Cluster keeps each customer's,
and each stream's, keys together):

- ``{prefix}:s:{<pseudonym>}`` (on a Redis Cluster ``{prefix}:{<stream>}:s:<pseudonym>``, in
  its stream's slot) — string: an 8-byte big-endian version, then the
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
deadline changes. On one Redis the call covers every stream of the batch. On a
Redis Cluster a stream's keys share its slot, and the batch is one call per
stream, all sent at once: each stream's save is all or nothing, which is what
recovery needs, since each records the input positions it reflects (see the
README, "What is atomic").
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisError

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
--       positions and undo keys, then the streams set (unless it is kept apart: a cluster)
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
  if streams_key then redis.call('SADD', streams_key, ARGV[arg]) end
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
-- KEYS[1]: the state key; then the deadline sets to take the customer out of.
-- ARGV[1]: tombstone ttl ms, ARGV[2]: the customer id (the deadline sets' member)
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
for i = 2, #KEYS do
  removed = removed + redis.call('ZREM', KEYS[i], ARGV[2])
end
if #held > 8 or removed > 0 then return 1 end
return 0
"""


class ReplicationError(RedisError):
    """A save did not reach its replicas in time: it may be lost in a failover, so it is retried."""


def connect(url: str, **options: Any) -> aioredis.Redis | RedisCluster:
    """A client for ``url``: ``redis://``, ``rediss://`` (TLS) or ``unix://`` for one Redis; for a
    Redis Cluster, ``redis+cluster://`` (``rediss+cluster://``) and any of its nodes, comma-separated
    (``redis+cluster://user:password@host1:port1,host2:port2``); the client finds the rest."""
    scheme, _, rest = url.partition("://")
    if not scheme.endswith("+cluster"):
        return aioredis.Redis.from_url(url, decode_responses=False, **options)
    credentials, _, hosts = rest.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = []
    for host in hosts.split("/", 1)[0].split(","):
        name, _, port = host.strip().rpartition(":")
        nodes.append(ClusterNode(name, int(port or 6379)))
    return RedisCluster(
        startup_nodes=nodes,
        username=username or None,
        password=password or None,
        ssl=scheme == "rediss+cluster",
        decode_responses=False,
        **options,
    )


class RedisStateStore:
    """The state store on Redis: one node (or a primary with replicas), or a Redis Cluster.

    Parameters
    ----------
    client
        A client of one Redis, or of a Redis Cluster (see :func:`connect`).
    prefix
        The start of every key.
    min_ttl_ms
        The least wall-clock time a state (or a tombstone) is kept.
    pseudonym_key
        The secret customers are named with in keys (:func:`app.privacy.pseudonym`).
    min_replicas
        Replicas a save must reach (``WAIT``) before it is done; fewer within
        ``replica_timeout_ms`` raise :class:`ReplicationError`.
    replica_timeout_ms
        How long a save waits for its replicas.
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        prefix: str = "mm",
        min_ttl_ms: int = MIN_TTL_MS,
        pseudonym_key: bytes = b"",
        min_replicas: int = 0,
        replica_timeout_ms: int = 10_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.min_ttl_ms = min_ttl_ms
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        self._pseudonym_key = pseudonym_key
        # On a cluster, everything of a stream shares its hash slot, states included; a save is
        # one script per stream.
        self.cluster = isinstance(client, RedisCluster)
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
        min_replicas: int = 0,
        replica_timeout_ms: int = 10_000,
        **options: Any,
    ) -> RedisStateStore:
        """The store at ``url`` (see :func:`connect`); password and TLS settings go in the URL."""
        return cls(
            connect(url, **options),
            prefix=prefix,
            min_ttl_ms=min_ttl_ms,
            pseudonym_key=pseudonym_key,
            min_replicas=min_replicas,
            replica_timeout_ms=replica_timeout_ms,
        )

    def state_key(self, customer: str, stream: str) -> str:
        name = pseudonym(customer, self._pseudonym_key)
        if self.cluster:
            return f"{self.prefix}:{{{stream}}}:s:{name}"
        return f"{self.prefix}:s:{{{name}}}"

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

    async def load(self, customers: Mapping[str, Collection[str]]) -> dict[str, Versioned]:
        ordered = [(customer, stream) for stream, some in customers.items() for customer in some]
        if not ordered:
            return {}
        blobs = await self._mget([self.state_key(customer, stream) for customer, stream in ordered])
        found = {}
        for (customer, _), blob in zip(ordered, blobs, strict=True):
            if blob is not None:
                found[customer] = _versioned(customer, blob)
        return found

    async def save(self, saves: Sequence[StreamSave]) -> None:
        """Save several streams' batches: on one Redis in one atomic round trip; on a cluster, each
        stream's atomically, all at once (a stream's keys share its hash slot)."""
        if not self.cluster:
            await self._save_streams(saves, with_streams_set=True)
            return
        await self.client.sadd(self.streams_key, *{save.stream for save in saves})
        outcomes = await asyncio.gather(
            *(self._save_streams([save], with_streams_set=False) for save in saves), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, ConflictError)]
        failed = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, ConflictError)]
        if failed:
            raise failed[0]
        if refused:
            raise ConflictError(
                [c for r in refused for c in r.customers], [s for r in refused for s in r.streams]
            )

    async def _save_streams(self, saves: Sequence[StreamSave], *, with_streams_set: bool) -> None:
        keys: list[str] = []
        args: list[Any] = [0, 0, len(saves), self.min_ttl_ms, "1" if any(s.undo for s in saves) else "0"]
        customers: list[str] = []
        for index, save in enumerate(saves):
            now = save.clock
            for write in save.writes:
                customer = write.state.customer_id
                customers.append(customer)
                keys.append(self.state_key(customer, save.stream))
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
                keys.append(self.state_key(erasure.customer, save.stream))
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
        if with_streams_set:
            keys.append(self.streams_key)
        if self.min_replicas:
            refused = await self._saved_and_replicated(keys, args, self.epoch_key(saves[0].stream))
        else:
            refused = await self._save(keys=keys, args=args)
        if refused:
            bad_states, bad_streams = refused
            raise ConflictError(
                [customers[int(i) - 1] for i in bad_states], [saves[int(s) - 1].stream for s in bad_streams]
            )

    async def _saved_and_replicated(self, keys: list[str], args: list[Any], key: str) -> Any:
        """The save script's answer, once ``min_replicas`` replicas have the save."""
        try:
            refused, reached = await self._save_and_wait(keys, args, key)
        except NoScriptError:
            # A node that has not seen the script yet (a replica promoted since): load it there.
            await self.client.script_load(_SAVE)
            refused, reached = await self._save_and_wait(keys, args, key)
        if int(reached) < self.min_replicas:
            raise ReplicationError(
                f"a save reached {reached} of the {self.min_replicas} replicas it needs within"
                f" {self.replica_timeout_ms} ms"
            )
        return refused

    async def _save_and_wait(self, keys: list[str], args: list[Any], key: str) -> list[Any]:
        """``WAIT`` counts the writes of its own connection: the script and it go in one pipeline,
        which sends both on one connection (on a cluster: to the node of ``key``)."""
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
            pipe: Any = self.client.pipeline()
            node = {"target_nodes": self.client.get_node_from_key(key)}
        else:
            pipe, node = self.client.pipeline(transaction=False), {}
        pipe.evalsha(self._save.sha, len(keys), *keys, *args)
        pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms, **node)
        return list(await pipe.execute())

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
            pipe.hgetall(self.positions_key(stream))
            clock, positions = await pipe.execute()
        time, *recent = (clock or b"-").split()
        return Checkpoint(
            None if time == b"-" else int(time),
            [_voter(i, entry) for i, entry in enumerate(recent)],
            {source.decode(): int(position) for source, position in positions.items()},
        )

    async def deadlines(
        self, stream: str, after: int | None = None, until: int | None = None
    ) -> dict[str, int]:
        pending = cast(
            "list[tuple[bytes, float]]",
            await self.client.zrangebyscore(
                self.deadlines_key(stream),
                "-inf" if after is None else f"({after}",
                "+inf" if until is None else until,
                withscores=True,
            ),
        )
        return {customer.decode(): int(deadline) for customer, deadline in pending}

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` (bytes: decode_responses=False); on a cluster, one MGET per slot."""
        if isinstance(self.client, RedisCluster):
            return cast("list[bytes | None]", await self.client.mget_nonatomic(keys))
        return cast("list[bytes | None]", await self.client.mget(keys))

    async def _streams(self) -> list[str]:
        return sorted(s.decode() for s in cast("set[bytes]", await self.client.smembers(self.streams_key)))

    async def clocks(self) -> dict[str, int]:
        streams = await self._streams()
        if not streams:
            return {}
        values = await self._mget([self.clock_key(s) for s in streams])
        found = {}
        for stream, value in zip(streams, values, strict=True):
            time = (value or b"-").split(maxsplit=1)[0]
            if time != b"-":
                found[stream] = int(time)
        return found

    async def forget(self, customer: str) -> bool:
        """Erase ``customer``: a tombstone for the state and out of every stream's deadlines.

        On a cluster the state lives in its stream's slot, and which stream that is the
        store does not know: every stream gets a tombstone (a zombie's write to any of
        them is refused), one script each.
        """
        streams = await self._streams()
        args: list[str | int] = [self.min_ttl_ms, customer]
        if not self.cluster:
            keys = [self.state_key(customer, ""), *(self.deadlines_key(s) for s in streams)]
            return bool(await self._forget(keys=keys, args=args))
        found = await asyncio.gather(
            *(
                self._forget(keys=[self.state_key(customer, s), self.deadlines_key(s)], args=args)
                for s in streams
            )
        )
        return any(found)

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
