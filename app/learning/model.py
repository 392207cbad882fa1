"""One moment's model: a River classifier that keeps score of itself.

:class:`MomentModel` follows River's interface: ``predict_proba_one`` gives
the probability of each class, ``True`` being that acting on the moment now
matters (that the moment's outcome follows); ``learn_one`` learns from one
example. Every ``learn_one`` first tests, then trains
(progressive validation): the example is scored by the model as it stands,
the score updates a ROC AUC, a log loss and an ADWIN drift detector fed with
the absolute error, and only then does the model learn from it.

The classifier is chosen by configuration (:class:`~app.learning.config.ModelConfig`):

- ``logistic_regression`` (default): ``StandardScaler() | LogisticRegression()``;
- ``hoeffding_tree``: ``tree.HoeffdingTreeClassifier``;
- ``adaptive_random_forest``: ``forest.ARFClassifier`` seeded with the configured ``seed``.

A model is plain picklable data (see :mod:`app.learning.snapshot`) and
deterministic, whatever the process's string hash seed: the same examples in
the same order give the same predictions and metrics (for the default model,
the same pickled bytes; River's trees also carry unseeded random generators
that only serve to sample, never to learn or predict).

>>> model = MomentModel()
>>> model.predict_proba_one({"views": 1.0})
{False: 0.5, True: 0.5}
>>> for i in range(200):
...     model.learn_one({"views": float(i % 10)}, i % 10 >= 5)
>>> model.examples_seen, model.ready(100)
(200, True)
>>> [round(model.predict_proba_one({"views": v})[True], 2) for v in (9.0, 0.0)]
[0.74, 0.26]
>>> model.auc > 0.9, model.drift_alarms
(True, 0)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from river import base, drift, forest, linear_model, metrics, optim, preprocessing, tree

from app.learning._linear import LinearForm, fold, regression_parts, scale
from app.learning.auc import BinnedROCAUC
from app.learning.config import MODEL_KINDS, ModelConfig

# kind -> the River classifier class it names.
_CLASSES: dict[str, type[base.Classifier]] = {
    "logistic_regression": linear_model.LogisticRegression,
    "hoeffding_tree": tree.HoeffdingTreeClassifier,
    "adaptive_random_forest": forest.ARFClassifier,
}
assert tuple(_CLASSES) == MODEL_KINDS
_LOG_LOSS: Any = metrics.LogLoss
_ADWIN: Any = drift.ADWIN
# Parameters set from elsewhere in the configuration, not from ``params``.
_RESERVED = frozenset({"seed"})


def build_classifier(config: ModelConfig) -> Any:
    """The (untrained) River classifier ``config`` describes (or a scaler-classifier pipeline).

    Raises ``ValueError`` naming the problem for an unknown kind, an unknown
    parameter or a value the classifier refuses.

    >>> list(build_classifier(ModelConfig()).steps)
    ['StandardScaler', 'LogisticRegression']
    >>> build_classifier(ModelConfig(kind="adaptive_random_forest", params={"n_models": 3})).seed
    42
    >>> build_classifier(ModelConfig(kind="hoeffding_tree", params={"depth": 3}))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown parameter 'depth' for hoeffding_tree; its parameters are [...]
    """
    cls = _CLASSES.get(config.kind)
    if cls is None:
        raise ValueError(
            f"unknown model kind {config.kind!r}; choose one of {', '.join(map(repr, MODEL_KINDS))}"
        )
    params: dict[str, Any] = dict(config.params)
    accepted = set(inspect.signature(cls).parameters) - _RESERVED
    if config.kind == "logistic_regression":
        accepted = (accepted - {"optimizer"}) | {"lr"}
        if "lr" in params:
            params["optimizer"] = optim.SGD(params.pop("lr"))
    for name in config.params:
        if name not in accepted:
            raise ValueError(
                f"unknown parameter {name!r} for {config.kind}; its parameters are {sorted(accepted)}"
            )
    if config.kind == "adaptive_random_forest":
        params["seed"] = config.seed
    try:
        classifier = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid parameters {dict(config.params)} for {config.kind}: {exc}") from exc
    if config.scaled:
        return preprocessing.StandardScaler() | classifier
    return classifier


class MomentModel:
    """A moment's classifier with progressive ROC AUC, log loss and drift alarms.

    Parameters
    ----------
    config
        Which River classifier, its parameters, and how the progressive metrics are kept.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        self.classifier: Any = build_classifier(self.config)
        self._auc = BinnedROCAUC(self.config.auc_bins)
        # Any: River's type hints are partial (its metrics and detectors have none).
        self._log_loss: Any = _LOG_LOSS()
        self._drift: Any = _ADWIN(delta=self.config.drift_delta)
        self._seen = 0
        self._positives = 0
        self._alarms = 0
        self._drifted = False
        self._form: LinearForm | None = None
        self._folded = False

    def predict_proba_one(self, x: Mapping[str, float]) -> dict[bool, float]:
        """The probability of each class for ``x``, as River's classifiers give it.

        Parameters
        ----------
        x
            The example's features.

        Returns
        -------
        dict
            ``{False: 1 - p, True: p}``, ``p`` in ``[0, 1]`` the probability that the
            outcome follows: 0.5 from an untrained linear model, 0 from a classifier
            that has never seen a positive example (River's own reading of a
            probability dict without ``True``).
        """
        p = self._proba_true(x)
        return {False: 1.0 - p, True: p}

    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        """The probability of each class for each row of ``X``, as River's mini-batch methods give it.

        Parameters
        ----------
        X
            One example a row, one feature a column.

        Returns
        -------
        pandas.DataFrame
            Columns ``False`` and ``True``, one row per row of ``X`` (same index).
        """
        p = np.array([self._proba_true(row) for row in _rows(X)], dtype=np.float64)
        return pd.DataFrame({False: 1.0 - p, True: p}, index=X.index)

    def _linear(self) -> LinearForm | None:
        if not self._folded:
            self._form = fold(self.classifier)
            self._folded = True
        return self._form

    def _proba_true(self, x: Mapping[str, float]) -> float:
        form = self._linear()
        if form is not None:
            return form.proba_one(x)
        return _probability(self.classifier.predict_proba_one(dict(x)))

    def learn_one(self, x: Mapping[str, float], y: bool) -> None:
        """Score ``x`` (updating the progressive metrics and the drift detector), then learn ``y``.

        Parameters
        ----------
        x
            The example's features.
        y
            Whether the outcome followed.
        """
        self._tested(self._proba_true(x), bool(y))
        self.classifier.learn_one(dict(x), bool(y))
        self._folded = False

    def learn_many(self, X: pd.DataFrame, y: pd.Series) -> None:
        """Learn the rows of ``X`` in order, each scored first as the model stands.

        The same as :meth:`learn_one` row after row, except that a scaler in front of a
        logistic regression learns the batch's statistics at once (River's
        ``learn_many``, the same statistics): every row is scored with the statistics
        as they were before the batch, and learnt with them as they are after it. The
        regression still takes one gradient step per example, in order, which is what
        its accuracy depends on.

        Parameters
        ----------
        X
            One example a row, one feature a column.
        y
            Whether each example's outcome followed (aligned with ``X``).
        """
        labels = [bool(label) for label in y]
        if not labels:
            return
        parts = regression_parts(self.classifier)
        if parts is None:
            for x, label in zip(_rows(X), labels, strict=True):
                self.learn_one(x, label)
            return
        scaler, regression = parts
        columns = [str(column) for column in X.columns]
        rows = X.to_numpy(dtype=np.float64)
        # Tested as the scaler stood before the batch, learnt as it stands after it.
        tested = _records(columns, scale(scaler, rows, columns))
        if scaler is not None:
            scaler.learn_many(X)
        learnt = _records(columns, scale(scaler, rows, columns))
        for before, after, label in zip(tested, learnt, labels, strict=True):
            self._tested(_probability(regression.predict_proba_one(before)), label)
            regression.learn_one(after, label)
        self._folded = False

    def _tested(self, p: float, y: bool) -> None:
        """Progressive validation: ``p`` was the model's score for an example whose outcome is ``y``."""
        self._auc.update(y, p)
        self._log_loss.update(y, p)
        self._drift.update(abs(float(y) - p))
        self._drifted = bool(self._drift.drift_detected)
        if self._drifted:
            self._alarms += 1
        self._seen += 1
        self._positives += y

    def __getstate__(self) -> dict[str, Any]:
        # The folded form is a cache: snapshots need not carry it.
        state = self.__dict__.copy()
        state["_form"], state["_folded"] = None, False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._form, self._folded = None, False

    def ready(self, min_examples: int) -> bool:
        """Whether the model may decide: ``min_examples`` learned, and both outcomes among them.

        A model that has only ever seen one outcome has nothing to tell
        candidates apart by, so the rules keep deciding.
        """
        return self._seen >= min_examples and 0 < self._positives < self._seen

    @property
    def examples_seen(self) -> int:
        return self._seen

    @property
    def positives(self) -> int:
        """Examples learned with the outcome (label ``True``)."""
        return self._positives

    @property
    def auc(self) -> float | None:
        """Progressive ROC AUC, or ``None`` until both outcomes were seen (it is undefined before)."""
        if not 0 < self._positives < self._seen:
            return None
        return self._auc.get()

    @property
    def log_loss(self) -> float | None:
        """Progressive mean log loss, or ``None`` before the first example."""
        return float(self._log_loss.get()) if self._seen else None

    @property
    def drift_alarms(self) -> int:
        """How many times ADWIN detected a change in the error rate."""
        return self._alarms

    @property
    def drift_detected(self) -> bool:
        """Whether the latest :meth:`learn_one` raised a drift alarm (for the caller to log)."""
        return self._drifted

    def __repr__(self) -> str:
        auc = "-" if self.auc is None else f"{self.auc:.3f}"
        return f"MomentModel({self.config.kind}, examples={self._seen}, auc={auc}, alarms={self._alarms})"


def _probability(proba: Mapping[Any, float]) -> float:
    """``True``'s probability in a River ``predict_proba_one`` result, made a number in [0, 1]."""
    p = float(proba.get(True, 0.0))
    if math.isnan(p):
        return 0.5
    return min(max(p, 0.0), 1.0)


def _rows(X: pd.DataFrame) -> list[dict[str, float]]:
    return _records([str(column) for column in X.columns], X.to_numpy(dtype=np.float64))


def _records(columns: list[str], rows: np.ndarray[Any, np.dtype[np.float64]]) -> list[dict[str, float]]:
    """One feature dict per row, as River's ``*_one`` methods take them."""
    return [dict(zip(columns, row, strict=True)) for row in rows.tolist()]


__all__ = ["MomentModel", "build_classifier"]
