"""Binary classification metrics.

``input`` holds scores for the positive class, probabilities or logits (any value outside
``[0, 1]`` switches the batch to logits and applies a sigmoid); ``target`` holds 0 and 1, and
entries equal to ``ignore_index`` are left out.  Any shapes with the same number of elements work.
Every function returns a 0-d float64 tensor.

    >>> import torch
    >>> input = torch.tensor([0.1, 0.8, 0.6, 0.2, 0.7])
    >>> target = torch.tensor([0, 1, 0, 0, 1])
    >>> binary_accuracy(input, target)
    tensor(0.8000, dtype=torch.float64)
    >>> binary_precision(input, target), binary_recall(input, target)
    (tensor(0.6667, dtype=torch.float64), tensor(1., dtype=torch.float64))
    >>> binary_auroc(input, target)
    tensor(1., dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from . import scores
from .confusion import binary_confusion_matrix
from .inputs import binary_inputs, check_labels, to_probabilities
from .ranking import average_precision, roc_auc


def binary_accuracy(input: Any, target: Any, *, threshold: float = 0.5, ignore_index: int | None = -100) -> Tensor:
    """Fraction of entries whose thresholded score equals the target."""
    return scores.accuracy(binary_confusion_matrix(input, target, threshold=threshold, ignore_index=ignore_index))


def binary_balanced_accuracy(
    input: Any, target: Any, *, threshold: float = 0.5, ignore_index: int | None = -100
) -> Tensor:
    """Mean of the true positive and true negative rates."""
    confmat = binary_confusion_matrix(input, target, threshold=threshold, ignore_index=ignore_index)
    return scores.balanced_accuracy(confmat)


def binary_precision(input: Any, target: Any, *, threshold: float = 0.5, ignore_index: int | None = -100) -> Tensor:
    """Fraction of predicted positives that are positive."""
    return scores.precision(binary_confusion_matrix(input, target, threshold=threshold, ignore_index=ignore_index))


def binary_recall(input: Any, target: Any, *, threshold: float = 0.5, ignore_index: int | None = -100) -> Tensor:
    """Fraction of positives predicted positive (sensitivity)."""
    return scores.recall(binary_confusion_matrix(input, target, threshold=threshold, ignore_index=ignore_index))


def binary_specificity(input: Any, target: Any, *, threshold: float = 0.5, ignore_index: int | None = -100) -> Tensor:
    """Fraction of negatives predicted negative."""
    return scores.specificity(binary_confusion_matrix(input, target, threshold=threshold, ignore_index=ignore_index))


def binary_fbeta_score(
    input: Any, target: Any, *, beta: float = 1.0, threshold: float = 0.5, ignore_index: int | None = -100
) -> Tensor:
    """F-beta score of the positive class."""
    confmat = binary_confusion_matrix(input, target, threshold=threshold, ignore_index=ignore_index)
    return scores.fbeta_score(confmat, beta)


def binary_f1_score(input: Any, target: Any, *, threshold: float = 0.5, ignore_index: int | None = -100) -> Tensor:
    """F1 score of the positive class."""
    return scores.f1_score(binary_confusion_matrix(input, target, threshold=threshold, ignore_index=ignore_index))


def binary_mcc(input: Any, target: Any, *, threshold: float = 0.5, ignore_index: int | None = -100) -> Tensor:
    """Matthews correlation coefficient."""
    confmat = binary_confusion_matrix(input, target, threshold=threshold, ignore_index=ignore_index)
    return scores.matthews_corrcoef(confmat)


def _ranking_columns(input: Any, target: Any, ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor]:
    input, target = binary_inputs(input, target)
    check_labels(target, 2, ignore_index, "binary labels")
    valid = (target == 0) | (target == 1)
    return to_probabilities(input).unsqueeze(1), (target == 1).unsqueeze(1), valid.unsqueeze(1)


def binary_auroc(input: Any, target: Any, *, ignore_index: int | None = -100) -> Tensor:
    """Area under the ROC curve; NaN when only one class is present."""
    return roc_auc(*_ranking_columns(input, target, ignore_index)).squeeze(0)


def binary_auprc(input: Any, target: Any, *, ignore_index: int | None = -100) -> Tensor:
    """Average precision (area under the precision-recall curve); NaN without positives."""
    return average_precision(*_ranking_columns(input, target, ignore_index)).squeeze(0)


__all__ = [
    "binary_accuracy",
    "binary_auprc",
    "binary_auroc",
    "binary_balanced_accuracy",
    "binary_f1_score",
    "binary_fbeta_score",
    "binary_mcc",
    "binary_precision",
    "binary_recall",
    "binary_specificity",
]
