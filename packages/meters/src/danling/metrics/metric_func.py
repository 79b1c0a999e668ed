"""``MetricFunc``: a metric function together with the inputs it reads.

Containers call a descriptor with a :class:`~danling.metrics.state.MetricState`.  A descriptor
with a ``confmat`` spec reads the shared confusion matrix (``fn(confmat, **kwargs)``); any other
reads the predictions and targets (``fn(preds, targets, **kwargs)``).  Declaring this lets
:class:`~danling.metrics.GlobalMetrics` keep only a confusion matrix when no metric needs the raw
predictions, and lets every container build the matrix once per batch.

    >>> from danling.metrics.functional import binary_auroc, scores
    >>> acc = MetricFunc(scores.accuracy, name="acc", confmat=ConfmatSpec("binary"))
    >>> auroc = MetricFunc(binary_auroc, name="auroc")
    >>> acc, auroc.preds_targets
    (MetricFunc(acc), True)

This module also holds how containers name and merge the metrics they are given.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

from .state import ConfmatSpec, MetricState


class MetricFunc:
    """A metric descriptor: ``fn`` plus what it reads and the keyword arguments it is called with.

    Args:
        fn: ``fn(confmat, **kwargs)`` when ``confmat`` is given, else ``fn(preds, targets, **kwargs)``.
        name: The metric's name in containers; defaults to ``fn.__name__``.
        confmat: The confusion matrix ``fn`` reads, or None to read predictions and targets.
        **kwargs: Passed to ``fn`` on every call (``average``, ``num_classes``, ``ignore_index`` ...).
    """

    def __init__(
        self,
        fn: Callable[..., Tensor | float],
        *,
        name: str | None = None,
        confmat: ConfmatSpec | None = None,
        **kwargs: Any,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"Expected fn to be callable, but got {type(fn)}")
        self.fn = fn
        self.name = name if name is not None else infer_metric_name(fn)
        self.confmat = confmat
        self.kwargs = kwargs

    @property
    def preds_targets(self) -> bool:
        """Whether the metric reads raw predictions and targets."""
        return self.confmat is None

    def __call__(self, state: MetricState) -> Tensor | float:
        if self.confmat is not None:
            confmat = state.confmat if state.confmat is not None else self.confmat.empty()
            return self.fn(confmat, **self.kwargs)
        return self.fn(state.preds, state.targets, **self.kwargs)

    def __repr__(self) -> str:
        return f"MetricFunc({self.name})"


def iter_metric_funcs(metric_funcs: Iterable[Any]) -> Iterable[Any]:
    """Positional metrics, with lists and tuples of metrics flattened one level."""
    for metric in metric_funcs:
        if isinstance(metric, Sequence) and not isinstance(metric, (str, bytes)):
            yield from metric
        else:
            yield metric


def infer_metric_name(metric: Any) -> str:
    """The name of a metric: ``.name`` of a descriptor, ``__name__`` of a function, or of a partial's function."""
    if isinstance(metric, MetricFunc):
        return metric.name
    name = getattr(metric, "__name__", None)
    if isinstance(name, str):
        return name
    name = getattr(metric, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(metric, functools.partial):
        return infer_metric_name(metric.func)
    raise ValueError("Unable to infer metric name from positional metric; pass it as a keyword argument instead.")


def merge_metric_entries(positional: Iterable[tuple[str, Any]], named: Mapping[str, Any]) -> dict[str, Any]:
    """Positional entries in order (the first of a repeated name wins), then named ones, which override."""
    merged: dict[str, Any] = {}
    for name, metric in positional:
        merged.setdefault(name, metric)
    merged.update(named)
    return merged
