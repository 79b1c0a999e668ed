"""``accuracy``: one entry point that picks the binary, multiclass or multilabel metric.

The task comes from ``task`` or, when omitted, from the arguments: ``num_labels`` means
multilabel, ``num_classes`` multiclass, neither binary.  Binary scores are thresholded at
``threshold`` after a sigmoid when they look like logits; targets equal to ``ignore_index`` are
left out.

    >>> accuracy([0.1, 0.8, 0.6, 0.2], [0, 1, 0, 0])
    tensor(0.7500, dtype=torch.float64)
    >>> accuracy([[2.0, 0.1], [0.3, 1.5], [1.0, 0.0]], [0, 1, 1], num_classes=2)
    tensor(0.6667, dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from .binary import binary_accuracy
from .multiclass import multiclass_accuracy
from .multilabel import multilabel_accuracy

Task = Literal["binary", "multiclass", "multilabel"]


def infer_task(task: Task | None, num_classes: int | None, num_labels: int | None) -> Task:
    """The classification task named by ``task`` or implied by ``num_classes`` / ``num_labels``."""
    if task is None:
        if num_labels is not None:
            return "multilabel"
        return "multiclass" if num_classes is not None else "binary"
    if task not in ("binary", "multiclass", "multilabel"):
        raise ValueError(f"task must be 'binary', 'multiclass' or 'multilabel', but got {task!r}")
    if task == "multiclass" and num_classes is None:
        raise ValueError("task='multiclass' needs num_classes")
    if task == "multilabel" and num_labels is None:
        raise ValueError("task='multilabel' needs num_labels")
    return task


def accuracy(
    input: Any,
    target: Any,
    *,
    task: Task | None = None,
    num_classes: int | None = None,
    num_labels: int | None = None,
    threshold: float = 0.5,
    average: Literal["micro", "macro"] | None = "micro",
    ignore_index: int | None = -100,
) -> Tensor:
    """Fraction of correct predictions for the inferred task, as a float64 tensor."""
    task = infer_task(task, num_classes, num_labels)
    if task == "binary":
        return binary_accuracy(input, target, threshold=threshold, ignore_index=ignore_index)
    if task == "multiclass":
        return multiclass_accuracy(input, target, num_classes, average=average, ignore_index=ignore_index)
    return multilabel_accuracy(
        input, target, num_labels, threshold=threshold, average=average, ignore_index=ignore_index
    )
