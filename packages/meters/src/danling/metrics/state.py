"""What a batch of predictions must provide to a set of metrics, and the shared state itself.

Metric descriptors (:class:`~danling.metrics.metric_func.MetricFunc`) declare their inputs:
the raw predictions and targets, or a confusion matrix described by a :class:`ConfmatSpec`.
Containers merge these declarations into :class:`Requirements` once, and build one
:class:`MetricState` per batch, so a confusion matrix is computed once however many metrics
read it.

    >>> spec = ConfmatSpec("binary")
    >>> state = MetricState.build(torch.tensor([0.2, 0.9]), torch.tensor([0, 1]), Requirements(confmat=spec))
    >>> state.confmat
    tensor([[1, 0],
            [0, 1]])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from .functional.confusion import binary_confusion_matrix, multiclass_confusion_matrix, multilabel_confusion_matrix

if TYPE_CHECKING:
    from .metric_func import MetricFunc


@dataclass(frozen=True)
class ConfmatSpec:
    """How to build a confusion matrix: the task, its size, the decision threshold and the ignored label."""

    task: Literal["binary", "multiclass", "multilabel"]
    num_classes: int | None = None
    num_labels: int | None = None
    threshold: float = 0.5
    ignore_index: int | None = -100

    def __post_init__(self) -> None:
        if self.task not in ("binary", "multiclass", "multilabel"):
            raise ValueError(
                f"confusion matrix task must be 'binary', 'multiclass' or 'multilabel', but got {self.task!r}"
            )
        if self.task == "multiclass" and self.num_classes is None:
            raise ValueError("a multiclass confusion matrix needs num_classes")
        if self.task == "multilabel" and self.num_labels is None:
            raise ValueError("a multilabel confusion matrix needs num_labels")

    @property
    def shape(self) -> tuple[int, ...]:
        if self.task == "multiclass":
            return (self.num_classes, self.num_classes)
        if self.task == "multilabel":
            return (self.num_labels, 2, 2)
        return (2, 2)

    def compute(self, preds: Any, targets: Any) -> Tensor:
        """The confusion matrix of one batch."""
        if self.task == "multiclass":
            return multiclass_confusion_matrix(preds, targets, self.num_classes, ignore_index=self.ignore_index)
        if self.task == "multilabel":
            return multilabel_confusion_matrix(
                preds, targets, self.num_labels, threshold=self.threshold, ignore_index=self.ignore_index
            )
        return binary_confusion_matrix(preds, targets, threshold=self.threshold, ignore_index=self.ignore_index)

    def empty(self, device: torch.device | str | None = None) -> Tensor:
        """A matrix of zeros, as for a batch without samples."""
        return torch.zeros(self.shape, dtype=torch.int64, device=device)


@dataclass(frozen=True)
class Requirements:
    """The union of what a set of metrics reads: raw predictions and targets, a confusion matrix, or both."""

    preds_targets: bool = False
    confmat: ConfmatSpec | None = None


def collect_requirements(metric_funcs: Iterable[MetricFunc], *, require_nonempty: bool = False) -> Requirements:
    """Merge the declarations of ``metric_funcs``; two different confusion matrices are a conflict."""
    metric_funcs = list(metric_funcs)
    if require_nonempty and not metric_funcs:
        raise ValueError("At least one metric function is required.")
    preds_targets = False
    confmat: ConfmatSpec | None = None
    for func in metric_funcs:
        preds_targets |= func.confmat is None
        if func.confmat is not None:
            if confmat is not None and func.confmat != confmat:
                raise ValueError(f"Conflicting confusion matrix requirements: {confmat} vs {func.confmat}")
            confmat = func.confmat
    return Requirements(preds_targets=preds_targets, confmat=confmat)


@dataclass
class MetricState:
    """One batch (or a whole dataset) as the metrics see it."""

    preds: Any
    targets: Any
    confmat: Tensor | None = None

    @classmethod
    def build(cls, preds: Any, targets: Any, requirements: Requirements | None) -> MetricState:
        """A state for ``preds`` and ``targets`` with the confusion matrix computed if required."""
        confmat = None
        if requirements is not None and requirements.confmat is not None:
            confmat = requirements.confmat.compute(preds, targets)
        return cls(preds, targets, confmat)

    def sample_count(self) -> int | Tensor:
        """Samples in the batch: the matrix total for binary/multiclass matrices, else ``len(preds)``.

        The matrix total leaves out targets equal to ``ignore_index`` and stays on the device.
        """
        if self.confmat is not None and self.confmat.ndim == 2:
            return self.confmat.sum()
        try:
            return len(self.preds)
        except TypeError:  # a 0-d tensor or a plain number is one sample
            return 1
