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
_KEY_TYPES = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def order_keys(values: Tensor) -> Tensor:
    """Integers that sort exactly like ``values``: floats are mapped through their IEEE-754 bits.

    Sorting integers is about a third faster than sorting floats on CPU.  Negative floats have
    their magnitude bits flipped so that larger magnitudes sort lower; ``-0.0`` becomes ``0.0``.
    """
    key_type = _KEY_TYPES.get(values.dtype)
    if key_type is None:
        return values
    bits = (values + 0.0).contiguous().view(key_type)
    return torch.where(bits < 0, bits ^ torch.iinfo(key_type).max, bits)


def tie_groups(sorted_rows: Tensor) -> tuple[Tensor, Tensor]:
    """For each position of rows sorted along the last dim, the first and last index of its run of equal values."""
    length = sorted_rows.shape[-1]
    index = torch.arange(length, device=sorted_rows.device).expand_as(sorted_rows)
    starts = torch.ones_like(sorted_rows, dtype=torch.bool)
    starts[..., 1:] = sorted_rows[..., 1:] != sorted_rows[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, index, 0).cummax(-1).values
    last = torch.where(ends, index, length - 1).flip(-1).cummin(-1).values.flip(-1)
    return first, last


def _ranked(scores: Tensor, positive: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per column (returned as rows ``(K, N)``): positive and negative weights by descending score, and tie groups."""
    if scores.shape != positive.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and positive must both have shape (N, K), but got {tuple(scores.shape)} and {tuple(positive.shape)}"
        )
    # Columns become contiguous rows, so one sort over the last dim ranks all of them.
    sorted_keys, order = order_keys(scores.T).sort(dim=-1, descending=True)
    first, last = tie_groups(sorted_keys)
    positive = positive.T.to(torch.bool).gather(-1, order)
    negative = ~positive
    if mask is not None:
        kept = mask.T.to(torch.bool).gather(-1, order)
        positive, negative = positive & kept, negative & kept
    return positive.to(torch.float64), negative.to(torch.float64), first, last


def roc_auc(scores: Tensor, positive: Tensor, mask: Tensor | None = None) -> Tensor:
    """Area under the ROC curve of every column; entries where ``mask`` is False are left out."""
    positive_weight, negative_weight, first, last = _ranked(scores, positive, mask)
    cumulative = positive_weight.cumsum(-1)
    above = cumulative.gather(-1, first) - positive_weight.gather(-1, first)
    tied = cumulative.gather(-1, last) - above
    wins = (negative_weight * (above + 0.5 * tied)).sum(-1)
    return wins / (positive_weight.sum(-1) * negative_weight.sum(-1))


def average_precision(scores: Tensor, positive: Tensor, mask: Tensor | None = None) -> Tensor:
    """Average precision (area under the precision-recall curve) of every column; ``mask`` as for ``roc_auc``."""
    positive_weight, negative_weight, _, last = _ranked(scores, positive, mask)
    true_positives = positive_weight.cumsum(-1).gather(-1, last)
    predicted = true_positives + negative_weight.cumsum(-1).gather(-1, last)
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1e-300), 0.0)
    return (positive_weight * precision).sum(-1) / positive_weight.sum(-1)


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
