"""Metric math as pure functions of tensors.

- :mod:`.binary`, :mod:`.multiclass`, :mod:`.multilabel`: accuracy, balanced accuracy,
  precision, recall, specificity, F1, F-beta, MCC, AUROC, AUPRC on scores and targets;
- :mod:`.regression`: MSE, RMSE, MAE, R², Pearson, Spearman;
- :mod:`.confusion` builds confusion matrices and :mod:`.scores` turns them into scores, which
  is how the metric containers share one matrix between many metrics;
- :mod:`.ranking`: ROC AUC and average precision for many columns at once;
- :mod:`.inputs`: shape handling (lists, NestedTensors, class dims) and value checks;
- ``accuracy`` dispatches on the task, as used throughout the documentation;
- ``MetricFunc`` and ``MetricState`` (defined in :mod:`danling.metrics.metric_func` and
  :mod:`danling.metrics.state`) are importable from here too, where the documentation's code
  imports them; they load on first access, so the pure functions never import the containers.

    >>> from danling.metrics.functional import accuracy
    >>> accuracy([0.1, 0.8, 0.6, 0.2], [0, 1, 0, 0]).item()
    0.75
"""

from __future__ import annotations

from typing import Any

from . import scores
from .binary import (
    binary_accuracy,
    binary_auprc,
    binary_auroc,
    binary_balanced_accuracy,
    binary_f1_score,
    binary_fbeta_score,
    binary_mcc,
    binary_precision,
    binary_recall,
    binary_specificity,
)
from .confusion import binary_confusion_matrix, multiclass_confusion_matrix, multilabel_confusion_matrix
from .dispatch import accuracy, infer_task
from .multiclass import (
    multiclass_accuracy,
    multiclass_auprc,
    multiclass_auroc,
    multiclass_balanced_accuracy,
    multiclass_f1_score,
    multiclass_fbeta_score,
    multiclass_mcc,
    multiclass_precision,
    multiclass_recall,
    multiclass_specificity,
)
from .multilabel import (
    multilabel_accuracy,
    multilabel_auprc,
    multilabel_auroc,
    multilabel_balanced_accuracy,
    multilabel_f1_score,
    multilabel_fbeta_score,
    multilabel_mcc,
    multilabel_precision,
    multilabel_recall,
    multilabel_specificity,
)
from .ranking import average_precision, roc_auc
from .regression import mae, mse, pearson, r2_score, rmse, spearman

__all__ = [
    "MetricFunc",
    "MetricState",
    "accuracy",
    "average_precision",
    "binary_accuracy",
    "binary_auprc",
    "binary_auroc",
    "binary_balanced_accuracy",
    "binary_confusion_matrix",
    "binary_f1_score",
    "binary_fbeta_score",
    "binary_mcc",
    "binary_precision",
    "binary_recall",
    "binary_specificity",
    "infer_task",
    "mae",
    "mse",
    "multiclass_accuracy",
    "multiclass_auprc",
    "multiclass_auroc",
    "multiclass_balanced_accuracy",
    "multiclass_confusion_matrix",
    "multiclass_f1_score",
    "multiclass_fbeta_score",
    "multiclass_mcc",
    "multiclass_precision",
    "multiclass_recall",
    "multiclass_specificity",
    "multilabel_accuracy",
    "multilabel_auprc",
    "multilabel_auroc",
    "multilabel_balanced_accuracy",
    "multilabel_confusion_matrix",
    "multilabel_f1_score",
    "multilabel_fbeta_score",
    "multilabel_mcc",
    "multilabel_precision",
    "multilabel_recall",
    "multilabel_specificity",
    "pearson",
    "r2_score",
    "rmse",
    "roc_auc",
    "scores",
    "spearman",
]


def __getattr__(name: str) -> Any:
    """``MetricFunc`` and ``MetricState`` on first access (their modules import this package)."""
    if name == "MetricFunc":
        from ..metric_func import MetricFunc

        return MetricFunc
    if name == "MetricState":
        from ..state import MetricState

        return MetricState
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
