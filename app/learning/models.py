"""Every moment's model and the segmenter, together: what scoring reads and learning writes.

In replay one :class:`Models` does both, so a model learns from each outcome
the moment it is known and a replay stays deterministic. In the streaming
worker, scorers hold copies loaded from signed snapshots, and one learner per
model keeps the original (see ``app/worker/learning.py``).

>>> from app.learning.config import LearningConfig
>>> from app.learning.features import FEATURE_KEYS
>>> from app.learning.labels import LabelledExample
>>> models = Models(LearningConfig(min_examples=2))
>>> x = dict.fromkeys(FEATURE_KEYS, 0.0)
>>> models.score("frustration", x) is None  # warming up: the rules decide
True
>>> for label in (True, False):
...     models.learn(LabelledExample("frustration", {"errors": float(label)}, label, 0.5, "rules", 0))
>>> 0.0 <= models.score("frustration", x) <= 1.0
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from app.learning.config import MOMENT_NAMES, LearningConfig
from app.learning.features import behaviour, dense
from app.learning.labels import LabelledExample
from app.learning.model import MomentModel
from app.learning.segments import Segmenter

log = logging.getLogger(__name__)


class Models:
    def __init__(self, config: LearningConfig) -> None:
        self.config = config
        self.moments: dict[str, MomentModel] = {name: MomentModel(config.model) for name in MOMENT_NAMES}
        self.segmenter = Segmenter(config.segments) if config.segments.enabled else None

    def score(self, moment: str, x: Mapping[str, float]) -> float | None:
        """The model's probability that acting now matters; None while it is warming up."""
        model = self.moments[moment]
        if not model.ready(self.config.min_examples):
            return None
        return round(model.predict_proba_one(x)[True], 4)

    def segment(self, x: Mapping[str, float]) -> int | None:
        """The micro-segment of a customer whose features are ``x``."""
        if self.segmenter is None or not self.segmenter.examples_seen:
            return None
        return self.segmenter.predict_one(behaviour(x))

    def learn(self, example: LabelledExample) -> None:
        x = dense(example.features)
        model = self.moments[example.moment]
        model.learn_one(x, example.label)
        if model.drift_detected:
            log.warning(
                "drift in %s's model after %d examples (alarm %d)",
                example.moment,
                model.examples_seen,
                model.drift_alarms,
            )
        if self.segmenter is not None:
            self.segmenter.learn_one(behaviour(x))

    def quality(self) -> dict[str, dict[str, float | int | None]]:
        """Per moment: examples learnt, progressive ROC AUC and log loss, drift alarms."""
        return {
            name: {
                "examples": m.examples_seen,
                "auc": m.auc,
                "log_loss": m.log_loss,
                "drift_alarms": m.drift_alarms,
            }
            for name, m in self.moments.items()
        }
