"""Segmenter: stable ids, learns where customers are, picklable and deterministic."""

from __future__ import annotations

import pickle
import random

from app.learning.config import SegmentsConfig
from app.learning.features import BEHAVIOUR_KEYS
from app.learning.segments import Segmenter

BROWSER = {"browse": 0.9, "research": 0.1, "activity": 0.3, "mobile": 1.0}
BUYER = {"cart": 0.5, "buy": 0.3, "loyalty": 0.8, "recent_buyer": 0.9, "activity": 0.5}
HELPSEEKER = {"support": 0.8, "browse": 0.2, "recent_buyer": 0.7, "loyalty": 0.2}


def noisy(centre: dict[str, float], rng: random.Random) -> dict[str, float]:
    return {key: min(max(centre.get(key, 0.0) + rng.gauss(0, 0.05), 0.0), 1.0) for key in BEHAVIOUR_KEYS}


def stream(n: int, seed: int = 1) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [noisy(rng.choice((BROWSER, BUYER, HELPSEEKER)), rng) for _ in range(n)]


def trained(vectors: list[dict[str, float]], config: SegmentsConfig | None = None) -> Segmenter:
    segmenter = Segmenter(config or SegmentsConfig(n_clusters=3))
    for v in vectors:
        segmenter.learn_one(v)
    return segmenter


def test_segments_separate_distinct_behaviours() -> None:
    segmenter = trained(stream(600))
    rng = random.Random(2)
    for centre in (BROWSER, BUYER, HELPSEEKER):
        assert len({segmenter.predict_one(noisy(centre, rng)) for _ in range(20)}) == 1
    ids = {segmenter.predict_one(centre) for centre in (BROWSER, BUYER, HELPSEEKER)}
    assert ids == {0, 1, 2}
    assert segmenter.examples_seen == 600


def test_ids_are_in_range_and_stable() -> None:
    vectors = stream(300)
    segmenter = Segmenter(SegmentsConfig(n_clusters=4))
    assigned = [segmenter.learn_predict_one(v) for v in vectors]
    assert set(assigned) <= set(range(4))
    assert segmenter.n_clusters == 4
    before = segmenter.predict_one(BUYER)
    for v in stream(100, seed=3):  # more of the same behaviour moves centres, not ids
        segmenter.learn_one(v)
    assert segmenter.predict_one(BUYER) == before


def test_centres_are_placed_by_distant_vectors() -> None:
    segmenter = Segmenter(SegmentsConfig(n_clusters=3))
    rng = random.Random(5)
    assert segmenter.learn_predict_one(BROWSER) == 0
    assert segmenter.learn_predict_one(noisy(BROWSER, rng)) == 0  # near: no new centre
    # Until placed, centres are never assigned.
    assert segmenter.predict_one(BUYER) == segmenter.predict_one(HELPSEEKER) == 0
    assert segmenter.learn_predict_one(BUYER) == 1
    assert segmenter.learn_predict_one(HELPSEEKER) == 2
    assert segmenter.centres[1]["loyalty"] == 0.8
    # All placed: a far vector now joins the nearest segment.
    assert segmenter.learn_predict_one({"local": 1.0}) in {0, 1, 2}


def test_missing_keys_are_zero_and_unknown_keys_ignored() -> None:
    segmenter = trained(stream(200))
    assert segmenter.predict_one(BROWSER) == segmenter.predict_one({**BROWSER, "favourite_colour": 7.0})
    assert set(segmenter.centres[0]) == set(BEHAVIOUR_KEYS)


def test_deterministic_and_picklable() -> None:
    vectors = stream(300)
    first, second = trained(vectors), trained(vectors)
    assert pickle.dumps(first) == pickle.dumps(second)
    copy = pickle.loads(pickle.dumps(first))
    more = stream(100, seed=4)
    assert [copy.learn_predict_one(v) for v in more] == [first.learn_predict_one(v) for v in more]
    assert copy.centres == first.centres
    # The random seed only places centres the data has not placed yet.
    other = trained(vectors, SegmentsConfig(n_clusters=3, seed=7))
    assert [other.predict_one(v) for v in vectors] == [first.predict_one(v) for v in vectors]


def test_a_snapshot_from_before_the_cached_centres_still_loads() -> None:
    """Segmenters pickled before centres were cached as tuples rebuild the cache when loaded."""
    segmenter = trained(stream(300))
    old = pickle.loads(pickle.dumps(segmenter))
    del old._kmeans._points  # as a snapshot written before the cache existed
    loaded = pickle.loads(pickle.dumps(old))
    more = stream(100, seed=4)
    assert [loaded.learn_predict_one(v) for v in more] == [segmenter.learn_predict_one(v) for v in more]
