r"""``MultiTaskMetrics``: one metric container per task (dataset, head ...), updated and read together.

Each task holds a :class:`GlobalMetrics`, a :class:`StreamMetrics` or a :class:`MetricMeter`
(a bare callable is wrapped in one).  ``value()``, ``batch()`` and ``average()`` return one
entry per task, leaving out tasks that have nothing to report yet (all NaN), plus an
``aggregate`` entry when ``aggregate=`` is set (see :mod:`.aggregate`).

Differences from the reference implementation: a ``str`` payload is rejected instead of being
unpacked into characters, and ``GlobalMetrics`` results are Python floats, so they aggregate
together with stream results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from chanfig import FlatDict
from torch import Tensor

from .aggregate import aggregate, is_nan
from .distributed import all_reduce_sum, reduction_device, world_size
from .global_metrics import GlobalMetrics
from .metric_func import infer_metric_name
from .round_dict import RoundDict
from .stream_metrics import MetricMeter, StreamMetrics

if TYPE_CHECKING:
    from typing_extensions import Self  # only for annotations: no runtime dependency

Aggregate = Literal["macro", "micro", "weighted"] | None
TaskMetrics = GlobalMetrics | StreamMetrics | MetricMeter
_PLACEHOLDER_NAMES = {"", "<lambda>", "__call__"}
_TASK_TYPES = (GlobalMetrics, StreamMetrics, MetricMeter)


def _task_weights(aggregate: Aggregate, weights: Mapping[str, Any] | None) -> dict[str, float] | None:
    if aggregate not in (None, "macro", "micro", "weighted"):
        raise ValueError(f"aggregate must be one of None, 'macro', 'micro', or 'weighted', but got {aggregate!r}")
    if aggregate == "weighted" and weights is None:
        raise ValueError("aggregate_weights is required when aggregate='weighted'")
    if aggregate != "weighted" and weights is not None:
        raise ValueError("aggregate_weights is only supported when aggregate='weighted'")
    if weights is None:
        return None
    checked = {}
    for name, value in weights.items():
        number = value.item() if isinstance(value, Tensor) and value.numel() == 1 else value
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
            raise ValueError(
                f"aggregate weight for task {name!r} must be a non-negative finite scalar, but got {value!r}"
            )
        checked[str(name)] = float(number)
    return checked


class MultiTaskMetrics(FlatDict):
    r"""
    Metric containers by task, updated from one mapping of task payloads.

    Args:
        *args: Mappings of task name to metrics.
        aggregate: ``"macro"``, ``"micro"`` or ``"weighted"`` to add an ``aggregate`` entry.
        aggregate_weights: Task weights for ``aggregate="weighted"``.
        **kwargs: Task metrics by name.

    Examples:
        >>> from danling.metrics.functional import accuracy
        >>> metrics = MultiTaskMetrics(aggregate="macro")
        >>> metrics.dataset1 = StreamMetrics(acc=accuracy)
        >>> metrics.dataset2 = StreamMetrics(acc=accuracy)
        >>> metrics.update({"dataset1": {"input": [0.2, 0.4, 0.6, 0.7], "target": [0, 1, 0, 1]}, "dataset2": ([0.1, 0.4, 0.6, 0.8], [1, 0, 0, 0])})
        >>> f"{metrics:.4f}"
        'dataset1: acc: 0.5000 (0.5000)\ndataset2: acc: 0.2500 (0.2500)'
        >>> metrics.update({"dataset1": ([0.1, 0.4, 0.6, 0.8], [0, 0, 1, 0]), "dataset2": {"input": [0.2, 0.3, 0.6, 0.7], "target": [0, 0, 0, 1]}})
        >>> round(metrics.avg["aggregate"]["acc"], 4)
        0.5625
        >>> metrics.update(dict(loss=""))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: Task loss not found in ...
    """

    def __init__(
        self,
        *args: Mapping[str, Any],
        aggregate: Aggregate = None,
        aggregate_weights: Mapping[str, float | int | Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        weights = _task_weights(aggregate, aggregate_weights)
        self.setattr("_aggregate", aggregate)
        self.setattr("_aggregate_weights", weights)
        super().__init__(*args, **kwargs)

    def set(self, name: Any, task_metrics: Any) -> None:
        if callable(task_metrics) and not isinstance(task_metrics, _TASK_TYPES):
            task_metrics = MetricMeter(task_metrics)  # a bare metric function becomes a one-metric task
        elif not isinstance(task_metrics, _TASK_TYPES):
            raise ValueError(
                f"Expected task_metrics for {name} to be an instance of GlobalMetrics, StreamMetrics, MetricMeter, "
                f"or a callable, but got {type(task_metrics)}"
            )
        if isinstance(task_metrics, MetricMeter):
            task_metrics.output_name = self._metric_output_name(name, task_metrics)
        super().set(name, task_metrics)

    @staticmethod
    def _metric_output_name(task_name: str, meter: MetricMeter) -> str:
        if isinstance(meter.output_name, str) and meter.output_name not in _PLACEHOLDER_NAMES:
            return meter.output_name
        try:
            name = infer_metric_name(meter.metric)
        except ValueError:
            return task_name
        return task_name if name in _PLACEHOLDER_NAMES else name

    def update(self, values: Mapping[str, Mapping[str, Any] | Sequence[Any]]) -> None:
        """Update tasks from ``{task: {"input": ..., "target": ...}}`` or ``{task: (input, target)}``."""
        for task, payload in values.items():
            if task not in self:
                raise ValueError(f"Task {task} not found in {self}")
            if isinstance(payload, Mapping):
                self[task].update(**payload)
            elif isinstance(payload, Sequence) and not isinstance(payload, (str, bytes)):
                self[task].update(*payload)
            else:
                raise ValueError(
                    f"Expected payload for task {task} to be a Mapping or Sequence, but got {type(payload)}"
                )

    def reset(self) -> Self:
        for task_metrics in self.values():
            task_metrics.reset()
        return self

    # Reductions
    def _collect(self, reduction: Literal["value", "batch", "average"]) -> RoundDict:
        outputs: dict[str, RoundDict] = {}
        for name, task_metrics in self.items():
            result = getattr(task_metrics, reduction)()
            if not isinstance(result, Mapping):
                result = {task_metrics.output_name or name: result}
            if not is_nan(result):
                outputs[name] = RoundDict(result)
        collected = RoundDict(outputs)
        if self._aggregate is not None:
            scored = {name: result for name, result in outputs.items() if name != "aggregate"}
            collected["aggregate"] = aggregate(scored, self._weights(scored, reduction))
        return collected

    def _weights(self, outputs: Mapping[str, RoundDict], reduction: str) -> dict[str, Any]:
        if self._aggregate == "macro":
            return dict.fromkeys(outputs, 1.0)
        if self._aggregate == "weighted":
            unknown = sorted(set(self._aggregate_weights) - set(self.keys()))
            if unknown:
                raise ValueError(f"aggregate_weights contains unknown tasks: {unknown!r}")
            missing = [task for task in outputs if task not in self._aggregate_weights]
            if missing:
                raise ValueError(f"aggregate_weights is missing a weight for task {missing[0]!r}")
            return {task: self._aggregate_weights[task] for task in outputs}
        attr = "count" if reduction == "average" else "n"
        return self._sample_weights(outputs, attr, across_ranks=reduction != "value")

    def _sample_weights(self, outputs: Mapping[str, RoundDict], attr: str, across_ranks: bool) -> dict[str, Any]:
        """Per task (per path for stream metrics) the samples behind each result, summed over ranks if asked."""
        counts = {task: getattr(self[task], attr) for task in outputs}
        if not across_ranks or world_size() == 1:
            return counts
        slots = [
            (task, key) for task, count in counts.items() for key in (count if isinstance(count, Mapping) else [None])
        ]
        local = [counts[task] if key is None else counts[task][key] for task, key in slots]
        device = reduction_device(None)
        summed = all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device)).tolist()
        totals: dict[str, Any] = {task: {} if isinstance(count, Mapping) else 0.0 for task, count in counts.items()}
        for (task, key), total in zip(slots, summed):
            if key is None:
                totals[task] = total
            else:
                totals[task][key] = total
        return totals

    def value(self) -> RoundDict:
        return self._collect("value")

    def batch(self) -> RoundDict:
        return self._collect("batch")

    def average(self) -> RoundDict:
        return self._collect("average")

    val = property(lambda self: self.value(), doc="Shorthand for ``value()``: the latest local result.")
    bat = property(lambda self: self.batch(), doc="Shorthand for ``batch()``: the latest step over all ranks.")
    avg = property(lambda self: self.average(), doc="Shorthand for ``average()``: everything so far, all ranks.")

    # Checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {name: task_metrics.state_dict() for name, task_metrics in self.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, task_state in state.items():
            if name not in self:
                raise KeyError(f"state has task {name!r}, which is not in {list(self.keys())}")
            self[name].load_state_dict(task_state)

    def __format__(self, spec: str) -> str:
        return "\n".join(f"{name}: {task_metrics.__format__(spec)}" for name, task_metrics in self.items())
