"""Learnt models in Redis: signed snapshots, versioned, written only by their learner.

Each model (a moment's :class:`~app.learning.model.MomentModel`, or the
``segments`` :class:`~app.learning.segments.Segmenter`) lives at
``{prefix}:model:{<name>}`` as a snapshot signed with HMAC-SHA256
(:mod:`app.learning.snapshot`): scorers verify it before unpickling, and refuse
it otherwise. Its version counts up from 1; :meth:`ModelStore.save` only
writes version N+1 over version N, so two learners can never both extend the
same model (the loser is told, and reloads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from app.learning.snapshot import HEADER_BYTES, SnapshotError, dumps, loads, version_of

log = logging.getLogger(__name__)


_SAVE: Final = """
-- KEYS[1]: the model; ARGV[1]: the version it extends ('0' for none), ARGV[2]: the new snapshot
local current = redis.call('GETRANGE', KEYS[1], 0, 12)
local version = 0
if #current == 13 then
  version = 0
  for i = 6, 13 do version = version * 256 + string.byte(current, i) end
end
if version ~= tonumber(ARGV[1]) then return version end
redis.call('SET', KEYS[1], ARGV[2])
return -1
"""


@dataclass(frozen=True)
class Stored:
    """What the store holds for a model: its version, and the model, or why it was refused.

    A snapshot signed with another key (the key was rotated) or that this process cannot
    unpickle (another River version) is refused, never unpickled as it is: ``learnt`` is
    None and ``refused`` says why. Its version still counts: whoever takes the model over
    stores the next one.
    """

    version: int
    learnt: Learnt | None
    refused: str | None = None


@dataclass(frozen=True)
class Learnt:
    """What a snapshot holds: a model, and the training-topic position it has learnt up to.

    ``offset`` is the next record of ``partition`` to learn from: a learner that
    reads earlier records of that partition again (after a crash that kept them
    uncommitted) skips them. ``recent`` holds the ids of the last examples learnt,
    oldest first: a worker that redid a batch published its examples twice, and
    the second copy is skipped. So each example is learnt once.
    """

    model: Any
    partition: int | None
    offset: int
    recent: tuple[int, ...] = ()


class ModelStore:
    def __init__(self, client: aioredis.Redis | RedisCluster, key: bytes, *, prefix: str = "mm") -> None:
        self.client = client
        self.prefix = prefix
        self._key = key
        self._save = client.register_script(_SAVE)

    def redis_key(self, name: str) -> str:
        return f"{self.prefix}:model:{{{name}}}"

    async def version(self, name: str) -> int:
        """The stored version of ``name`` (0: none), read from the header alone."""
        head = cast(bytes, await self.client.getrange(self.redis_key(name), 0, HEADER_BYTES - 1))
        return (version_of(head) or 0) if len(head) == HEADER_BYTES else 0

    async def load(self, name: str) -> Stored | None:
        """What is stored for model ``name``; None if nothing is. See :class:`Stored` for refusals."""
        blob = cast("bytes | None", await self.client.get(self.redis_key(name)))
        if blob is None:
            return None
        try:
            learnt, version = loads(blob, self._key, context=name.encode())
        except SnapshotError as exc:
            return Stored(version_of(blob[:HEADER_BYTES]) or 0, None, str(exc))
        if not isinstance(learnt, Learnt):
            return Stored(version, None, f"it holds a {type(learnt).__name__}")
        return Stored(version, learnt)

    async def save(self, name: str, learnt: Learnt, version: int) -> int | None:
        """Store ``learnt`` as ``version``; None if done, else the version someone else stored."""
        blob = dumps(learnt, self._key, version=version, context=name.encode())
        found = int(await self._save(keys=[self.redis_key(name)], args=[version - 1, blob]))
        return None if found == -1 else found
