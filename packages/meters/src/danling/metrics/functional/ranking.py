"""Ranking metrics (ROC AUC, average precision) for many columns at once.

Each column of ``scores`` ``(N, K)`` is an independent binary problem with its own positives and
weights.  One sort along dim 0 ranks every column; ties are resolved with running maxima and
minima of group boundaries, so there is no Python loop over columns and no host-device sync
(the number of distinct scores never has to be known on the host).

- ROC AUC is the Mann-Whitney statistic: for every negative, the weight of positives scored
  strictly higher plus half of those tied with it, over ``positives * negatives``.
- Average precision is scikit-learn's step-wise area: every positive adds its share of recall times
  the precision at the lowest score of its tie group.

A column without positives (or, for ROC AUC, without negatives) has no defined value: NaN.

    >>> scores = torch.tensor([[0.1], [0.4], [0.35], [0.8]])
    >>> positive = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    >>> roc_auc(scores, positive)
    tensor([0.7500], dtype=torch.float64)
    >>> average_precision(scores, positive)
    tensor([0.8333], dtype=torch.float64)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

RankingAverage = Literal["micro", "macro", "weighted"] | None


def tie_groups(sorted_scores: Tensor) -> tuple[Tensor, Tensor]:
    """For each position of columns sorted along dim 0, the first and last row of its run of equal values."""
    rows = sorted_scores.shape[0]
    index = torch.arange(rows, device=sorted_scores.device).unsqueeze(1).expand_as(sorted_scores)
    starts = torch.ones_like(sorted_scores, dtype=torch.bool)
    starts[1:] = sorted_scores[1:] != sorted_scores[:-1]
    ends = torch.ones_like(starts)
    ends[:-1] = starts[1:]
    first = torch.where(starts, index, 0).cummax(0).values
    last = torch.where(ends, index, rows - 1).flip(0).cummin(0).values.flip(0)
    return first, last


def _ranked(scores: Tensor, positive: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Positive and negative weights sorted by descending score, with the tie groups of every position."""
    if scores.shape != positive.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and positive must both have shape (N, K), but got {tuple(scores.shape)} and {tuple(positive.shape)}"
        )
    positive = positive.to(torch.float64)
    weight = torch.ones_like(positive) if weight is None else weight.to(torch.float64)
    sorted_scores, order = scores.sort(dim=0, descending=True)
    positive_weight = (positive * weight).gather(0, order)
    negative_weight = ((1.0 - positive) * weight).gather(0, order)
    first, last = tie_groups(sorted_scores)
    return positive_weight, negative_weight, first, last


def roc_auc(scores: Tensor, positive: Tensor, weight: Tensor | None = None) -> Tensor:
    """Area under the ROC curve of every column; ``weight`` 0 leaves an entry out."""
    positive_weight, negative_weight, first, last = _ranked(scores, positive, weight)
    cumulative = positive_weight.cumsum(0)
    above = cumulative.gather(0, first) - positive_weight.gather(0, first)
    tied = cumulative.gather(0, last) - above
    wins = (negative_weight * (above + 0.5 * tied)).sum(0)
    return wins / (positive_weight.sum(0) * negative_weight.sum(0))


def average_precision(scores: Tensor, positive: Tensor, weight: Tensor | None = None) -> Tensor:
    """Average precision (area under the precision-recall curve) of every column."""
    positive_weight, negative_weight, _, last = _ranked(scores, positive, weight)
    true_positives = positive_weight.cumsum(0).gather(0, last)
    predicted = true_positives + negative_weight.cumsum(0).gather(0, last)
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1e-300), 0.0)
    return (positive_weight * precision).sum(0) / positive_weight.sum(0)


def average_columns(values: Tensor, support: Tensor, average: RankingAverage) -> Tensor:
    """Average per-column values: ``"macro"`` over defined columns, ``"weighted"`` by ``support``."""
    if average is None:
        return values
    if average == "macro":
        return values.nanmean()
    defined = ~values.isnan()
    if average == "weighted":
        support = torch.where(defined, support.to(torch.float64), 0.0)
        return torch.where(defined, values, 0.0).mul(support).sum() / support.sum()
    raise ValueError(f"average must be 'micro', 'macro', 'weighted' or None, but got {average!r}")
