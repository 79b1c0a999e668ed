"""Bring metric inputs into the canonical shapes the metric functions compute on.

Canonical layouts (``N`` samples):

- binary: scores ``(N,)`` and targets ``(N,)``;
- multiclass: scores ``(N, C)`` (or labels ``(N,)``) and targets ``(N,)``;
- multilabel: scores and targets ``(N, L)``;
- regression: predictions and targets ``(N,)`` or ``(N, D)``.

Lists become tensors, and a NestedTensor (``danling.tensors``, optional) becomes the packed
tensor of its real elements, so padding is never counted.  NestedTensor is recognised without
importing it: a NestedTensor instance can only exist once ``danling.tensors`` is imported.

Checks that must read values (NaN targets, labels out of range) run only for CPU tensors: on an
accelerator they would stall the device on every update.  There, ignored and invalid entries are
masked out by weight instead, which never synchronises.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def nested_tensor_class() -> type | None:
    """``danling.tensors.NestedTensor`` if its module has been imported, else None."""
    for name in ("danling.tensors.nested_tensor", "danling.tensors"):
        cls = getattr(sys.modules.get(name), "NestedTensor", None)
        if cls is not None:
            return cls
    return None


def is_nested_tensor(value: Any) -> bool:
    """Whether ``value`` is a ``danling.tensors.NestedTensor``."""
    cls = nested_tensor_class()
    return cls is not None and isinstance(value, cls)


def _to_tensor(value: Any, name: str) -> Any:
    if isinstance(value, Tensor) or is_nested_tensor(value):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            cls = nested_tensor_class()
            if cls is None:
                raise ValueError(
                    f"{name} is a ragged sequence; install danling-nestedtensor (and import danling.tensors) "
                    f"to use ragged inputs, or pad it"
                ) from None
            return cls(value)
    if isinstance(value, (int, float, bool)):
        return torch.as_tensor(value)
    raise TypeError(f"Unsupported {name} type: {type(value)}; expected a Tensor, NestedTensor or sequence")


def _align_to_nested(nested: Any, dense: Tensor) -> Tensor:
    """The entries of a padded ``dense`` tensor that line up with the real elements of ``nested``, packed.

    A ``dense`` tensor of the NestedTensor's padded shape goes through ``nested_like``; one without
    the trailing class dim (labels for class scores) is read through the padding ``mask``.
    """
    if dense.ndim == nested.dim():
        return nested.nested_like(dense, strict=False).concat
    mask = nested.mask if not nested.mask_value else ~nested.mask
    if dense.shape != mask.shape:
        raise ValueError(
            f"cannot align a padded tensor of shape {tuple(dense.shape)} with a NestedTensor of padded shape "
            f"{tuple(nested.shape)}; pass both as NestedTensors"
        )
    return dense[mask.to(dense.device)]


def as_tensors(input: Any, target: Any) -> tuple[Tensor, Tensor]:
    """Convert ``input`` and ``target`` to plain tensors; NestedTensors become their packed elements.

    A plain tensor paired with a NestedTensor is read through the NestedTensor's layout, so padded
    positions of the plain tensor are dropped as well.
    """
    input, target = _to_tensor(input, "input"), _to_tensor(target, "target")
    input_nested, target_nested = is_nested_tensor(input), is_nested_tensor(target)
    if input_nested and target_nested:
        return input.concat, target.concat
    if input_nested:
        return input.concat, _align_to_nested(input, target)
    if target_nested:
        return _align_to_nested(target, input), target.concat
    return input, target


def check_same_length(input: Tensor, target: Tensor) -> None:
    if input.shape[:1] != target.shape[:1]:
        raise ValueError(
            f"input and target must have the same number of samples, but got shapes "
            f"{tuple(input.shape)} and {tuple(target.shape)}"
        )


def check_no_nan_targets(target: Tensor) -> None:
    """Reject NaN targets (CPU tensors only; see the module notes)."""
    if target.is_floating_point() and target.device.type == "cpu" and torch.isnan(target).any():
        raise ValueError(f"target contains NaN values: {target.flatten()[:8].tolist()} ...")


def check_labels(target: Tensor, upper: int, ignore_index: int | None, what: str) -> None:
    """Reject labels outside ``[0, upper)`` other than ``ignore_index`` (CPU tensors only)."""
    if target.device.type != "cpu":
        return
    check_no_nan_targets(target)
    bad = (target < 0) | (target >= upper)
    if target.is_floating_point():
        bad |= target != target.round()
    if ignore_index is not None:
        bad &= target != ignore_index
    if bad.any():
        values = sorted(set(target[bad].tolist()))[:8]
        raise ValueError(f"target has {what} outside [0, {upper}) (ignore_index={ignore_index}): {values}")


def binary_inputs(input: Any, target: Any) -> tuple[Tensor, Tensor]:
    """Flatten binary scores and targets to ``(N,)`` each."""
    input, target = as_tensors(input, target)
    if input.numel() != target.numel():
        raise ValueError(
            f"binary input and target must have the same number of elements, but got shapes "
            f"{tuple(input.shape)} and {tuple(target.shape)}"
        )
    return input.reshape(-1), target.reshape(-1)


def multiclass_inputs(input: Any, target: Any, num_classes: int) -> tuple[Tensor, Tensor]:
    """Scores ``(N, C)`` (class dim last, or second as in ``cross_entropy``) or labels ``(N,)``; targets ``(N,)``."""
    input, target = as_tensors(input, target)
    if input.shape == target.shape and not input.is_floating_point():
        return input.reshape(-1), target.reshape(-1)
    if input.ndim == target.ndim + 1:
        if input.shape[-1] == num_classes and input.shape[:-1] == target.shape:
            return input.reshape(-1, num_classes), target.reshape(-1)
        if input.ndim > 2 and input.shape[1] == num_classes and input.shape[:1] + input.shape[2:] == target.shape:
            return input.movedim(1, -1).reshape(-1, num_classes), target.reshape(-1)
    raise ValueError(
        f"multiclass input must have shape (*, {num_classes}) (or (N, {num_classes}, *)) for targets of shape (*), "
        f"or hold integer labels of the target's shape, but got input {tuple(input.shape)} "
        f"and target {tuple(target.shape)} with num_classes={num_classes}"
    )


def multilabel_inputs(input: Any, target: Any, num_labels: int) -> tuple[Tensor, Tensor]:
    """Scores and targets ``(N, L)``."""
    input, target = as_tensors(input, target)
    if input.shape != target.shape or input.ndim == 0 or input.shape[-1] != num_labels:
        raise ValueError(
            f"multilabel input and target must both have shape (*, {num_labels}), but got "
            f"{tuple(input.shape)} and {tuple(target.shape)}"
        )
    return input.reshape(-1, num_labels), target.reshape(-1, num_labels)


def regression_inputs(input: Any, target: Any) -> tuple[Tensor, Tensor]:
    """Predictions and targets ``(N,)`` or ``(N, D)``; a trailing dim of 1 on either side is dropped."""
    input, target = as_tensors(input, target)
    if input.shape != target.shape and input.numel() == target.numel():
        if input.ndim == target.ndim + 1 and input.shape[-1] == 1:
            input = input.squeeze(-1)
        elif target.ndim == input.ndim + 1 and target.shape[-1] == 1:
            target = target.squeeze(-1)
    if input.shape != target.shape:
        raise ValueError(
            f"regression input and target must have the same shape, but got {tuple(input.shape)} and {tuple(target.shape)}"
        )
    if input.ndim == 0:
        return input.reshape(1), target.reshape(1)
    if input.ndim > 2:
        return input.reshape(-1, input.shape[-1]), target.reshape(-1, target.shape[-1])
    return input, target


def to_probabilities(scores: Tensor, dim: int | None = None) -> Tensor:
    """Map logits to probabilities when any score lies outside ``[0, 1]``; leave probabilities alone.

    ``dim=None`` applies a sigmoid element-wise, an int applies a softmax over that dim.  The
    decision is made on the device (``torch.where``), so it never synchronises.
    """
    if not scores.is_floating_point():
        return scores.to(torch.get_default_dtype())
    if scores.numel() == 0:
        return scores
    is_logit = ((scores < 0) | (scores > 1)).any()
    if dim is None:
        mapped = scores.sigmoid()
    else:
        # softmax over a short last dim is several times faster when that dim is outermost
        mapped = scores.transpose(dim, 0).softmax(0).transpose(dim, 0)
    return torch.where(is_logit, mapped, scores)
