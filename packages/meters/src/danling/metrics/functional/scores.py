"""Classification scores computed from a confusion matrix.

Every function takes a confusion matrix from :mod:`.confusion`: ``(2, 2)`` binary, ``(C, C)``
multiclass or ``(L, 2, 2)`` multilabel, and an ``average``:

- ``"binary"``: the positive class of a ``(2, 2)`` matrix;
- ``"micro"``: the score of the summed per-class counts;
- ``"macro"``: the mean over classes that occur in targets or predictions (like scikit-learn,
  which infers the classes from the data);
- ``"weighted"``: the mean weighted by each class's support (number of true samples);
- ``None``: one score per class (or label).

A ratio whose denominator is zero counts as 0 (scikit-learn's ``zero_division=0``); a score over
an empty matrix, or an average over no classes, is NaN.

    >>> confmat = torch.tensor([[4, 2], [2, 2]])
    >>> precision(confmat)
    tensor(0.5000, dtype=torch.float64)
    >>> fbeta_score(confmat, beta=1.0, average="macro")
    tensor(0.5833, dtype=torch.float64)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Average = Literal["binary", "micro", "macro", "weighted"] | None
_AVERAGES = ("binary", "micro", "macro", "weighted", None)


def stat_scores(confmat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class (or per-label) ``tp, fp, fn, tn`` as float64 tensors."""
    confmat = confmat.to(torch.float64)
    if confmat.ndim == 3 and confmat.shape[1:] == (2, 2):
        return confmat[:, 1, 1], confmat[:, 0, 1], confmat[:, 1, 0], confmat[:, 0, 0]
    if confmat.ndim == 2 and confmat.shape[0] == confmat.shape[1]:
        tp = confmat.diagonal()
        fp = confmat.sum(0) - tp
        fn = confmat.sum(1) - tp
        return tp, fp, fn, confmat.sum() - tp - fp - fn
    raise ValueError(f"confusion matrix must have shape (C, C) or (L, 2, 2), but got {tuple(confmat.shape)}")


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), 0.0)


def _check_average(average: Average, confmat: Tensor) -> None:
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, but got {average!r}")
    if average == "binary" and tuple(confmat.shape) != (2, 2):
        raise ValueError(f"average='binary' needs a (2, 2) confusion matrix, but got shape {tuple(confmat.shape)}")


def _nan_if_empty(value: Tensor, confmat: Tensor) -> Tensor:
    """NaN where nothing was counted: per label for multilabel matrices, else for the whole matrix."""
    total = confmat.sum((1, 2)) if confmat.ndim == 3 and value.ndim == 1 else confmat.sum()
    return torch.where(total > 0, value, math.nan)


def _average(
    per_class: Tensor, tp: Tensor, fp: Tensor, fn: Tensor, average: Average, micro: Tensor, confmat: Tensor
) -> Tensor:
    if average is None:
        return _nan_if_empty(per_class, confmat)
    if average == "binary":
        return _nan_if_empty(per_class[1], confmat)
    if average == "micro":
        return _nan_if_empty(micro, confmat)
    if average == "macro":
        present = (tp + fp + fn) > 0
        return (per_class * present).sum() / present.sum()  # 0 / 0 = NaN when no class occurs
    support = tp + fn
    return (per_class * support).sum() / support.sum()


def precision(confmat: Tensor, average: Average = "binary") -> Tensor:
    """``tp / (tp + fp)``."""
    _check_average(average, confmat)
    tp, fp, fn, _ = stat_scores(confmat)
    micro = _ratio(tp.sum(), tp.sum() + fp.sum())
    return _average(_ratio(tp, tp + fp), tp, fp, fn, average, micro, confmat)


def recall(confmat: Tensor, average: Average = "binary") -> Tensor:
    """``tp / (tp + fn)`` (sensitivity)."""
    _check_average(average, confmat)
    tp, fp, fn, _ = stat_scores(confmat)
    micro = _ratio(tp.sum(), tp.sum() + fn.sum())
    return _average(_ratio(tp, tp + fn), tp, fp, fn, average, micro, confmat)


