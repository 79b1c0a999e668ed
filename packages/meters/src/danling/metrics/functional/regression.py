"""Regression metrics for one or several outputs.

``input`` and ``target`` have shape ``(N,)`` or ``(N, D)``.  With several outputs each is scored
separately and ``average="macro"`` (the default) returns their mean, ``None`` one value per
output, like scikit-learn's ``multioutput="uniform_average"`` / ``"raw_values"``.

NaN targets are an error (checked on CPU, see :mod:`.inputs`) unless ``ignore_nan=True``, which
leaves those entries out; masking is done with weights, so it never synchronises.  All sums run
in float64.

    >>> import torch
    >>> input = torch.tensor([2.5, 0.0, 2.0, 8.0])
    >>> target = torch.tensor([3.0, -0.5, 2.0, 7.0])
    >>> mse(input, target)
    tensor(0.3750, dtype=torch.float64)
    >>> r2_score(input, target)
    tensor(0.9486, dtype=torch.float64)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from .inputs import check_no_nan_targets, regression_inputs
from .ranking import order_keys, tie_groups

RegressionAverage = Literal["macro"] | None


def _columns(input: Any, target: Any, ignore_nan: bool) -> tuple[Tensor, Tensor, Tensor]:
    """float64 ``(N, D)`` predictions, targets (NaN targets zeroed) and weights."""
    input, target = regression_inputs(input, target)
    if not ignore_nan:
        check_no_nan_targets(target)
    input = input.to(torch.float64)
    target = target.to(torch.float64)
    if input.ndim == 1:
        input, target = input.unsqueeze(1), target.unsqueeze(1)
    weight = (~target.isnan()).to(torch.float64) if ignore_nan else torch.ones_like(target)
    return input, target.nan_to_num(0.0) if ignore_nan else target, weight


def _reduce(values: Tensor, average: RegressionAverage) -> Tensor:
    if average == "macro":
        return values.mean()
    if average is None:
        return values
    raise ValueError(f"average must be 'macro' or None, but got {average!r}")


def _weighted_mean(values: Tensor, weight: Tensor) -> Tensor:
    return (values * weight).sum(0) / weight.sum(0)


def mse(input: Any, target: Any, *, average: RegressionAverage = "macro", ignore_nan: bool = False) -> Tensor:
    """Mean squared error."""
    input, target, weight = _columns(input, target, ignore_nan)
    return _reduce(_weighted_mean((input - target).square(), weight), average)


def rmse(input: Any, target: Any, *, average: RegressionAverage = "macro", ignore_nan: bool = False) -> Tensor:
    """Root mean squared error (per output, then averaged)."""
    input, target, weight = _columns(input, target, ignore_nan)
    return _reduce(_weighted_mean((input - target).square(), weight).sqrt(), average)


def mae(input: Any, target: Any, *, average: RegressionAverage = "macro", ignore_nan: bool = False) -> Tensor:
    """Mean absolute error."""
    input, target, weight = _columns(input, target, ignore_nan)
    return _reduce(_weighted_mean((input - target).abs(), weight), average)


def r2_score(input: Any, target: Any, *, average: RegressionAverage = "macro", ignore_nan: bool = False) -> Tensor:
    """Coefficient of determination.

    A constant target scores 1 when predicted exactly and 0 otherwise (scikit-learn's
    ``force_finite``); an output without samples scores NaN.
    """
    input, target, weight = _columns(input, target, ignore_nan)
    target_mean = _weighted_mean(target, weight)
    residual = ((target - input).square() * weight).sum(0)
    total = ((target - target_mean).square() * weight).sum(0)
    score = torch.where(total > 0, 1.0 - residual / total.clamp(min=1e-300), (residual == 0).to(torch.float64))
    return _reduce(torch.where(weight.sum(0) > 0, score, math.nan), average)


def _correlation(x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    """Weighted Pearson correlation of every column; NaN for a constant column."""
    x = x - _weighted_mean(x, weight)
    y = y - _weighted_mean(y, weight)
    covariance = (x * y * weight).sum(0)
    scale = ((x.square() * weight).sum(0) * (y.square() * weight).sum(0)).sqrt()
    return (covariance / scale).clamp(-1.0, 1.0)


def pearson(input: Any, target: Any, *, average: RegressionAverage = "macro", ignore_nan: bool = False) -> Tensor:
    """Pearson correlation coefficient."""
    input, target, weight = _columns(input, target, ignore_nan)
    return _reduce(_correlation(input, target, weight), average)


def _average_ranks(values: Tensor, weight: Tensor) -> Tensor:
    """1-based ranks of every column's weighted entries, ties sharing their mean rank.

    Entries of weight 0 sort after all others, so they never shift the ranks of real entries.
    """
    masked = torch.where(weight > 0, values, math.inf).T  # columns as rows: one sort ranks them all
    sorted_keys, order = order_keys(masked).sort(dim=-1)
    first, last = tie_groups(sorted_keys)
    ranks = (first + last).to(values.dtype) / 2 + 1
    return torch.empty_like(masked).scatter_(-1, order, ranks).T


def spearman(input: Any, target: Any, *, average: RegressionAverage = "macro", ignore_nan: bool = False) -> Tensor:
    """Spearman rank correlation (Pearson correlation of average ranks)."""
    input, target, weight = _columns(input, target, ignore_nan)
    return _reduce(_correlation(_average_ranks(input, weight), _average_ranks(target, weight), weight), average)
