"""A progressive ROC AUC that costs the same per example however fine it is.

River's ``metrics.ROCAUC`` keeps a confusion matrix per threshold and updates
every one of them with every example: with the 50 thresholds rare outcomes
need, that was a third of the cost of learning. :class:`BinnedROCAUC` keeps
instead, per class, how many scores fell in each of ``bins`` equal slices of
``[0, 1]``: an update is one increment, and :meth:`BinnedROCAUC.get` reads the
area (the Mann-Whitney statistic: the chance that a positive scores above a
negative, a tie within a slice counting half) in one pass over the slices.
It is exact for scores that differ by more than ``1 / bins``.

It follows River's metric interface (``update``, ``get``, ``works_with``),
so it reads like the metrics beside it.

>>> auc = BinnedROCAUC()
>>> for y, p in [(False, 0.1), (False, 0.4), (True, 0.35), (True, 0.8)]:
...     auc.update(y, p)
>>> auc.get()
0.75
>>> auc.update(True, 0.1)  # ties with a negative: counts half
>>> round(auc.get(), 4)
0.5833
"""

from __future__ import annotations

from typing import Any


class BinnedROCAUC:
    """ROC AUC over scores counted per class in ``bins`` equal slices of ``[0, 1]``.

    Parameters
    ----------
    bins
        How many slices: scores closer than ``1 / bins`` count as ties.
    """

    def __init__(self, bins: int = 1000) -> None:
        if bins < 2:
            raise ValueError(f"bins must be at least 2, not {bins}")
        self.bins = bins
        self._positives = [0] * bins
        self._negatives = [0] * bins

    def works_with(self, model: Any) -> bool:
        """Whether ``model`` gives class probabilities (River's check, for its evaluators)."""
        return hasattr(model, "predict_proba_one")

    def update(self, y_true: bool, y_pred: float) -> None:
        """Count one example: its outcome and the probability it was given.

        Parameters
        ----------
        y_true
            Whether the outcome followed.
        y_pred
            The probability the model gave it, clamped to ``[0, 1]``.
        """
        at = int(y_pred * self.bins)
        at = 0 if at < 0 else self.bins - 1 if at >= self.bins else at
        if y_true:
            self._positives[at] += 1
        else:
            self._negatives[at] += 1

    def get(self) -> float:
        """The area under the ROC curve; 0.5 (chance) until both outcomes were seen.

        Returns
        -------
        float
            The share of (positive, negative) pairs ranked right, ties counting half.
        """
        positives = sum(self._positives)
        negatives = sum(self._negatives)
        if not positives or not negatives:
            return 0.5
        ranked = 0.0
        below = 0  # negatives in the slices below this one
        for pos, neg in zip(self._positives, self._negatives, strict=True):
            ranked += pos * (below + 0.5 * neg)
            below += neg
        return ranked / (positives * negatives)

    def __repr__(self) -> str:
        return f"ROCAUC: {self.get():.6f}"


__all__ = ["BinnedROCAUC"]
