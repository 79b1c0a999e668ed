"""Multiclass classification metrics.

``input`` holds class scores ``(*, C)`` (probabilities or logits; the class dim may also come
second, as for ``cross_entropy``) or predicted labels of the target's shape; ``target`` holds class
indices, and entries equal to ``ignore_index`` are left out.  ``average`` is one of ``"micro"``,
``"macro"`` (over classes seen in targets or predictions), ``"weighted"`` (by support) or None
(one value per class).  Results are float64 tensors.

Unlike torchmetrics, ``multiclass_accuracy`` defaults to ``average="micro"``, the plain fraction
of correct predictions (scikit-learn's ``accuracy_score``); the macro average of per-class
recalls is ``multiclass_balanced_accuracy``.

    >>> import torch
    >>> input = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    >>> target = torch.tensor([0, 1, 1, 2])
    >>> multiclass_accuracy(input, target, 3)
    tensor(0.5000, dtype=torch.float64)
    >>> multiclass_recall(input, target, 3, average=None)
    tensor([1.0000, 0.5000, 0.0000], dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import scores
from .confusion import multiclass_confusion_matrix
from .inputs import check_labels, multiclass_inputs, to_probabilities
from .ranking import RankingAverage, average_columns, average_precision, roc_auc
from .scores import Average


def multiclass_accuracy(
    input: Any, target: Any, num_classes: int, *, average: Average = "micro", ignore_index: int | None = -100
) -> Tensor:
    """Fraction of correct predictions (``"micro"``), or per-class recall averaged as asked."""
    return scores.accuracy(multiclass_confusion_matrix(input, target, num_classes, ignore_index=ignore_index), average)


def multiclass_balanced_accuracy(
    input: Any, target: Any, num_classes: int, *, ignore_index: int | None = -100
) -> Tensor:
    """Mean recall over the classes present in the targets."""
    return scores.balanced_accuracy(multiclass_confusion_matrix(input, target, num_classes, ignore_index=ignore_index))


def multiclass_precision(
    input: Any, target: Any, num_classes: int, *, average: Average = "macro", ignore_index: int | None = -100
) -> Tensor:
    """Precision per class, averaged as asked."""
    confmat = multiclass_confusion_matrix(input, target, num_classes, ignore_index=ignore_index)
    return scores.precision(confmat, average)


def multiclass_recall(
    input: Any, target: Any, num_classes: int, *, average: Average = "macro", ignore_index: int | None = -100
) -> Tensor:
    """Recall per class, averaged as asked."""
    return scores.recall(multiclass_confusion_matrix(input, target, num_classes, ignore_index=ignore_index), average)


def multiclass_specificity(
    input: Any, target: Any, num_classes: int, *, average: Average = "macro", ignore_index: int | None = -100
) -> Tensor:
    """Specificity (true negative rate) per class, averaged as asked."""
    confmat = multiclass_confusion_matrix(input, target, num_classes, ignore_index=ignore_index)
    return scores.specificity(confmat, average)


def multiclass_fbeta_score(
    input: Any,
    target: Any,
    num_classes: int,
    *,
    beta: float = 1.0,
    average: Average = "macro",
    ignore_index: int | None = -100,
) -> Tensor:
    """F-beta score per class, averaged as asked."""
    confmat = multiclass_confusion_matrix(input, target, num_classes, ignore_index=ignore_index)
    return scores.fbeta_score(confmat, beta, average)


def multiclass_f1_score(
    input: Any, target: Any, num_classes: int, *, average: Average = "macro", ignore_index: int | None = -100
) -> Tensor:
    """F1 score per class, averaged as asked."""
    return scores.f1_score(multiclass_confusion_matrix(input, target, num_classes, ignore_index=ignore_index), average)


def multiclass_mcc(input: Any, target: Any, num_classes: int, *, ignore_index: int | None = -100) -> Tensor:
    """Matthews correlation coefficient of the full ``(C, C)`` matrix."""
    confmat = multiclass_confusion_matrix(input, target, num_classes, ignore_index=ignore_index)
    return scores.matthews_corrcoef(confmat)


def _one_vs_rest(
    input: Any, target: Any, num_classes: int, ignore_index: int | None, average: RankingAverage
) -> tuple[Tensor, Tensor, Tensor]:
    input, target = multiclass_inputs(input, target, num_classes)
    if input.ndim != 2:
        raise ValueError(
            f"ranking metrics need class scores of shape (N, {num_classes}), but got labels {tuple(input.shape)}"
        )
    check_labels(target, num_classes, ignore_index, "class labels")
    valid = (target >= 0) & (target < num_classes)
    positive = target.unsqueeze(1) == torch.arange(num_classes, device=target.device)
    mask = valid.unsqueeze(1).expand_as(positive)
    probabilities = to_probabilities(input, dim=-1)
    if average == "micro":
        return probabilities.reshape(-1, 1), positive.reshape(-1, 1), mask.reshape(-1, 1)
    return probabilities, positive, mask


def multiclass_auroc(
    input: Any, target: Any, num_classes: int, *, average: RankingAverage = "macro", ignore_index: int | None = -100
) -> Tensor:
    """One-vs-rest ROC AUC per class (NaN for a class absent from the targets), averaged as asked."""
    probabilities, positive, mask = _one_vs_rest(input, target, num_classes, ignore_index, average)
    values = roc_auc(probabilities, positive, mask)
    return values.squeeze(0) if average == "micro" else average_columns(values, (positive & mask).sum(0), average)


def multiclass_auprc(
    input: Any, target: Any, num_classes: int, *, average: RankingAverage = "macro", ignore_index: int | None = -100
) -> Tensor:
    """One-vs-rest average precision per class, averaged as asked."""
    probabilities, positive, mask = _one_vs_rest(input, target, num_classes, ignore_index, average)
    values = average_precision(probabilities, positive, mask)
    return values.squeeze(0) if average == "micro" else average_columns(values, (positive & mask).sum(0), average)
