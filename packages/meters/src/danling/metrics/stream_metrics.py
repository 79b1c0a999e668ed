r"""Streaming metrics: ``MetricMeter`` averages one metric batch by batch, ``StreamMetrics`` several.

A stream meter evaluates its metric on every batch and keeps only running statistics: the
average is the batch-size-weighted mean of per-batch values.  That is exact for metrics that
are means over samples (accuracy, MSE, MAE) and an approximation for the others (AUROC, F1, R²);
use :class:`~danling.metrics.GlobalMetrics` when the dataset-level value matters.

Metric values stay on their device until read, like every :class:`AverageMeter` value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .average_meter import AverageMeter, AverageMeters
from .metric_func import MetricFunc, infer_metric_name, iter_metric_funcs, merge_metric_entries
from .preprocess import base_preprocess, detach
from .state import MetricState, Requirements, collect_requirements


def _normalize_value(value: Any) -> float | Tensor:
    """A metric result as a meter value: empty tensors are NaN, other tensors are detached."""
    if isinstance(value, Tensor):
        if value.numel() == 0:
            return math.nan
        return value.detach()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a metric must return a number or a tensor, but returned {value!r}") from None


class MetricMeter(AverageMeter):
    r"""
    Apply a metric to every batch and average the results, weighted by batch size.

    Args:
        metric: ``metric(input, target)``, or a :class:`MetricFunc` that reads a :class:`MetricState`.
        preprocess: Applied to ``(input, target)`` before the metric; None passes them unchanged.
        device: Device for distributed reductions.
        distributed: Reduce ``bat`` and ``avg`` across ranks when a process group exists.

    The batch size is ``len(input)`` after preprocessing (1 for a 0-d input), or the number of
    counted targets when the metric reads a binary or multiclass confusion matrix.

    Examples:
        >>> import torch
        >>> from danling.metrics.functional import accuracy
        >>> meter = MetricMeter(accuracy)
        >>> meter.update(torch.tensor([0.1, 0.8, 0.6, 0.2]), torch.tensor([0, 1, 0, 0]))
        >>> meter.val
        0.75
        >>> meter.avg
        0.75
        >>> meter.update(torch.tensor([0.1, 0.7, 0.3, 0.2, 0.8, 0.4]), torch.tensor([0, 1, 1, 0, 0, 1]))
        >>> meter.val
        0.5
        >>> meter.avg
        0.6
        >>> meter.sum
        6.0
        >>> meter.count
        10
        >>> meter.reset()
        MetricMeter(accuracy)
        >>> meter.val
        nan
        >>> meter.avg
        nan
    """

    output_name: str | None = None  # the result's name inside MultiTaskMetrics

    def __init__(
        self,
        metric: Callable | MetricFunc,
        *,
        preprocess: Callable | None = None,
        device: torch.device | str | None = None,
        distributed: bool = True,
    ) -> None:
        if not callable(metric):
            raise ValueError(f"Expected metric to be callable, but got {type(metric)}")
        self.metric, self.preprocess = metric, preprocess
        self._requirements = self._own_requirements()
        super().__init__(device=device, distributed=distributed)

    def _own_requirements(self) -> Requirements | None:
        return collect_requirements([self.metric]) if isinstance(self.metric, MetricFunc) else None

    def update(self, input: Any, target: Any, *, n: int | Tensor | None = None) -> None:  # type: ignore[override]
        """Evaluate the metric on one batch and add the result with weight ``n`` (the batch size by default)."""
        if self.preprocess is not None:
            input, target = self.preprocess(input, target)
        self._update_state(MetricState.build(input, target, self._requirements), n=n)

    def _update_state(self, state: MetricState, *, n: int | Tensor | None = None) -> None:
        if isinstance(self.metric, MetricFunc):
            value = self.metric(state)
        else:
            value = self.metric(state.preds, state.targets)
        AverageMeter.update(self, _normalize_value(value), state.sample_count() if n is None else n)

    def __repr__(self) -> str:
        metric = self.metric
        if isinstance(metric, functools.partial):
            metric = metric.func
        try:
            name = infer_metric_name(metric)
        except ValueError:
            name = type(metric).__name__
        return f"{type(self).__name__}({name})"


class StreamMetrics(AverageMeters):
    r"""
    Several ``MetricMeter``\ s fed by one preprocessing step and one shared :class:`MetricState`.

    Args:
        *metric_funcs: Metrics named after themselves (``__name__`` or ``.name``); lists are flattened.
        preprocess: Applied once per batch before every metric.
        distributed: Reduce ``bat`` and ``avg`` across ranks when a process group exists.
        device: Device for distributed reductions.
        **meters: Metrics or ``MetricMeter``\ s by name; they override positional ones of the same name.

    Meters handed in are adopted: their own preprocess is dropped in favour of the container's,
    and they take its ``device`` and ``distributed`` settings.

    Examples:
        >>> import torch
        >>> from danling.metrics.functional import accuracy
        >>> meters = StreamMetrics(acc=accuracy)
        >>> meters.update([0.1, 0.8, 0.6, 0.2], [0, 1, 0, 0])
        >>> round(meters.val["acc"], 4)
        0.75
        >>> round(meters.avg["acc"], 4)
        0.75
        >>> meters["acc"].update(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]))
        >>> meters.count["acc"]
        6
        >>> meters.update(dict(loss=""))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        TypeError: ...update() missing 1 required positional argument: 'target'
    """

    meter_cls = MetricMeter

    def __init__(
        self,
        *metric_funcs: Callable | MetricFunc,
        preprocess: Callable = base_preprocess,
        distributed: bool = True,
        device: torch.device | str | None = None,
        **meters: Callable | MetricFunc | MetricMeter,
    ) -> None:
        self.setattr("_initializing", True)
        self.setattr("_requirements", Requirements())
        self.setattr("preprocess", preprocess)
        self.setattr("distributed", distributed)
        self.setattr("device", torch.device(device) if device is not None else None)
        positional = []
        for metric in iter_metric_funcs(metric_funcs):
            if not callable(metric):
                raise ValueError(f"Expected metric to be callable, but got {type(metric)}")
            positional.append((infer_metric_name(metric), metric))
        for metric in meters.values():
            if not (isinstance(metric, MetricMeter) or callable(metric)):
                raise ValueError(f"Expected metric to be callable or MetricMeter, but got {type(metric)}")
        try:
            super().__init__(merge_metric_entries(positional, meters))
        finally:
            self.setattr("_initializing", False)
        self._refresh_requirements()

    def _coerce_meter(self, value: Any) -> MetricMeter:
        if isinstance(value, MetricMeter):
            value.preprocess = None
            if self.device is not None:
                value.device = self.device
            value.distributed = self.distributed
            value._requirements = value._own_requirements()
            return value
        if callable(value):
            return MetricMeter(value, preprocess=None, device=self.device, distributed=self.distributed)
        raise ValueError(f"Expected meter to be an instance of {MetricMeter.__name__}, but got {type(value)}")

    def set(self, name: Any, value: Any) -> None:
        super().set(name, value)
        if not self.getattr("_initializing", False):
            self._refresh_requirements()

    def _refresh_requirements(self) -> None:
        funcs = [meter.metric for meter in self.values() if isinstance(meter.metric, MetricFunc)]
        self.setattr("_requirements", collect_requirements(funcs))

    def update(self, input: Any, target: Any, *, n: int | Tensor | None = None) -> None:  # type: ignore[override]
        """Preprocess one batch once and update every meter from the same state."""
        input, target = self.preprocess(input, target)
        state = MetricState.build(detach(input), detach(target), self._requirements)
        count = state.sample_count() if n is None else n
        for meter in self.values():
            meter._update_state(state, n=count)

    def __repr__(self) -> str:
        return f"{type(self).__name__}{tuple(self.keys())}"
