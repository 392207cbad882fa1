"""Every moment's model and the segmenter, together: what scoring reads and learning writes.

In replay one :class:`Models` does both: a model learns its moment's outcomes
as they become known, ``learn_batch`` at a time (one River ``learn_many``
each), so a replay stays deterministic whatever its own batches. In the streaming
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
...     models.learn(LabelledExample("frustration", {"events": float(label)}, label, 0.5, "rules", 0))
>>> models.flush()  # learn the incomplete batch
>>> 0.0 <= models.score("frustration", x) <= 1.0
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import pandas as pd

from app.learning.config import MOMENT_NAMES, LearningConfig
from app.learning.features import FEATURE_KEYS, behaviour
from app.learning.labels import LabelledExample
from app.learning.model import MomentModel
from app.learning.segments import Segmenter

log = logging.getLogger(__name__)


class Models:
    """Every moment's model, learning in batches, and the segmenter.

    Parameters
    ----------
    config
        The learning configuration: the models, their batch size, the segments.
    """

    def __init__(self, config: LearningConfig) -> None:
        self.config = config
        self.moments: dict[str, MomentModel] = {name: MomentModel(config.model) for name in MOMENT_NAMES}
        self.segmenter = Segmenter(config.segments) if config.segments.enabled else None
        self._batch = config.model.learn_batch
        # moment -> its labelled examples not learnt yet (fewer than a batch)
        self._waiting: dict[str, list[LabelledExample]] = {name: [] for name in MOMENT_NAMES}

    def score(self, moment: str, x: Mapping[str, float]) -> float | None:
        """The model's probability that acting now matters; None while it is warming up.

        Parameters
        ----------
        moment
            The candidate's moment.
        x
            The candidate's features (:func:`~app.learning.features.features`).

        Returns
        -------
        float or None
            The probability, rounded to 4 places; None until the model is ready.
        """
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
        """Learn from ``example``: its model once a batch of its moment's examples is complete.

        The segmenter learns it at once. Call :meth:`flush` to learn an incomplete batch.

        Parameters
        ----------
        example
            An example whose outcome is known.
        """
        waiting = self._waiting[example.moment]
        waiting.append(example)
        if len(waiting) >= self._batch:
            self._learn(example.moment)
        if self.segmenter is not None:
            self.segmenter.learn_one(behaviour(example.features))

    def flush(self) -> None:
        """Learn every example still waiting for its batch to complete."""
        for moment, waiting in self._waiting.items():
            if waiting:
                self._learn(moment)

    def _learn(self, moment: str) -> None:
        examples = self._waiting[moment]
        self._waiting[moment] = []
        learn_examples(self.moments[moment], examples)

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


def learn_examples(model: MomentModel, examples: Sequence[LabelledExample]) -> None:
    """``model`` learns ``examples`` (of its moment, in order) as one mini-batch; drift is logged.

    Parameters
    ----------
    model
        The examples' moment's model.
    examples
        Labelled examples, their features sparse as stored.
    """
    if not examples:
        return
    alarms = model.drift_alarms
    model.learn_many(_frame(examples), pd.Series([example.label for example in examples]))
    if model.drift_alarms > alarms:
        log.warning(
            "drift in %s's model after %d examples (alarm %d)",
            examples[0].moment,
            model.examples_seen,
            model.drift_alarms,
        )


def _frame(examples: Sequence[LabelledExample]) -> pd.DataFrame:
    """The examples' features as one dense row each, columns in :data:`FEATURE_KEYS` order."""
    rows = np.zeros((len(examples), len(FEATURE_KEYS)))
    for row, example in zip(rows, examples, strict=True):
        for key, value in example.features.items():
            at = _COLUMN.get(key)
            if at is not None:
                row[at] = value
    return pd.DataFrame(rows, columns=_COLUMNS)


_COLUMNS: Final = pd.Index(FEATURE_KEYS)
_COLUMN: Final = {key: at for at, key in enumerate(FEATURE_KEYS)}
