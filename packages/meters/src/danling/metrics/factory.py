"""Ready-made metric sets: ``binary_metrics()``, ``multiclass_metrics(C)``, ``multilabel_metrics(L)``, ``regression_metrics(D)``.

Each factory returns a container with the usual metrics of its task and the matching
preprocessing.  ``mode="global"`` (the default) gives a :class:`GlobalMetrics`, exact over the
whole dataset; ``mode="stream"`` a :class:`StreamMetrics`, which averages per-batch values in
constant memory (exact only for accuracy-like metrics).  ``metrics=`` picks a subset by name.
The ``*_metric_funcs`` functions return the descriptors themselves, to mix into your own
containers.

    >>> import torch
    >>> metrics = multiclass_metrics(num_classes=3, metrics=["acc", "f1", "auroc"])
    >>> metrics.update(torch.tensor([[2.0, 0.1, 0.3], [0.2, 1.5, 0.1], [0.1, 0.2, 3.0]]), torch.tensor([0, 1, 1]))
    >>> metrics
    GlobalMetrics('acc', 'f1', 'auroc')
    >>> round(metrics.avg, 4).dict()  # class 2 never occurs, so AUROC averages classes 0 (1.0) and 1 (0.5)
    {'acc': 0.6667, 'f1': 0.5556, 'auroc': 0.75}
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Literal

import torch

from .functional import binary, multiclass, multilabel, regression, scores
from .global_metrics import GlobalMetrics
from .metric_func import MetricFunc
from .preprocess import preprocess_binary, preprocess_multiclass, preprocess_multilabel, preprocess_regression
from .state import ConfmatSpec
from .stream_metrics import StreamMetrics

Mode = Literal["global", "stream"]
Average = Literal["micro", "macro", "weighted"]


def binary_metric_funcs(*, threshold: float = 0.5, ignore_index: int | None = -100) -> dict[str, MetricFunc]:
    """acc, balanced_acc, precision, recall, f1, mcc (one confusion matrix), auroc, auprc."""
    spec = ConfmatSpec("binary", threshold=threshold, ignore_index=ignore_index)
    return {
        "acc": MetricFunc(scores.accuracy, name="acc", confmat=spec),
        "balanced_acc": MetricFunc(scores.balanced_accuracy, name="balanced_acc", confmat=spec),
        "precision": MetricFunc(scores.precision, name="precision", confmat=spec),
        "recall": MetricFunc(scores.recall, name="recall", confmat=spec),
        "f1": MetricFunc(scores.f1_score, name="f1", confmat=spec),
        "mcc": MetricFunc(scores.matthews_corrcoef, name="mcc", confmat=spec),
        "auroc": MetricFunc(binary.binary_auroc, name="auroc", ignore_index=ignore_index),
        "auprc": MetricFunc(binary.binary_auprc, name="auprc", ignore_index=ignore_index),
    }


def multiclass_metric_funcs(
    num_classes: int, *, average: Average = "macro", ignore_index: int | None = -100
) -> dict[str, MetricFunc]:
    """acc (fraction correct), balanced_acc, precision, recall, f1, mcc, auroc, auprc (``average`` over classes)."""
    spec = ConfmatSpec("multiclass", num_classes=num_classes, ignore_index=ignore_index)
    ranking = {"num_classes": num_classes, "average": average, "ignore_index": ignore_index}
    return {
        "acc": MetricFunc(scores.accuracy, name="acc", confmat=spec),
        "balanced_acc": MetricFunc(scores.balanced_accuracy, name="balanced_acc", confmat=spec),
        "precision": MetricFunc(scores.precision, name="precision", confmat=spec, average=average),
        "recall": MetricFunc(scores.recall, name="recall", confmat=spec, average=average),
        "f1": MetricFunc(scores.f1_score, name="f1", confmat=spec, average=average),
        "mcc": MetricFunc(scores.matthews_corrcoef, name="mcc", confmat=spec),
        "auroc": MetricFunc(multiclass.multiclass_auroc, name="auroc", **ranking),
        "auprc": MetricFunc(multiclass.multiclass_auprc, name="auprc", **ranking),
    }


def multilabel_metric_funcs(
    num_labels: int, *, average: Average = "macro", threshold: float = 0.5, ignore_index: int | None = -100
) -> dict[str, MetricFunc]:
    """acc (label-wise), precision, recall, f1, mcc, auroc, auprc (``average`` over labels)."""
    spec = ConfmatSpec("multilabel", num_labels=num_labels, threshold=threshold, ignore_index=ignore_index)
    accuracy_average = "micro" if average == "micro" else "macro"
    ranking = {"num_labels": num_labels, "average": average, "ignore_index": ignore_index}
    return {
        "acc": MetricFunc(scores.accuracy, name="acc", confmat=spec, average=accuracy_average),
        "precision": MetricFunc(scores.precision, name="precision", confmat=spec, average=average),
        "recall": MetricFunc(scores.recall, name="recall", confmat=spec, average=average),
        "f1": MetricFunc(scores.f1_score, name="f1", confmat=spec, average=average),
        "mcc": MetricFunc(scores.matthews_corrcoef, name="mcc", confmat=spec),
        "auroc": MetricFunc(multilabel.multilabel_auroc, name="auroc", **ranking),
        "auprc": MetricFunc(multilabel.multilabel_auprc, name="auprc", **ranking),
    }


def regression_metric_funcs(*, ignore_nan: bool = False) -> dict[str, MetricFunc]:
    """mse, rmse, mae, r2, pearson, spearman (each output scored, then averaged)."""
    functions = {
        "mse": regression.mse,
        "rmse": regression.rmse,
        "mae": regression.mae,
        "r2": regression.r2_score,
        "pearson": regression.pearson,
        "spearman": regression.spearman,
    }
    return {name: MetricFunc(fn, name=name, ignore_nan=ignore_nan) for name, fn in functions.items()}


def _select(funcs: dict[str, MetricFunc], metrics: Iterable[str] | None) -> dict[str, MetricFunc]:
    if metrics is None:
        return funcs
    metrics = list(metrics)
    unknown = [name for name in metrics if name not in funcs]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(funcs)}")
    return {name: funcs[name] for name in metrics}


def _build(
    funcs: dict[str, MetricFunc], preprocess, mode: Mode, distributed: bool, device: torch.device | str | None
) -> GlobalMetrics | StreamMetrics:
    if mode == "global":
        return GlobalMetrics(preprocess=preprocess, distributed=distributed, device=device, **funcs)
    if mode == "stream":
        return StreamMetrics(preprocess=preprocess, distributed=distributed, device=device, **funcs)
    raise ValueError(f"mode must be 'global' or 'stream', but got {mode!r}")


def binary_metrics(
    *,
    mode: Mode = "global",
    metrics: Iterable[str] | None = None,
    threshold: float = 0.5,
    ignore_index: int | None = -100,
    distributed: bool = True,
    device: torch.device | str | None = None,
) -> GlobalMetrics | StreamMetrics:
    """A container of binary classification metrics (see ``binary_metric_funcs``)."""
    funcs = _select(binary_metric_funcs(threshold=threshold, ignore_index=ignore_index), metrics)
    return _build(funcs, preprocess_binary, mode, distributed, device)


def multiclass_metrics(
    num_classes: int,
    *,
    mode: Mode = "global",
    metrics: Iterable[str] | None = None,
    average: Average = "macro",
    ignore_index: int | None = -100,
    distributed: bool = True,
    device: torch.device | str | None = None,
) -> GlobalMetrics | StreamMetrics:
    """A container of multiclass metrics over ``num_classes`` classes (see ``multiclass_metric_funcs``)."""
    funcs = _select(multiclass_metric_funcs(num_classes, average=average, ignore_index=ignore_index), metrics)
    preprocess = functools.partial(preprocess_multiclass, num_classes=num_classes)
    return _build(funcs, preprocess, mode, distributed, device)


def multilabel_metrics(
    num_labels: int,
    *,
    mode: Mode = "global",
    metrics: Iterable[str] | None = None,
    average: Average = "macro",
    threshold: float = 0.5,
    ignore_index: int | None = -100,
    distributed: bool = True,
    device: torch.device | str | None = None,
) -> GlobalMetrics | StreamMetrics:
    """A container of multilabel metrics over ``num_labels`` labels (see ``multilabel_metric_funcs``)."""
    funcs = multilabel_metric_funcs(num_labels, average=average, threshold=threshold, ignore_index=ignore_index)
    preprocess = functools.partial(preprocess_multilabel, num_labels=num_labels)
    return _build(_select(funcs, metrics), preprocess, mode, distributed, device)


def regression_metrics(
    num_outputs: int = 1,
    *,
    mode: Mode = "global",
    metrics: Iterable[str] | None = None,
    ignore_nan: bool = False,
    distributed: bool = True,
    device: torch.device | str | None = None,
) -> GlobalMetrics | StreamMetrics:
    """A container of regression metrics for ``num_outputs`` outputs (see ``regression_metric_funcs``)."""
    funcs = _select(regression_metric_funcs(ignore_nan=ignore_nan), metrics)
    preprocess = functools.partial(preprocess_regression, num_outputs=num_outputs)
    return _build(funcs, preprocess, mode, distributed, device)
