"""Multilabel classification metrics.

``input`` holds one score per label ``(*, L)`` (probabilities or logits), ``target`` 0 or 1 of
the same shape; entries equal to ``ignore_index`` are left out.  Each label is a binary problem;
``average`` is ``"micro"`` (pool all labels), ``"macro"`` (mean over labels), ``"weighted"`` (by
the number of positives) or None (one value per label).  Results are float64 tensors.

``multilabel_accuracy`` is the label-wise accuracy (``"micro"``: one minus the Hamming loss), not
scikit-learn's subset accuracy, which needs every label of a sample right.

    >>> import torch
    >>> input = torch.tensor([[0.9, 0.2], [0.3, 0.8], [0.6, 0.4]])
    >>> target = torch.tensor([[1, 0], [0, 1], [0, 1]])
    >>> multilabel_accuracy(input, target, 2, average=None)
    tensor([0.6667, 0.6667], dtype=torch.float64)
    >>> multilabel_auroc(input, target, 2)
    tensor(1., dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from . import scores
from .confusion import multilabel_confusion_matrix
from .inputs import check_labels, multilabel_inputs, to_probabilities
from .ranking import RankingAverage, average_columns, average_precision, roc_auc
from .scores import Average


def _confmat(input: Any, target: Any, num_labels: int, threshold: float, ignore_index: int | None) -> Tensor:
    return multilabel_confusion_matrix(input, target, num_labels, threshold=threshold, ignore_index=ignore_index)


def multilabel_accuracy(
    input: Any,
    target: Any,
    num_labels: int,
    *,
    threshold: float = 0.5,
    average: Average = "macro",
    ignore_index: int | None = -100,
) -> Tensor:
    """Label-wise accuracy, averaged as asked."""
    return scores.accuracy(_confmat(input, target, num_labels, threshold, ignore_index), average)


def multilabel_balanced_accuracy(
    input: Any, target: Any, num_labels: int, *, threshold: float = 0.5, ignore_index: int | None = -100
) -> Tensor:
    """Balanced accuracy of each label, averaged over labels."""
    return scores.balanced_accuracy(_confmat(input, target, num_labels, threshold, ignore_index))


def multilabel_precision(
    input: Any,
    target: Any,
    num_labels: int,
    *,
    threshold: float = 0.5,
    average: Average = "macro",
    ignore_index: int | None = -100,
) -> Tensor:
    """Precision of each label, averaged as asked."""
    return scores.precision(_confmat(input, target, num_labels, threshold, ignore_index), average)


def multilabel_recall(
    input: Any,
    target: Any,
    num_labels: int,
    *,
    threshold: float = 0.5,
    average: Average = "macro",
    ignore_index: int | None = -100,
) -> Tensor:
    """Recall of each label, averaged as asked."""
    return scores.recall(_confmat(input, target, num_labels, threshold, ignore_index), average)


def multilabel_specificity(
    input: Any,
    target: Any,
    num_labels: int,
    *,
    threshold: float = 0.5,
    average: Average = "macro",
    ignore_index: int | None = -100,
) -> Tensor:
    """Specificity of each label, averaged as asked."""
    return scores.specificity(_confmat(input, target, num_labels, threshold, ignore_index), average)


def multilabel_fbeta_score(
    input: Any,
    target: Any,
    num_labels: int,
    *,
    beta: float = 1.0,
    threshold: float = 0.5,
    average: Average = "macro",
    ignore_index: int | None = -100,
) -> Tensor:
    """F-beta score of each label, averaged as asked."""
    return scores.fbeta_score(_confmat(input, target, num_labels, threshold, ignore_index), beta, average)


def multilabel_f1_score(
    input: Any,
    target: Any,
    num_labels: int,
    *,
    threshold: float = 0.5,
    average: Average = "macro",
    ignore_index: int | None = -100,
) -> Tensor:
    """F1 score of each label, averaged as asked."""
    return scores.f1_score(_confmat(input, target, num_labels, threshold, ignore_index), average)


def multilabel_mcc(
    input: Any, target: Any, num_labels: int, *, threshold: float = 0.5, ignore_index: int | None = -100
) -> Tensor:
    """Matthews correlation coefficient of all label decisions pooled together."""
    return scores.matthews_corrcoef(_confmat(input, target, num_labels, threshold, ignore_index))


def _label_columns(
    input: Any, target: Any, num_labels: int, ignore_index: int | None, average: RankingAverage
) -> tuple[Tensor, Tensor, Tensor]:
    input, target = multilabel_inputs(input, target, num_labels)
    check_labels(target, 2, ignore_index, "multilabel targets")
    probabilities, positive, mask = to_probabilities(input), target == 1, (target == 0) | (target == 1)
    if average == "micro":
        return probabilities.reshape(-1, 1), positive.reshape(-1, 1), mask.reshape(-1, 1)
    return probabilities, positive, mask


def multilabel_auroc(
    input: Any, target: Any, num_labels: int, *, average: RankingAverage = "macro", ignore_index: int | None = -100
) -> Tensor:
    """ROC AUC of each label (NaN for a label with one class only), averaged as asked."""
    probabilities, positive, mask = _label_columns(input, target, num_labels, ignore_index, average)
    values = roc_auc(probabilities, positive, mask)
    return values.squeeze(0) if average == "micro" else average_columns(values, (positive & mask).sum(0), average)


def multilabel_auprc(
    input: Any, target: Any, num_labels: int, *, average: RankingAverage = "macro", ignore_index: int | None = -100
) -> Tensor:
    """Average precision of each label (NaN for a label without positives), averaged as asked."""
    probabilities, positive, mask = _label_columns(input, target, num_labels, ignore_index, average)
    values = average_precision(probabilities, positive, mask)
    return values.squeeze(0) if average == "micro" else average_columns(values, (positive & mask).sum(0), average)
