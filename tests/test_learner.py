"""The streaming learner's bookkeeping, on a real redis-server: each example is learnt once.

Kafka's part (one learner per partition, handover on rebalance, a crash, the
``micromoments learner`` process) is in ``tests/integration/test_learning.py``; here
the records are handed over directly. Also: what ``micromoments learner`` refuses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app import cli
from app.learning.config import LearningConfig
from app.learning.features import dense
from app.learning.labels import LabelledExample, example_id
from app.learning.models import Models
from app.metrics import WorkerMetrics
from app.settings import Settings
from app.state.model_store import Learnt, ModelStore
from app.worker.learning import SEGMENTS, Learner, Refresher, training_records

KEY = b"test-signing-key-of-at-least-32-bytes"
RULES_ONLY = Path(__file__).resolve().parents[1] / "fixtures" / "rules-only.toml"
MOMENT = "price_comparison"


def examples(n: int, start: int = 0, *, ids: bool = True) -> list[LabelledExample]:
    return [
        LabelledExample(MOMENT, {"views": float(i % 5)}, i % 3 == 0, 0.5, "rules", i, False,
                        example_id("c", MOMENT, i) if ids else 0)
        for i in range(start, start + n)
    ]  # fmt: skip


def records(batch: list[LabelledExample]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in training_records(batch, segments=False) if k == MOMENT.encode()]


def learner(client: aioredis.Redis) -> Learner:
    return Learner(Settings(), LearningConfig(), ModelStore(client, KEY, prefix="t"))


async def learn(who: Learner, batch: list[tuple[bytes, bytes]], first_offset: int = 0) -> None:
    for offset, (key, value) in enumerate(batch, start=first_offset):
        await who._learn_record(0, offset, key, value)


async def stored_examples(client: aioredis.Redis, name: str = MOMENT, key: bytes = KEY) -> tuple[int, int]:
    loaded = await ModelStore(client, key, prefix="t").load(name)
    assert loaded is not None
    assert loaded.learnt is not None
    return loaded.learnt.model.examples_seen, loaded.version


async def test_records_read_again_after_a_crash_are_skipped(redis_client: aioredis.Redis) -> None:
    topic = records(examples(15, ids=False))  # the offsets alone tell
    first = learner(redis_client)
    await learn(first, topic[:10])
    await first.snapshot()  # stored, and then the worker died before committing offsets
    assert await stored_examples(redis_client) == (10, 1)

    second = learner(redis_client)  # reads from the last committed offset: the beginning
    await learn(second, topic)
    await second.snapshot()
    assert await stored_examples(redis_client) == (15, 2)


async def test_a_redone_batchs_copies_are_skipped(redis_client: aioredis.Redis) -> None:
    batch = examples(8)
    # The worker published the batch, failed to save it, redid it: the same examples again.
    topic = records(batch) + records(batch) + records(examples(4, start=8))
    who = learner(redis_client)
    await learn(who, topic)
    await who.snapshot()
    assert await stored_examples(redis_client) == (12, 1)
    # Still recognised by a learner that resumes from the snapshot.
    again = learner(redis_client)
    await learn(again, records(batch), first_offset=len(topic))
    await again.snapshot()
    assert (await stored_examples(redis_client))[0] == 12


async def test_a_record_that_is_no_example_is_skipped(redis_client: aioredis.Redis, caplog) -> None:  # type: ignore[no-untyped-def]
    who = learner(redis_client)
    await who._learn_record(0, 0, MOMENT.encode(), b"\xc1 not msgpack")
    await who._learn_record(0, 1, *records(examples(1))[0])
    await who.snapshot()
    assert await stored_examples(redis_client) == (1, 1)
    assert "skipping a training record" in caplog.text


async def test_two_learners_of_one_model_cannot_both_extend_it(redis_client: aioredis.Redis) -> None:
    first, second = learner(redis_client), learner(redis_client)
    topic = records(examples(6))
    await learn(first, topic)
    await learn(second, topic)
    await first.snapshot()
    await second.snapshot()  # its version 1 is taken: it drops its copy and reloads
    assert await stored_examples(redis_client) == (6, 1)
    assert second.quality() == {}


async def test_scorers_pick_up_new_versions(redis_client: aioredis.Redis) -> None:
    config = LearningConfig(min_examples=5)
    models = Models(config)
    refresher = Refresher(models, ModelStore(redis_client, KEY, prefix="t"), every=1.0)
    await refresher.refresh()
    assert refresher.versions == {}
    assert models.moments[MOMENT].examples_seen == 0

    who = Learner(Settings(), config, ModelStore(redis_client, KEY, prefix="t"))
    batch = examples(6)
    for offset, (key, value) in enumerate(training_records(batch, segments=True)):
        await who._learn_record(0, offset, key, value)
    await who.snapshot()
    await refresher.refresh()
    assert refresher.versions == {MOMENT: 1, SEGMENTS: 1}
    assert models.moments[MOMENT].examples_seen == 6
    x = dense(batch[0].features)
    assert models.score(MOMENT, x) is not None
    assert models.segment(x) is not None
    # Nothing newer: nothing loaded.
    await refresher.refresh()
    assert refresher.versions == {MOMENT: 1, SEGMENTS: 1}


async def test_a_stopping_learner_stores_what_it_learnt(redis_client: aioredis.Redis) -> None:
    who = learner(redis_client)
    await learn(who, records(examples(7)))
    await who._store_before_stopping()
    assert await stored_examples(redis_client) == (7, 1)


async def test_a_learner_stops_even_if_it_cannot_store(redis_client: aioredis.Redis, caplog) -> None:  # type: ignore[no-untyped-def]
    # Nothing listens there, and no retries: refused at once.
    nowhere = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    who = Learner(Settings(), LearningConfig(), ModelStore(nowhere, KEY, prefix="t"))
    who._models[MOMENT] = await learner(redis_client)._model(MOMENT)  # as if loaded before Redis went
    await learn(who, records(examples(3)))
    await who._store_before_stopping()  # logs, does not raise: the examples are read again next time
    assert "could not store what was learnt before stopping" in caplog.text
    await nowhere.aclose()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MM_REDIS_URL": "redis://127.0.0.1:1/0"}, "the learner needs MM_MODEL_KEY"),
        (
            {"MM_MODEL_KEY": KEY.decode(), "MM_REDIS_URL": "memory://"},
            "the learner needs Redis (MM_REDIS_URL)",
        ),
        (
            {"MM_MODEL_KEY": KEY.decode(), "MM_MOMENTS_CONFIG": str(RULES_ONLY)},
            "learning is disabled in the moment configuration",
        ),
    ],
)
def test_the_learner_command_refuses_to_run_without_what_it_needs(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("MM_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["learner"]) == 2
    assert message in capsys.readouterr().err


ROTATED = b"a-new-signing-key-also-at-least-32-bytes"


async def test_after_a_key_rotation_the_learner_takes_the_model_over_and_learning_goes_on(
    redis_client: aioredis.Redis,
) -> None:
    old = learner(redis_client)
    await learn(old, records(examples(10)))
    await old.snapshot()
    await learn(old, records(examples(5, start=10)), first_offset=10)
    await old.snapshot()
    assert await stored_examples(redis_client) == (15, 2)

    metrics = WorkerMetrics(runtime=False)
    new = Learner(Settings(), LearningConfig(), ModelStore(redis_client, ROTATED, prefix="t"), metrics)
    await learn(new, records(examples(4, start=15)), first_offset=15)
    await new.snapshot()
    # Afresh (4 examples, not 19), one version up, signed with the new key.
    assert await stored_examples(redis_client, key=ROTATED) == (4, 3)
    assert metrics.model_snapshots.labels("taken_over")._value.get() == 1
    assert metrics.model_snapshots.labels("conflict")._value.get() == 0
    # And on from there, like any other version.
    await learn(new, records(examples(3, start=19)), first_offset=19)
    await new.snapshot()
    assert await stored_examples(redis_client, key=ROTATED) == (7, 4)
    refresher = Refresher(Models(LearningConfig()), ModelStore(redis_client, ROTATED, prefix="t"), every=1.0)
    await refresher.refresh()
    assert refresher.versions[MOMENT] == 4


class GoneInThisRiver:
    """A class a snapshot was pickled with that the running code no longer has."""


async def test_a_snapshot_this_river_cannot_unpickle_is_taken_over(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(redis_client, KEY, prefix="t")
    assert await store.save(MOMENT, Learnt(GoneInThisRiver(), 0, 7), 1) is None
    monkeypatch.delattr(sys.modules[__name__], "GoneInThisRiver")
    loaded = await store.load(MOMENT)
    assert loaded is not None
    assert (loaded.version, loaded.learnt) == (1, None)
    assert "does not unpickle" in str(loaded.refused)

    who = learner(redis_client)
    await learn(who, records(examples(6)))
    await who.snapshot()
    assert await stored_examples(redis_client) == (6, 2)
