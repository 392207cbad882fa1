"""The model store on a real redis-server: signed, versioned, one writer per version."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from app.learning.config import LearningConfig
from app.learning.features import FEATURE_KEYS
from app.learning.model import MomentModel
from app.state.model_store import Learnt, ModelStore

KEY = b"test-signing-key-of-at-least-32-bytes"


def trained(label: bool = True) -> MomentModel:
    model = MomentModel(LearningConfig().model)
    model.learn_one(dict.fromkeys(FEATURE_KEYS, 1.0), label)
    return model


async def test_versions_count_up_and_round_trip(redis_client: aioredis.Redis) -> None:
    store = ModelStore(redis_client, KEY, prefix="t")
    assert await store.version("frustration") == 0
    assert await store.load("frustration") is None
    assert await store.save("frustration", Learnt(trained(), 2, 17), 1) is None
    assert await store.save("frustration", Learnt(trained(), 2, 30), 2) is None
    assert await store.version("frustration") == 2
    loaded = await store.load("frustration")
    assert loaded is not None
    learnt, version = loaded.learnt, loaded.version
    assert learnt is not None
    assert (version, learnt.partition, learnt.offset, learnt.model.examples_seen) == (2, 2, 30, 1)
    # Models are kept apart, in one hash slot each.
    assert await store.version("review_seeking") == 0
    assert store.redis_key("frustration") == "t:model:{frustration}"


async def test_only_one_of_two_learners_extends_a_version(redis_client: aioredis.Redis) -> None:
    first, second = ModelStore(redis_client, KEY), ModelStore(redis_client, KEY)
    assert await first.save("local_intent", Learnt(trained(), 0, 1), 1) is None
    results = await asyncio.gather(
        first.save("local_intent", Learnt(trained(True), 0, 2), 2),
        second.save("local_intent", Learnt(trained(False), 0, 2), 2),
    )
    # One wins; the other is told the version it lost to, and nothing of its model is stored.
    assert sorted(results, key=str) == [2, None]
    # Nor may anyone skip a version, or write one that exists.
    assert await second.save("local_intent", Learnt(trained(), 0, 3), 4) == 2
    assert await second.save("local_intent", Learnt(trained(), 0, 3), 1) == 2
    assert await first.version("local_intent") == 2


async def test_a_tampered_or_foreign_snapshot_is_refused(redis_client: aioredis.Redis) -> None:
    store = ModelStore(redis_client, KEY)
    await store.save("price_comparison", Learnt(trained(), 0, 5), 1)
    key = store.redis_key("price_comparison")
    blob = bytearray(await redis_client.get(key))
    blob[-1] ^= 0x01
    await redis_client.set(key, bytes(blob))
    tampered = await store.load("price_comparison")
    assert tampered is not None
    assert (tampered.version, tampered.learnt) == (1, None)
    assert "does not verify" in str(tampered.refused)

    # Signed with another key: refused too.
    other = ModelStore(redis_client, b"another-key-also-at-least-32-bytes!!")
    await redis_client.delete(key)
    await other.save("price_comparison", Learnt(trained(), 0, 5), 1)
    foreign = await store.load("price_comparison")
    assert foreign is not None
    assert (foreign.version, foreign.learnt) == (1, None)

    # A valid snapshot of one model is no snapshot of another (the name is signed).
    await store.save("review_seeking", Learnt(trained(), 0, 5), 1)
    await redis_client.copy(store.redis_key("review_seeking"), store.redis_key("cart_abandonment"))
    copied = await store.load("cart_abandonment")
    assert copied is not None
    assert copied.learnt is None
