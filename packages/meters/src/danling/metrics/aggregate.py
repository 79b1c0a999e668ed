"""Combine per-task results of ``MultiTaskMetrics`` into one ``aggregate`` entry.

Results are matched by their exact path inside each task (``"acc"``, or ``"head.acc"`` for
nested outputs).  For every path, tasks whose value there is NaN are left out and the rest are
averaged with a weight per task:

- ``"macro"``: every task weighs the same;
- ``"micro"``: a task weighs its number of samples (``n`` for the latest step, ``count`` for the
  running average, summed over ranks), so the aggregate is the pooled per-sample mean;
- ``"weighted"``: the task weights given at construction.

Tasks of weight zero are left out; a path no task can score is NaN.

    >>> aggregate({"a": {"acc": 0.5}, "b": {"acc": 1.0, "f1": 0.25}}, {"a": 1.0, "b": 3.0}).dict()
    {'acc': 0.875, 'f1': 0.25}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .round_dict import RoundDict


def is_nan(value: Any) -> bool:
    """Whether a result holds no number: NaN, an all-NaN tensor, or an empty mapping or tensor."""
    if isinstance(value, Tensor):
        return value.numel() == 0 or bool(value.isnan().all())
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, Mapping):
        return all(is_nan(item) for item in value.values())
    return False


def leaves(result: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every non-mapping value of a nested result, keyed by its dotted path."""
    flat: dict[str, Any] = {}
    for key, value in result.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(leaves(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _weighted_mean(path: str, entries: list[tuple[Any, float]]) -> float | Tensor:
    tensors = [isinstance(value, Tensor) and value.numel() != 1 for value, _ in entries]
    if any(tensors) and not all(tensors):
        raise ValueError(f"metric '{path}' mixes scalar and tensor outputs across tasks")
    total = sum(weight for _, weight in entries)
    if not all(tensors):
        return sum(float(value) * weight for value, weight in entries) / total
    shapes = {tuple(value.shape) for value, _ in entries}
    if len(shapes) > 1:
        raise ValueError(f"metric '{path}' has inconsistent tensor shapes across tasks: {sorted(shapes)}")
    stacked = torch.stack([value.to(torch.float64) for value, _ in entries])
    weights = torch.tensor([weight for _, weight in entries], dtype=torch.float64, device=stacked.device)
    return (stacked * weights.reshape(-1, *([1] * (stacked.ndim - 1)))).nansum(0) / total


def aggregate(
    outputs: Mapping[str, Mapping[str, Any]], weights: Mapping[str, float | Mapping[str, float]]
) -> RoundDict:
    """Weighted mean of every result path over tasks; ``weights[task]`` is a number or a per-path mapping."""
    by_path: dict[str, list[tuple[Any, float]]] = {}
    for task, result in outputs.items():
        for path, value in leaves(result).items():
            weight = weights[task]
            if isinstance(weight, Mapping):
                if path not in weight:
                    raise ValueError(f"sample weight is missing a weight for metric '{task}.{path}'")
                weight = weight[path]
            by_path.setdefault(path, [])
            if float(weight) > 0 and not is_nan(value):
                by_path[path].append((value, float(weight)))
    return RoundDict(
        {path: _weighted_mean(path, entries) if entries else math.nan for path, entries in by_path.items()}
    )
