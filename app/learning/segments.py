"""Live micro-segments: online k-means over customers' behaviour vectors.

:class:`Segmenter` assigns a behaviour vector (:func:`app.learning.features.behaviour_vector`)
to one of ``n_clusters`` segments, numbered ``0 .. n_clusters - 1`` for good,
and moves that segment's centre a little towards it when learning
(River's ``cluster.KMeans`` rule: ``centre += halflife * (x - centre)``).
Segment ids are stable because the number of centres is fixed and no centre
is ever created, merged or renumbered, unlike in the micro-cluster algorithms
(DBSTREAM, CluStream, DenStream), whose cluster ids change as they recluster.

Two departures from River's ``KMeans``, both for reproducibility and use:

- distances are taken over a fixed key order, not over a ``set`` of keys
  (whose order, and so the last bits of the sum, depend on string hashing,
  which differs between processes);
- centres are seeded from the data, not left at random points (which may never
  be nearest to anyone, or split one group while merging two others): a vector
  farther than ``radius`` from every centre so far becomes the next centre,
  until all ``n_clusters`` are placed. Only placed centres are ever assigned;
  River's seeded random positions stand in for the others.

>>> segmenter = Segmenter(SegmentsConfig(n_clusters=2), keys=("browse", "buy"))
>>> for _ in range(3):
...     segmenter.learn_one({"browse": 1.0, "buy": 0.0})
...     segmenter.learn_one({"browse": 0.1, "buy": 0.9})
>>> segmenter.predict_one({"browse": 0.9, "buy": 0.1}), segmenter.predict_one({"browse": 0.0, "buy": 1.0})
(0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from river import cluster

from app.learning.config import SegmentsConfig
from app.learning.features import BEHAVIOUR_KEYS


class _KMeans(cluster.KMeans):
    """River's incremental k-means with an ordered distance and data-seeded centres."""

    def __init__(
        self,
        n_clusters: int,
        halflife: float,
        seed: int,
        radius: float = 0.5,
        keys: Sequence[str] = BEHAVIOUR_KEYS,
    ) -> None:
        # Random positions around the middle of the unit cube the vectors live in.
        super().__init__(n_clusters=n_clusters, halflife=halflife, mu=0.5, sigma=0.25, seed=seed)
        self.radius = radius
        self.keys = tuple(keys)
        # Centres 0 .. placed - 1 sit where the data put them.
        self.placed = 0
        for centre in self.centers.values():
            for key in self.keys:  # draw every coordinate now, in a fixed order
                _ = centre[key]
        self._points = self._centre_points()

    def _centre_points(self) -> list[tuple[float, ...]]:
        """Each centre as a tuple over ``keys``: distances in C (``math.dist``), not over dicts."""
        return [tuple(self.centers[i][key] for key in self.keys) for i in range(self.n_clusters)]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._points = self._centre_points()

    def _point(self, x: Mapping[Any, Any]) -> list[float]:
        """``x`` on ``keys``, in their order: missing ones are 0, others are ignored."""
        return [float(x.get(key, 0.0)) for key in self.keys]

    def _nearest(self, point: Sequence[float]) -> tuple[int, float]:
        best, best_distance = 0, math.inf
        for i in range(self.placed or self.n_clusters):
            distance = math.dist(self._points[i], point)
            if distance < best_distance:  # ties go to the lowest id
                best, best_distance = i, distance
        return best, best_distance

    def predict_one(self, x: Mapping[Any, Any]) -> int:
        return self._nearest(self._point(x))[0]

    def learn_predict_one(self, x: Mapping[Any, Any]) -> int:
        point = self._point(x)
        closest, distance = self._nearest(point)
        if self.placed < self.n_clusters and (self.placed == 0 or distance > self.radius):
            closest = self.placed
            self.centers[closest].update(zip(self.keys, point, strict=True))
            self.placed += 1
        else:
            # River's rule: the nearest centre moves ``halflife`` of the way towards x.
            centre = self.centers[closest]
            for key, value in zip(self.keys, point, strict=True):
                centre[key] += self.halflife * (value - centre[key])
        self._points[closest] = tuple(self.centers[closest][key] for key in self.keys)
        return closest


class Segmenter:
    """Online clustering of behaviour vectors into ``n_clusters`` stable segment ids."""

    def __init__(self, config: SegmentsConfig | None = None, *, keys: Sequence[str] = BEHAVIOUR_KEYS) -> None:
        self.config = config or SegmentsConfig()
        self.keys = tuple(keys)
        cfg = self.config
        self._kmeans = _KMeans(cfg.n_clusters, cfg.halflife, cfg.seed, cfg.radius, self.keys)
        self._seen = 0

    def predict_one(self, x: Mapping[str, float]) -> int:
        """The segment whose centre is nearest to ``x`` (missing keys count 0, others are ignored)."""
        segment: int = self._kmeans.predict_one(x)
        return segment

    def learn_one(self, x: Mapping[str, float]) -> None:
        """Move the nearest centre towards ``x``."""
        self.learn_predict_one(x)

    def learn_predict_one(self, x: Mapping[str, float]) -> int:
        """:meth:`learn_one`, returning the segment ``x`` was assigned to."""
        self._seen += 1
        segment: int = self._kmeans.learn_predict_one(x)
        return segment

    @property
    def n_clusters(self) -> int:
        return self.config.n_clusters

    @property
    def examples_seen(self) -> int:
        return self._seen

    @property
    def centres(self) -> dict[int, dict[str, float]]:
        """A copy of each segment's centre (to describe segments to people)."""
        centres: dict[int, Any] = self._kmeans.centers
        return {i: {key: centre[key] for key in self.keys} for i, centre in centres.items()}


__all__ = ["Segmenter"]