def specificity(confmat: Tensor, average: Average = "binary") -> Tensor:
    """``tn / (tn + fp)``."""
    _check_average(average, confmat)
    tp, fp, fn, tn = stat_scores(confmat)
    micro = _ratio(tn.sum(), tn.sum() + fp.sum())
    return _average(_ratio(tn, tn + fp), tp, fp, fn, average, micro, confmat)


def fbeta_score(confmat: Tensor, beta: float = 1.0, average: Average = "binary") -> Tensor:
    """Weighted harmonic mean of precision and recall: ``(1 + b²) tp / ((1 + b²) tp + b² fn + fp)``."""
    _check_average(average, confmat)
    if not beta > 0:
        raise ValueError(f"beta must be positive, but got {beta!r}")
    tp, fp, fn, _ = stat_scores(confmat)
    weight = 1.0 + beta * beta

    def score(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return _ratio(weight * tp, weight * tp + beta * beta * fn + fp)

    return _average(score(tp, fp, fn), tp, fp, fn, average, score(tp.sum(), fp.sum(), fn.sum()), confmat)


def f1_score(confmat: Tensor, average: Average = "binary") -> Tensor:
    """Harmonic mean of precision and recall."""
    return fbeta_score(confmat, 1.0, average)


def accuracy(confmat: Tensor, average: Literal["micro", "macro"] | None = "micro") -> Tensor:
    """Fraction of correct predictions.

    For ``(C, C)`` matrices, ``"micro"`` is the overall fraction correct and the per-class value is
    the class's recall (so ``"macro"`` equals balanced accuracy).  For ``(L, 2, 2)`` matrices the
    per-label value is that label's accuracy and ``"micro"`` is one minus the Hamming loss.
    """
    if average not in ("micro", "macro", None):
        raise ValueError(f"accuracy average must be 'micro', 'macro' or None, but got {average!r}")
    tp, _, fn, tn = stat_scores(confmat)
    if confmat.ndim == 2:
        correct, total = tp, tp + fn
    else:
        correct, total = tp + tn, confmat.to(torch.float64).sum((1, 2))
    if average == "micro":
        return correct.sum() / total.sum()
    present = total > 0
    per_class = torch.where(present, _ratio(correct, total), math.nan)
    if average is None:
        return per_class
    return torch.where(present, per_class, 0.0).sum() / present.sum()


def balanced_accuracy(confmat: Tensor) -> Tensor:
    """Mean recall over the classes present in the targets; for multilabel, per label then averaged."""
    tp, fp, fn, tn = stat_scores(confmat)
    if confmat.ndim == 2:
        present = (tp + fn) > 0
        return torch.where(present, _ratio(tp, tp + fn), 0.0).sum() / present.sum()
    positives, negatives = (tp + fn) > 0, (tn + fp) > 0
    per_label = (_ratio(tp, tp + fn) * positives + _ratio(tn, tn + fp) * negatives) / (
        positives.to(torch.float64) + negatives
    )
    return per_label.nanmean()


def matthews_corrcoef(confmat: Tensor) -> Tensor:
    """Matthews correlation coefficient; multilabel matrices are summed over labels first.

    Like scikit-learn, a zero denominator (a constant prediction or target) gives 0.
    """
    confmat = confmat.to(torch.float64)
    if confmat.ndim == 3:
        confmat = confmat.sum(0)
    stat_scores(confmat)  # validates the shape
    samples = confmat.sum()
    correct = confmat.trace()
    predicted, true = confmat.sum(0), confmat.sum(1)
    covariance = correct * samples - (predicted * true).sum()
    variance_pred = samples * samples - (predicted * predicted).sum()
    variance_true = samples * samples - (true * true).sum()
    denominator = (variance_pred * variance_true).sqrt()
    score = torch.where(denominator > 0, covariance / denominator.clamp(min=1e-300), 0.0)
    return torch.where(samples > 0, score, math.nan)
