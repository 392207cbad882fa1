"""The state-store contract: the in-memory store and the Redis store must behave alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from app.config import load_catalogue
from app.privacy import pseudonym
from app.replay import replay
from app.state.codec import SCHEMA, encode_state
from app.state.memory import MemoryStateStore
from app.state.redis import MIN_TTL_MS, RedisStateStore, ReplicationError
from app.state.store import (
    Checkpoint,
    ConflictError,
    Erasure,
    Reconciled,
    StateStore,
    StateWrite,
    StreamSave,
)
from app.window import Cart, CustomerState, Entry, Order

DEMO = Path(__file__).parent.parent / "fixtures" / "demo" / "day.jsonl"
DETECTION_ONLY = Path(__file__).parent.parent / "fixtures" / "scenarios" / "detection-only.toml"


@pytest.fixture(params=["memory", "memory-shared", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    async for opened in opened_store(request):
        yield opened


async def opened_store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """The store ``request.param`` names, empty: in memory (``memory-shared``: sharing only one
    object, so both kinds of stored state are exercised), on one Redis, or on the session's
    Redis Cluster (every primary flushed); closed afterwards."""
    if request.param.startswith("memory"):
        yield MemoryStateStore(shared=1 if request.param == "memory-shared" else 0)
        return
    if request.param == "redis":
        client = aioredis.Redis.from_url(request.getfixturevalue("redis_server").url)
        await client.flushdb()
        store = RedisStateStore(client)
    else:
        store = RedisStateStore.from_url(request.getfixturevalue("redis_cluster").url)
        await store.client.flushdb(target_nodes=RedisCluster.PRIMARIES)
    try:
        yield store
    finally:
        await store.close()


def rich_state(customer: str = "c1") -> CustomerState:
    return CustomerState(
        customer_id=customer,
        entries=[Entry(1_000, 1, "e1", "p1", "shoes", 59.5, 0, None), Entry(2_000, 11, "e2", flags=5)],
        orders=[Order(3_000, "e3", "o1", ["p1"], refunded=False)],
        cart=Cart(
            products=["p2"],
            event_ids=["e4"],
            last_activity=4_000,
            deadline=1_804_000,
            anchor="e4",
            value=12.0,
            checkout_started=True,
        ),
        cooldowns={"price_comparison": 2_000},
        last_ts=4_000,
        session_id="s1",
        session_start=1_000,
        channel="web",
        device="ios",
        timezone="Europe/Paris",
    )


def write(state: CustomerState, version: int = 0, expires_at: int = 10_000_000) -> StateWrite:
    return StateWrite(state, version, expires_at)


async def test_unknown_customers_are_absent(store: StateStore) -> None:
    assert await store.load({"p0": ["nobody", "nobody-else"]}) == {}
    assert await store.load({"p0": []}) == {}


async def test_saved_state_round_trips_with_a_new_version(store: StateStore) -> None:
    state = rich_state()
    await store.save([StreamSave("p0", [write(state)], 4_000, {})])
    loaded = await store.load({"p0": ["c1", "c2"]})
    assert list(loaded) == ["c1"]
    assert loaded["c1"].version == 1
    assert encode_state(loaded["c1"].state) == encode_state(state)


async def test_each_save_increments_the_version(store: StateStore) -> None:
    await store.save([StreamSave("p0", [write(rich_state())], 4_000, {})])
    await store.save([StreamSave("p0", [write(rich_state(), version=1)], 4_000, {})])
    assert (await store.load({"p0": ["c1"]}))["c1"].version == 2


async def test_a_stale_version_is_refused_and_nothing_of_the_batch_is_written(store: StateStore) -> None:
    await store.save([StreamSave("p0", [write(rich_state("c1"))], 4_000, {})])
    changed = rich_state("c1")
    changed.last_ts = 9_999
    with pytest.raises(ConflictError) as refused:
        # c2 is fine, c1 was loaded at version 0 but is now at 1: the whole batch is refused.
        await store.save(
            [StreamSave("p0", [write(rich_state("c2")), write(changed, version=0)], 9_999, {"c2": 5_000})]
        )
    assert refused.value.customers == {"c1"}
    loaded = await store.load({"p0": ["c1", "c2"]})
    assert list(loaded) == ["c1"]
    assert loaded["c1"].state.last_ts == 4_000
    checkpoint = await store.checkpoint("p0")
    assert checkpoint.clock == 4_000
    assert await store.deadlines("p0") == {}


async def test_a_write_expecting_a_state_that_is_gone_is_refused(store: StateStore) -> None:
    with pytest.raises(ConflictError):
        await store.save([StreamSave("p0", [write(rich_state(), version=3)], 1, {})])


async def test_two_writers_from_the_same_version_only_the_first_wins(store: StateStore) -> None:
    await store.save([StreamSave("p0", [write(rich_state())], 4_000, {})])
    first = (await store.load({"p0": ["c1"]}))["c1"]
    second = (await store.load({"p0": ["c1"]}))["c1"]
    await store.save([StreamSave("p0", [write(first.state, first.version)], 4_000, {})])
    with pytest.raises(ConflictError):
        await store.save([StreamSave("p1", [write(second.state, second.version)], 4_000, {})])


async def test_a_new_stream_has_no_checkpoint(store: StateStore) -> None:
    checkpoint = await store.checkpoint("never-seen")
    assert checkpoint.clock is None
    assert await store.deadlines("never-seen") == {}


async def test_checkpoints_keep_clock_and_deadlines_per_stream(store: StateStore) -> None:
    await store.save([StreamSave("p0", [], 5_000, {"c1": 7_000, "c2": 8_000})])
    await store.save([StreamSave("p1", [], 6_000, {"c3": 9_000})])
    await store.save([StreamSave("p0", [], 5_500, {"c1": None, "c2": 8_500})])
    p0, p1 = await store.checkpoint("p0"), await store.checkpoint("p1")
    assert (p0.clock, await store.deadlines("p0")) == (5_500, {"c2": 8_500})
    assert (p1.clock, await store.deadlines("p1")) == (6_000, {"c3": 9_000})


async def test_deadlines_are_read_by_range_of_event_time(store: StateStore) -> None:
    await store.save([StreamSave("p0", [], 5_000, {"c1": 7_000, "c2": 8_000, "c3": 9_000, "c4": 10_000})])
    await store.save([StreamSave("p1", [], 5_000, {"c5": 8_000})])
    assert await store.deadlines("p0", until=7_999) == {"c1": 7_000}
    assert await store.deadlines("p0", 7_000, 9_000) == {"c2": 8_000, "c3": 9_000}
    assert await store.deadlines("p0", after=9_000) == {"c4": 10_000}
    assert await store.deadlines("p0", 10_000, 2**62) == {}


async def test_checkpoints_keep_each_sources_position_a_refused_save_moves_none(
    store: StateStore,
) -> None:
    await store.save([StreamSave("p0", [], 5_000, {}, positions={"clicks": 10, "orders": 3})])
    await store.save([StreamSave("p0", [], 5_100, {}, positions={"clicks": 17})])
    assert (await store.checkpoint("p0")).positions == {"clicks": 17, "orders": 3}
    assert (await store.checkpoint("p1")).positions == {}
    with pytest.raises(ConflictError):
        await store.save(
            [StreamSave("p0", [write(rich_state(), version=4)], 5_200, {}, positions={"clicks": 99})]
        )
    assert (await store.checkpoint("p0")).positions == {"clicks": 17, "orders": 3}


async def test_one_save_spans_streams_and_is_all_or_nothing_for_each(store: StateStore) -> None:
    await store.save(
        [
            StreamSave("p0", [write(rich_state("c1"))], 4_000, {"c1": 9_000}),
            StreamSave("p1", [write(rich_state("c2"))], 5_000, {"c2": 9_500}),
        ]
    )
    assert await store.deadlines("p0") == {"c1": 9_000}
    assert (await store.checkpoint("p1")).clock == 5_000
    with pytest.raises(ConflictError):
        await store.save(
            [
                StreamSave("p0", [write(rich_state("c3"))], 6_000, {"c3": 1}),
                StreamSave("p1", [write(rich_state("c2"), version=0)], 6_000, {}),
            ]
        )
    # p1's save was refused, with nothing of it written. On one Redis (and in memory) p0's went
    # with it; on a cluster each stream's save is atomic on its own (its keys share a slot) and
    # p0's went through: its states and checkpoint agree, which is what correctness rests on.
    on_cluster = getattr(store, "cluster", False)
    assert list(await store.load({"p0": ["c1", "c3"], "p1": ["c2"]})) == (
        ["c1", "c3", "c2"] if on_cluster else ["c1", "c2"]
    )
    assert (await store.checkpoint("p0")).clock == (6_000 if on_cluster else 4_000)
    assert (await store.checkpoint("p1")).clock == 5_000


async def test_forget_erases_the_state_and_every_deadline(store: StateStore) -> None:
    await store.save(
        [
            StreamSave(
                "p0",
                [write(rich_state("c1")), write(rich_state("c2"))],
                4_000,
                {"c1": 1_804_000, "c2": 1_804_000},
            )
        ]
    )
    await store.save([StreamSave("p1", [], 4_000, {"c1": 2_000_000})])
    assert await store.forget("c1") is True
    loaded = await store.load({"p0": ["c1", "c2"]})
    # A tombstone: nothing of the customer, at a version a write loaded before cannot pass.
    assert loaded["c1"].state == CustomerState(customer_id="c1")
    assert loaded["c1"].version == 2
    assert await store.deadlines("p0") == {"c2": 1_804_000}
    assert await store.deadlines("p1") == {}
    assert await store.forget("c1") is False
    with pytest.raises(ConflictError):
        await store.save([StreamSave("p0", [write(rich_state("c1"), version=1)], 5_000, {})])


async def test_replay_gives_the_same_triggers_on_either_store(redis_client: aioredis.Redis) -> None:
    outputs = []
    for store in (MemoryStateStore(), MemoryStateStore(shared=50), RedisStateStore(redis_client)):
        out = _Sink()
        await replay(
            [DEMO], load_catalogue(), out=out, on_problem=pytest.fail, store=store, show_progress=False
        )
        outputs.append(out.data)
    assert outputs[0].count(b"\n") > 100
    assert outputs[0] == outputs[1] == outputs[2]


async def test_triggers_do_not_depend_on_when_a_store_drops_idle_customers(tmp_path: Path) -> None:
    class KeepsEverything(MemoryStateStore):
        def _expire(self, now: int) -> None:
            pass  # like Redis while event time runs faster than its wall-clock TTLs

    def event(n: int, customer: str, event_type: str, at: str, **fields: object) -> bytes:
        return (
            orjson.dumps(
                {
                    "event_id": f"e{n}",
                    "customer_id": customer,
                    "event_type": event_type,
                    "occurred_at": f"2026-11-{at}Z",
                    **fields,
                }
            )
            + b"\n"
        )

    events = tmp_path / "stale-cart.jsonl"
    events.write_bytes(
        b"".join(
            [
                event(1, "c1", "add_to_cart", "25T10:00:00", product_id="old"),
                event(2, "c2", "page_view", "25T11:00:00"),  # the cart is abandoned; it stays open
                event(3, "c2", "page_view", "26T11:00:00"),
                event(6, "c2", "page_view", "27T11:00:00"),  # two days later: c1's state is of no use
                event(4, "c1", "add_to_cart", "27T12:00:00", product_id="new"),
                event(5, "c2", "page_view", "27T13:00:00"),
            ]
        )
    )
    outputs = []
    for store in (MemoryStateStore(), KeepsEverything()):
        out = _Sink()
        await replay(
            [events],
            load_catalogue(DETECTION_ONLY),
            out=out,
            on_problem=pytest.fail,
            store=store,
            show_progress=False,
        )
        outputs.append(out.data)
    second = orjson.loads(outputs[0].splitlines()[1])
    assert second["data"]["products"] == ["new"]
    assert outputs[0] == outputs[1]


async def test_memory_store_drops_idle_customers_once_event_time_passes_their_expiry() -> None:
    store = MemoryStateStore()
    await store.save(
        [
            StreamSave(
                "p0",
                [write(rich_state("c1"), expires_at=10_000), write(rich_state("c2"), expires_at=50_000)],
                4_000,
                {},
            )
        ]
    )
    await store.save([StreamSave("p0", [], 10_000, {})])
    assert list(await store.load({"p0": ["c1", "c2"]})) == ["c1", "c2"]  # its last useful instant
    await store.save([StreamSave("p0", [], 10_001, {})])
    assert list(await store.load({"p0": ["c1", "c2"]})) == ["c2"]
    assert len(store) == 1


async def test_redis_keys_expire_when_the_state_is_of_no_further_use(redis_client: aioredis.Redis) -> None:
    store = RedisStateStore(redis_client)
    await store.save(
        [
            StreamSave(
                "p0",
                [
                    write(rich_state("c1"), expires_at=4_000 + 48 * 3_600_000),
                    write(rich_state("c2"), expires_at=4_001),
                ],
                4_000,
                {},
            )
        ]
    )
    assert 47.9 * 3_600_000 < await redis_client.pttl(store.state_key("c1", "p0")) <= 48 * 3_600_000
    # Of no use in event time, but kept a day of wall-clock time: an outage, or a group stopped
    # for hours, must not drop what event time will still need when it resumes.
    assert MIN_TTL_MS == 24 * 3_600_000
    assert MIN_TTL_MS - 10_000 < await redis_client.pttl(store.state_key("c2", "p0")) <= MIN_TTL_MS


async def test_redis_keys_carry_the_customers_pseudonym_as_hash_tag(redis_client: aioredis.Redis) -> None:
    key = b"a-deployment-pseudonym-key-of-32-bytes!"
    store = RedisStateStore(redis_client, pseudonym_key=key)
    await store.save([StreamSave("p7", [write(rich_state("cust-42"))], 4_000, {"cust-42": 9})])
    keys = sorted(k.decode() for k in await redis_client.keys("*"))
    named = f"mm:s:{{{pseudonym('cust-42', key)}}}"
    assert keys == ["mm:clock:{p7}", "mm:deadlines:{p7}", named, "mm:streams"]
    assert "cust-42" not in named  # a tombstone left there after an erasure names nobody


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)


async def test_a_state_changed_but_not_saved_leaves_the_store_as_it_was(store: StateStore) -> None:
    # What lets the worker redo a batch that failed after changing its states. The shared
    # memory store is for replay, which never does: its loads are the stored objects.
    await store.save([StreamSave("p0", [write(rich_state())], None, {})])
    loaded = (await store.load({"p0": ["c1"]}))["c1"].state
    loaded.entries.clear()
    loaded.cooldowns["review_seeking"] = 5_000
    again = (await store.load({"p0": ["c1"]}))["c1"].state
    shared = isinstance(store, MemoryStateStore) and store.shared > 0
    assert (again == loaded) is shared
    assert (again == rich_state()) is not shared


async def test_a_shared_memory_store_serialises_all_but_the_latest_saved_states() -> None:
    store = MemoryStateStore(shared=2)
    for n, customer in enumerate(["c1", "c2", "c3", "c1"]):
        await store.save([StreamSave("p0", [write(rich_state(customer), version=n // 3)], None, {})])
    kept = {customer: isinstance(stored[0], CustomerState) for customer, stored in store._blobs.items()}
    assert kept == {"c1": True, "c2": False, "c3": True}
    loaded = await store.load({"p0": ["c1", "c2", "c3"]})
    assert {customer: v.state for customer, v in loaded.items()} == {c: rich_state(c) for c in kept}
    assert {customer: v.version for customer, v in loaded.items()} == {"c1": 2, "c2": 1, "c3": 1}


# --- exactly once: undoing a save whose transaction did not commit -------------------------------


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def undoing_store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """The stores a worker saves with an undo in: Redis, or serialised memory (never replay's)."""
    async for opened in opened_store(request):
        yield opened


async def committed_batch(store: StateStore, epoch: int) -> None:
    """c1 and c2 saved, c3 forgotten, at clicks 10: what a committed transaction left."""
    await store.save(
        [
            StreamSave(
                "p0",
                [write(rich_state("c1")), write(rich_state("c2")), write(rich_state("c3"))],
                4_000,
                {"c1": 9_000, "c2": 9_500},
                recent=[(1, 4_000)],
                epoch=epoch,
                positions={"clicks": 10},
            )
        ]
    )
    await store.save([StreamSave("p0", [], 4_000, {}, erase=[Erasure("c3", 1)], epoch=epoch)])


async def test_a_save_whose_input_was_not_committed_is_undone(undoing_store: StateStore) -> None:
    store = undoing_store
    epoch = await store.claim("p0")
    await committed_batch(store, epoch)
    before = (await store.load({"p0": ["c1", "c2", "c3"]}), await store.checkpoint("p0"))
    changed = rich_state("c1")
    changed.cooldowns["frustration"] = 3_000
    # The next batch: c1 changed, c2 forgotten, c3 back, c4 new; the clock, deadlines and
    # positions moved on. Its transaction never commits.
    await store.save(
        [
            StreamSave(
                "p0",
                [write(changed, 1), write(rich_state("c3"), 2), write(rich_state("c4"))],
                6_000,
                {"c1": None, "c2": None, "c4": 12_000},
                recent=[(1, 6_000)],
                erase=[Erasure("c2", 1)],
                epoch=epoch,
                positions={"clicks": 25, "search": 4},
                undo=True,
            )
        ]
    )
    # Whoever claims the stream next learns from Kafka that clicks stand at 10, search at none.
    epoch = await store.claim("p0")
    assert await store.reconcile("p0", epoch, {"clicks": 10, "search": None}) is Reconciled.ROLLED_BACK
    after = (await store.load({"p0": ["c1", "c2", "c3", "c4"]}), await store.checkpoint("p0"))
    assert after == before
    # Done once: the undo is gone with it.
    assert await store.reconcile("p0", epoch, {"clicks": 10, "search": None}) is Reconciled.CONSISTENT


async def test_a_save_whose_input_was_committed_stays(undoing_store: StateStore) -> None:
    store = undoing_store
    epoch = await store.claim("p0")
    await committed_batch(store, epoch)
    await store.save(
        [
            StreamSave(
                "p0", [write(rich_state("c5"))], 6_000, {}, epoch=epoch, positions={"clicks": 12}, undo=True
            )
        ]
    )
    epoch = await store.claim("p0")
    assert await store.reconcile("p0", epoch, {"clicks": 12, "search": None}) is Reconciled.CONSISTENT
    assert "c5" in await store.load({"p0": ["c5"]})
    # The undo went with the consistent reconcile: Kafka at 10 now means the store is ahead.
    assert await store.reconcile("p0", epoch, {"clicks": 10, "search": None}) is Reconciled.AHEAD
    assert "c5" in await store.load({"p0": ["c5"]})


async def test_without_an_undo_a_store_ahead_or_behind_is_said_so_and_left_alone(
    undoing_store: StateStore,
) -> None:
    store = undoing_store
    epoch = await store.claim("p0")
    await committed_batch(store, epoch)
    await store.save([StreamSave("p0", [], 6_000, {}, epoch=epoch, positions={"clicks": 12}, undo=True)])
    # A save without an undo (at least once) drops the one before it.
    await store.save([StreamSave("p0", [], 6_500, {}, epoch=epoch, positions={"clicks": 14})])
    assert await store.reconcile("p0", epoch, {"clicks": 12}) is Reconciled.AHEAD
    assert await store.reconcile("p0", epoch, {"clicks": 30}) is Reconciled.BEHIND
    assert (await store.checkpoint("p0")).positions == {"clicks": 14}


async def test_an_undo_that_does_not_match_the_committed_input_is_not_applied(
    undoing_store: StateStore,
) -> None:
    store = undoing_store
    epoch = await store.claim("p0")
    await committed_batch(store, epoch)
    await store.save(
        [
            StreamSave(
                "p0", [write(rich_state("c5"))], 6_000, {}, epoch=epoch, positions={"clicks": 12}, undo=True
            )
        ]
    )
    assert await store.reconcile("p0", epoch, {"clicks": 7}) is Reconciled.AHEAD
    assert "c5" in await store.load({"p0": ["c5"]})


async def test_reconciling_a_stream_claimed_since_is_refused(undoing_store: StateStore) -> None:
    store = undoing_store
    epoch = await store.claim("p0")
    await store.claim("p0")
    with pytest.raises(ConflictError):
        await store.reconcile("p0", epoch, {"clicks": 1})


# --- zombies, erasure and upgrades ------------------------------------------------------------------


async def test_a_later_claim_fences_the_earlier_writer_out_states_and_checkpoint(store: StateStore) -> None:
    first = await store.claim("p0")
    await store.save([StreamSave("p0", [write(rich_state("c1"))], 4_000, {"c1": 9_000}, epoch=first)])
    second = await store.claim("p0")  # another worker took the partition over
    assert second > first
    # The first writer, paused meanwhile, wakes up: whatever it writes on the stream is refused.
    stale = rich_state("c2")
    with pytest.raises(ConflictError) as refused:
        await store.save([StreamSave("p0", [write(stale)], 1_000, {"c1": None}, epoch=first)])
    assert refused.value.streams == {"p0"}
    assert list(await store.load({"p0": ["c1", "c2"]})) == ["c1"]
    assert await store.checkpoint("p0") == Checkpoint(4_000, [])
    assert await store.deadlines("p0") == {"c1": 9_000}
    await store.save([StreamSave("p0", [write(stale)], 5_000, {}, epoch=second)])
    assert list(await store.load({"p0": ["c1", "c2"]})) == ["c1", "c2"]


async def test_versions_only_grow_so_a_write_loaded_before_an_erasure_is_refused(store: StateStore) -> None:
    # A zombie loaded c1 when it did not exist (version 0). The owner then wrote c1, and c1
    # was forgotten: were the version back at 0, the zombie's stale write would land after
    # the erasure (ABA). The tombstone is one version up.
    await store.save([StreamSave("p0", [write(rich_state("c1"))], 4_000, {})])
    await store.save([StreamSave("p0", [], 4_000, {}, erase=[Erasure("c1", 1)])])
    with pytest.raises(ConflictError):
        await store.save([StreamSave("p0", [write(rich_state("c1"), version=0)], 4_000, {})])
    # Erased and back within one batch: the write goes over the tombstone.
    await store.save(
        [StreamSave("p0", [write(rich_state("c1"), version=3)], 4_000, {}, erase=[Erasure("c1", 2)])]
    )
    assert (await store.load({"p0": ["c1"]}))["c1"].version == 4


def _v1_states() -> dict[str, bytes]:
    fixture = orjson.loads((Path(__file__).parent.parent / "fixtures" / "state" / "v1.json").read_bytes())
    return {customer: bytes.fromhex(blob) for customer, blob in fixture["states"].items()}


async def test_states_written_before_schema_versions_are_read(redis_client: aioredis.Redis) -> None:
    # Bytes a release before this one stored (fixtures/state/v1.json, made by commit 9c752dc):
    # a deploy reads them, and writes them back in the current schema.
    old = _v1_states()
    assert all(blob[0] in (0x8E, 0xDE) for blob in old.values()), "schema 1: a bare MessagePack map"
    store = RedisStateStore(redis_client)
    for customer, blob in old.items():
        await redis_client.set(store.state_key(customer, "p0"), (7).to_bytes(8, "big") + blob)
    loaded = await store.load({"p0": list(old)})
    assert loaded.keys() == old.keys()
    for customer, versioned in loaded.items():
        assert versioned.version == 7
        assert not versioned.unreadable
        before, now = msgspec.msgpack.decode(old[customer]), msgspec.to_builtins(versioned.state)
        assert {field: value for field, value in now.items() if field in before} == before, customer
        assert now.keys() - before.keys() == {"unsuppressed_at"}, "fields added since, at their defaults"
    assert any(v.state.cart for v in loaded.values())
    assert any(v.state.orders for v in loaded.values())
    assert any(v.state.consent for v in loaded.values())
    await store.save([StreamSave("p0", [write(v.state, 7) for v in loaded.values()], 4_000, {})])
    again = await store.load({"p0": list(old)})
    assert [encode_state(v.state) for v in again.values()] == [encode_state(v.state) for v in loaded.values()]
    stored = await redis_client.mget([store.state_key(c, "p0") for c in old])
    assert all(value[8] == SCHEMA for value in stored), "written back in the current schema"


async def test_a_state_of_an_unknown_schema_starts_the_customer_afresh_without_failing(
    redis_client: aioredis.Redis,
) -> None:
    store = RedisStateStore(redis_client)
    version = (4).to_bytes(8, "big")
    await redis_client.set(store.state_key("c1", "p0"), version + bytes([99]) + b"from the future")
    await redis_client.set(store.state_key("c2", "p0"), version + b"\x02\xde\x00\x01\xa7entries\x05")
    loaded = await store.load({"p0": ["c1", "c2"]})
    for customer in ("c1", "c2"):
        assert loaded[customer].unreadable
        assert loaded[customer].state == CustomerState(customer_id=customer)
        assert loaded[customer].version == 4  # what a save of the fresh state expects


# --- replicas ----------------------------------------------------------------------------------------


async def test_with_replicas_required_a_save_returns_once_a_replica_has_it(redis_cluster: Any) -> None:
    store = RedisStateStore.from_url(redis_cluster.url, min_replicas=1)
    try:
        await store.client.flushdb(target_nodes=RedisCluster.PRIMARIES)
        epoch = await store.claim("p3")
        await store.save([StreamSave("p3", [write(rich_state("c1"))], 4_000, {"c1": 9_000}, epoch=epoch)])
        assert list(await store.load({"p3": ["c1"]})) == ["c1"]
        # A node that has not seen the script (a replica promoted since) gets it on the way.
        await store.client.script_flush()
        await store.save([StreamSave("p3", [write(rich_state("c2"))], 4_000, {}, epoch=epoch)])
        assert list(await store.load({"p3": ["c1", "c2"]})) == ["c1", "c2"]
    finally:
        await store.close()


async def test_a_save_no_replica_took_in_time_fails_to_be_retried(redis_client: aioredis.Redis) -> None:
    # One Redis, no replica: the save is done on the primary, but it could be lost in a failover.
    store = RedisStateStore(redis_client, min_replicas=1, replica_timeout_ms=50)
    with pytest.raises(ReplicationError):
        await store.save([StreamSave("p0", [write(rich_state("c1"))], 4_000, {})])
