"""A fitted ``StandardScaler | LogisticRegression`` folded into one weight vector, to score fast.

Scaling then weighting is linear: ``w . (x - mean) / std + b`` is ``coef . x + const``
with ``coef = w / std`` and ``const = b - sum(w * mean / std)``. Folding it once after
each learning step turns River's two dict passes per prediction (the scaler's, then
the dot product) into one pass over plain tuples.
The probabilities are River's own up to float rounding: the same sigmoid, clamped
where River clamps it.

>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> for i in range(50):
...     model.learn_one({"a": float(i % 5), "b": 1.0}, i % 5 > 2)
>>> form = fold(model)
>>> x = {"a": 4.0, "b": 1.0}
>>> abs(form.proba_one(x) - model.predict_proba_one(x)[True]) < 1e-12
True
>>> fold(linear_model.Perceptron()) is None  # not a form this module knows
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import mul
from typing import Any

import numpy as np
from numpy.typing import NDArray
from river import compose, linear_model, optim, preprocessing

# Beyond these logits River's sigmoid returns exactly 0 or 1.
_CLAMP = 30.0


class LinearForm:
    """``sigmoid(coef . x + const)`` over the keys the model has seen."""

    __slots__ = ("_coef", "_const", "_keys")

    def __init__(self, weights: Mapping[str, float], const: float) -> None:
        self._keys = tuple(weights)
        self._coef = tuple(weights.values())
        self._const = const

    def proba_one(self, x: Mapping[str, float]) -> float:
        """The probability of ``True`` for one example (keys the model never saw count 0)."""
        z = self._const + sum(map(mul, map(x.get, self._keys, repeat(0.0)), self._coef))
        return _sigmoid(z)


def _sigmoid(z: float) -> float:
    if z < -_CLAMP:
        return 0.0
    if z > _CLAMP:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def regression_parts(model: Any) -> tuple[Any, Any] | None:
    """``(scaler, regression)`` of a River logistic regression, scaled or not (scaler None); else None.

    Parameters
    ----------
    model
        A ``LogisticRegression`` (log loss), or a pipeline of a ``StandardScaler``
        (no rolling window) and one.

    Returns
    -------
    tuple or None
        The scaler (None without one) and the regression, or None for a model of another shape.
    """
    scaler: Any = None
    regression = model
    if isinstance(model, compose.Pipeline):
        if len(model.steps) != 2:
            return None
        scaler, regression = model.steps.values()
        if not (
            isinstance(scaler, preprocessing.StandardScaler)
            and scaler.with_std
            and scaler.window_size is None
        ):
            return None
    if not isinstance(regression, linear_model.LogisticRegression) or not isinstance(
        regression.loss, optim.losses.Log
    ):
        return None
    return scaler, regression


def fold(model: Any) -> LinearForm | None:
    """The linear form of a fitted model :func:`regression_parts` knows; None for anything else.

    Parameters
    ----------
    model
        A fitted River model.

    Returns
    -------
    LinearForm or None
        What scores like ``model``, or None when ``model`` is of another shape.
    """
    parts = regression_parts(model)
    if parts is None:
        return None
    scaler, regression = parts
    weights: dict[str, float] = dict(regression._weights)
    const = float(regression.intercept)
    if scaler is None:
        return LinearForm(weights, const)
    coef: dict[str, float] = {}
    for key, w in weights.items():
        var = scaler.vars.get(key, 0.0)
        if var:  # River's scaler maps a constant feature to 0
            std = var**0.5
            coef[key] = w / std
            const -= w * scaler.means.get(key, 0.0) / std
    return LinearForm(coef, const)


def scale(scaler: Any, X: NDArray[np.float64], columns: Sequence[str]) -> NDArray[np.float64]:
    """The rows of ``X`` (columns ``columns``) scaled as River's scaler's ``transform_one`` would.

    Parameters
    ----------
    scaler
        A River ``StandardScaler``, or None to leave ``X`` as it is.
    X
        One example a row.
    columns
        The features of ``X``'s columns.

    Returns
    -------
    numpy.ndarray
        ``(x - mean) / std`` per feature, 0 for a feature that never varied.
    """
    if scaler is None:
        return X
    means = np.array([scaler.means.get(c, 0.0) for c in columns])
    variances = np.array([scaler.vars.get(c, 0.0) for c in columns])
    scaled: NDArray[np.float64] = np.divide(
        X - means, np.sqrt(variances), out=np.zeros(X.shape), where=variances > 0
    )
    return scaled


__all__ = ["LinearForm", "fold", "regression_parts", "scale"]
