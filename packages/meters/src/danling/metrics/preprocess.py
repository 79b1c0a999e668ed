"""Preprocessing that metric containers apply once per batch, before any metric runs.

``base_preprocess`` is the default of ``StreamMetrics`` and ``GlobalMetrics``: it turns lists
into tensors, NestedTensors into their packed real elements (padding is never counted), and
squeezes both sides when they hold the same number of elements.  The task-specific functions
also bring predictions and targets to the canonical shapes of :mod:`.functional.inputs` and map
logits to probabilities, so a ``GlobalMetrics`` can concatenate batches of any sequence length.
The factories bind ``num_classes`` / ``num_labels`` / ``num_outputs`` with ``functools.partial``.

    >>> import torch
    >>> preds, targets = base_preprocess([[0.1], [0.8]], [0, 1])
    >>> preds.shape, targets.shape
    (torch.Size([2]), torch.Size([2]))
    >>> preds, targets = preprocess_binary(torch.tensor([[-2.0, 3.0]]), torch.tensor([[0, 1]]))
    >>> preds
    tensor([0.1192, 0.9526])
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .functional.inputs import (
    as_tensors,
    binary_inputs,
    check_no_nan_targets,
    is_nested_tensor,
    multiclass_inputs,
    multilabel_inputs,
    regression_inputs,
    to_probabilities,
)


def base_preprocess(input: Any, target: Any) -> tuple[Tensor, Tensor]:
    """Tensors from lists and NestedTensors; both squeezed when their element counts match."""
    input, target = as_tensors(input, target)
    if input.numel() == target.numel():
        input, target = input.squeeze(), target.squeeze()
    return input, target


def preprocess_binary(input: Any, target: Any) -> tuple[Tensor, Tensor]:
    """Scores ``(N,)`` as probabilities and targets ``(N,)``."""
    input, target = binary_inputs(input, target)
    check_no_nan_targets(target)
    return to_probabilities(input), target


def preprocess_multiclass(input: Any, target: Any, num_classes: int) -> tuple[Tensor, Tensor]:
    """Class probabilities ``(N, C)`` (or labels ``(N,)``) and targets ``(N,)``."""
    input, target = multiclass_inputs(input, target, num_classes)
    check_no_nan_targets(target)
    return (to_probabilities(input, dim=-1) if input.ndim == 2 else input), target


def preprocess_multilabel(input: Any, target: Any, num_labels: int) -> tuple[Tensor, Tensor]:
    """Label probabilities and targets, both ``(N, L)``."""
    input, target = multilabel_inputs(input, target, num_labels)
    check_no_nan_targets(target)
    return to_probabilities(input), target


def preprocess_regression(input: Any, target: Any, num_outputs: int = 1) -> tuple[Tensor, Tensor]:
    """Predictions and targets ``(N,)`` for one output or ``(N, D)`` for ``D`` outputs.

    NaN targets pass through; the regression metrics reject or mask them (``ignore_nan``).
    """
    input, target = regression_inputs(input, target)
    outputs = 1 if input.ndim == 1 else input.shape[-1]
    if outputs != num_outputs:
        raise ValueError(
            f"expected {num_outputs} regression output(s), but got input {tuple(input.shape)} and target {tuple(target.shape)}"
        )
    if num_outputs == 1 and input.ndim == 2:
        input, target = input.squeeze(-1), target.squeeze(-1)
    return input, target


def detach(value: Any) -> Any:
    """``value.detach()`` for tensors and NestedTensors; anything else unchanged."""
    if isinstance(value, Tensor) or is_nested_tensor(value):
        return value.detach()
    return value


__all__ = [
    "base_preprocess",
    "detach",
    "preprocess_binary",
    "preprocess_multiclass",
    "preprocess_multilabel",
    "preprocess_regression",
]
