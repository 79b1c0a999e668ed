"""Confusion matrices for binary, multiclass and multilabel classification.

Layouts follow scikit-learn: rows are targets, columns predictions.

- binary: ``(2, 2)`` ``[[tn, fp], [fn, tp]]``;
- multiclass: ``(C, C)``;
- multilabel: ``(L, 2, 2)``, one binary matrix per label.

Entries whose target equals ``ignore_index`` (or, on accelerators, lies outside the valid range)
get weight zero instead of being removed, so building a matrix never synchronises with the host.

    >>> binary_confusion_matrix(torch.tensor([0.1, 0.8, 0.6, 0.2]), torch.tensor([0, 1, 0, -100]))
    tensor([[1, 1],
            [0, 1]])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .inputs import binary_inputs, check_labels, multiclass_inputs, multilabel_inputs, to_probabilities


def _histogram(index: Tensor, valid: Tensor, size: int) -> Tensor:
    """Counts of ``index`` values in ``[0, size)``, counting only entries where ``valid`` holds."""
    index = index.reshape(-1)
    valid = valid.reshape(-1)
    if index.device.type == "cpu":
        # bincount is the fastest host histogram; invalid entries go to an overflow bin.
        return torch.bincount(torch.where(valid, index, size), minlength=size + 1)[:size]
    # bincount must read the maximum on the host; scatter_add_ stays on the device.
    counts = torch.zeros(size, dtype=torch.int64, device=index.device)
    return counts.scatter_add_(0, torch.where(valid, index, 0), valid.to(torch.int64))


def binary_confusion_matrix(
    input: Any, target: Any, *, threshold: float = 0.5, ignore_index: int | None = -100
) -> Tensor:
    """``(2, 2)`` confusion matrix of scores (probabilities or logits) thresholded at ``threshold``."""
    input, target = binary_inputs(input, target)
    check_labels(target, 2, ignore_index, "binary labels")
    preds = (to_probabilities(input) > threshold).to(torch.int64)
    target = target.to(torch.int64)
    valid = (target >= 0) & (target <= 1)
    return _histogram(target * 2 + preds, valid, 4).reshape(2, 2)


def multiclass_confusion_matrix(
    input: Any, target: Any, num_classes: int, *, ignore_index: int | None = -100
) -> Tensor:
    """``(C, C)`` confusion matrix of class scores ``(N, C)`` (argmax) or predicted labels ``(N,)``."""
    _check_positive(num_classes, "num_classes")
    input, target = multiclass_inputs(input, target, num_classes)
    check_labels(target, num_classes, ignore_index, "class labels")
    if input.ndim == 2:
        preds = input.argmax(-1)
    else:
        check_labels(input, num_classes, None, "predicted labels")
        preds = input.to(torch.int64)
    target = target.to(torch.int64)
    valid = (target >= 0) & (target < num_classes) & (preds >= 0) & (preds < num_classes)
    return _histogram(target * num_classes + preds, valid, num_classes * num_classes).reshape(num_classes, num_classes)


def multilabel_confusion_matrix(
    input: Any, target: Any, num_labels: int, *, threshold: float = 0.5, ignore_index: int | None = -100
) -> Tensor:
    """``(L, 2, 2)`` confusion matrices, one per label, of scores thresholded at ``threshold``."""
    _check_positive(num_labels, "num_labels")
    input, target = multilabel_inputs(input, target, num_labels)
    check_labels(target, 2, ignore_index, "multilabel targets")
    preds = (to_probabilities(input) > threshold).to(torch.int64)
    target = target.to(torch.int64)
    valid = (target >= 0) & (target <= 1)
    label = torch.arange(num_labels, device=target.device).expand_as(target)
    return _histogram(label * 4 + target * 2 + preds, valid, num_labels * 4).reshape(num_labels, 2, 2)


def _check_positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, but got {value!r}")
