r"""
Normalization on NestedTensors: ``layer_norm``, ``rms_norm``, ``group_norm``, ``instance_norm``, ``batch_norm``, ``normalize``.

Statistics never count padding:

- ``layer_norm`` and ``rms_norm`` normalize trailing element dims; when those are static they are the
  trailing dims of the packed values and the op runs on them once (the hot path).
- ``group_norm`` and ``instance_norm`` compute one mean and variance per element and group (each
  channel is a group for ``instance_norm``), equal to running the op on every element alone: the
  per-row sums are added up per element with one ``index_add``.
- ``batch_norm`` uses the statistics of all real positions of the batch together, i.e. of the
  concatenation of the elements along their ragged dims (what a dense ``batch_norm`` computes when
  nothing is padded). Running statistics are updated from those, with the unbiased variance.
- ``normalize`` divides by the p-norm along a dim, inside every element.

Channels are element dim 0 (a NestedTensor of shape ``(B, C, L)`` holds elements ``(C, L_i)``), so
``nn.BatchNorm1d``, ``nn.GroupNorm`` and ``nn.InstanceNorm1d`` take the same layout as their dense
inputs. The vectorised paths need the channel dim to be static; when every element has one shape
the values are viewed as the dense batch instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import inf, prod

import torch
import torch.nn.functional as F
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._packed import element_dim, is_nested, packed_like
from ._registry import continue_to_aten, implements
from .nn_functional import (
    channel_values,
    each_element,
    from_uniform,
    trailing_static,
    uniform_dense,
)

# ---------------------------------------------------------------------------- layer_norm, rms_norm


@implements(F.layer_norm, torch.layer_norm, compile_safe=True)
def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    cudnn_enable: bool = True,
) -> Tensor:
    r"""
    ``F.layer_norm`` (and ``nn.LayerNorm``) over the trailing element dims, on the packed values.

    Examples:
        >>> nt = NestedTensor([torch.randn(3, 4), torch.randn(5, 4)])
        >>> out = torch.nn.LayerNorm(4)(nt)
        >>> torch.allclose(out[0], F.layer_norm(nt[0], (4,)), atol=1e-6)
        True
    """
    # Hot path: this Python runs with caches flushed by the previous large op, so it is kept to a few checks.
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not isinstance(input, NestedTensor) or isinstance(weight, NestedTensor) or isinstance(bias, NestedTensor):
        return continue_to_aten(F.layer_norm, (input, shape, weight, bias, eps), {})
    if trailing_static(input, len(shape)):
        return input._rewrap(torch.layer_norm(input._values, shape, weight, bias, eps))
    dense = uniform_dense(input)
    if dense is not None:
        return from_uniform(input, F.layer_norm(dense, shape, weight, bias, eps))
    return each_element(lambda x: F.layer_norm(x, shape, weight, bias, eps), input, detail="layer_norm, ragged dims")


@implements(F.rms_norm, torch.rms_norm, compile_safe=True)
def rms_norm(
    input: Tensor, normalized_shape: int | Sequence[int], weight: Tensor | None = None, eps: float | None = None
) -> Tensor:
    r"""
    ``F.rms_norm`` (and ``nn.RMSNorm``) over the trailing element dims, on the packed values.

    Examples:
        >>> nt = NestedTensor([torch.randn(3, 4), torch.randn(5, 4)])
        >>> out = F.rms_norm(nt, (4,))
        >>> torch.allclose(out[1], F.rms_norm(nt[1], (4,)))
        True
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not isinstance(input, NestedTensor) or isinstance(weight, NestedTensor):
        return continue_to_aten(F.rms_norm, (input, shape, weight, eps), {})
    if trailing_static(input, len(shape)):
        return input._rewrap(torch.rms_norm(input._values, shape, weight, eps))
    dense = uniform_dense(input)
    if dense is not None:
        return from_uniform(input, F.rms_norm(dense, shape, weight, eps))
    return each_element(lambda x: F.rms_norm(x, shape, weight, eps), input, detail="rms_norm, ragged dims")


# ---------------------------------------------------------------------------- per-element statistics


def _group_statistics(
    values: Tensor, layout: NestedLayout, groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""
    Normalize ``values`` (channels at dim 1) with one mean and biased variance per (element, group).

    Returns ``(normalized, mean, var, count)``; the last three are ``(B, groups)``, ``(B, groups)``
    and ``(B, 1)`` (values per group of every element).
    """
    device = values.device
    low_precision = values.dtype in (torch.float16, torch.bfloat16)
    grouped = values.reshape(values.shape[0], groups, -1)
    if low_precision:
        grouped = grouped.float()
    batch = layout.row_batch_index(device)
    count = (layout.sizes_on(device).prod(1, keepdim=True) // groups).to(grouped.dtype)
    safe_count = count.clamp_min(1)
    totals = grouped.new_zeros(layout.batch_size, groups)
    mean = totals.index_add(0, batch, grouped.sum(-1)) / safe_count
    centered = grouped - mean[batch].unsqueeze(-1)
    var = totals.index_add(0, batch, centered.square().sum(-1)) / safe_count
    normalized = centered * torch.rsqrt(var + eps)[batch].unsqueeze(-1)
    return normalized.to(values.dtype).reshape(values.shape), mean, var, count


def _affine(values: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Scale and shift every channel (dim 1 of ``values``)."""
    shape = (values.shape[1],) + (1,) * (values.dim() - 2)
    if weight is not None:
        values = values * weight.reshape(shape)
    if bias is not None:
        values = values + bias.reshape(shape)
    return values


def _check_group_sizes(layout: NestedLayout, groups: int, op: str) -> None:
    """Raise like the dense op when some element has a single value per group (its variance is undefined)."""
    smallest = min(layout.element_shapes, key=prod, default=None)
    if smallest is not None and prod(smallest) <= groups:
        raise ValueError(
            f"{op} needs more than 1 value per group in every element, got an element of shape {smallest} "
            f"with {groups} groups"
        )


def _channels(input: NestedTensor, op: str) -> int:
    layout = input._layout
    if layout.rank < 1:
        raise ValueError(f"{op} needs NestedTensor elements with a channel dim, got rank-0 elements")
    return layout.element_shapes[0][0] if layout.element_shapes else layout.max_sizes[0]


@implements(F.group_norm, torch.group_norm)
def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    cudnn_enabled: bool = True,
) -> Tensor:
    r"""
    ``F.group_norm`` (and ``nn.GroupNorm``) with statistics per element and group, over real positions only.

    Examples:
        >>> nt = NestedTensor([torch.randn(4, 3), torch.randn(4, 7)])
        >>> out = torch.nn.GroupNorm(2, 4)(nt)
        >>> torch.allclose(out[1], F.group_norm(nt[1][None], 2)[0], atol=1e-5)
        True
    """
    if not is_nested(input) or is_nested(weight) or is_nested(bias):
        return continue_to_aten(F.group_norm, (input, num_groups, weight, bias, eps), {})
    channels = _channels(input, "group_norm")
    if num_groups <= 0 or channels % num_groups:
        raise ValueError(
            f"group_norm needs the channel count to be divisible by num_groups, got {channels} channels "
            f"(element dim 0) and num_groups={num_groups}"
        )
    _check_group_sizes(input._layout, num_groups, "group_norm")
    values = channel_values(input)
    if values is None:
        dense = uniform_dense(input)
        if dense is not None:
            return from_uniform(input, F.group_norm(dense, num_groups, weight, bias, eps))
        return each_element(
            lambda x: F.group_norm(x[None], num_groups, weight, bias, eps)[0], input, detail="group_norm"
        )
    normalized = _group_statistics(values, input._layout, num_groups, eps)[0]
    return packed_like(input, _affine(normalized, weight, bias))


@implements(F.instance_norm)
def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""
    ``F.instance_norm`` (and ``nn.InstanceNorm1d/2d/3d``) with statistics per element and channel.

    Running statistics move towards the mean over the batch of every element's channel mean and
    unbiased variance, as the dense op does.

    Examples:
        >>> nt = NestedTensor([torch.randn(2, 3), torch.randn(2, 6)])
        >>> out = F.instance_norm(nt)
        >>> torch.allclose(out[1], F.instance_norm(nt[1][None])[0], atol=1e-5)
        True
    """
    options = (running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    if not is_nested(input) or any(is_nested(t) for t in options[:4]):
        return continue_to_aten(F.instance_norm, (input, *options), {})
    channels = _channels(input, "instance_norm")
    if use_input_stats:
        _check_group_sizes(input._layout, channels, "instance_norm")
    values = channel_values(input)
    if values is None:
        dense = uniform_dense(input)
        if dense is None:
            return each_element(lambda x: F.instance_norm(x[None], *options)[0], input, detail="instance_norm")
        return from_uniform(input, F.instance_norm(dense, *options))
    if not use_input_stats:
        return packed_like(input, F.batch_norm(values, running_mean, running_var, weight, bias, False, 0.0, eps))
    normalized, mean, var, count = _group_statistics(values, input._layout, values.shape[1], eps)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.mean(0).to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * count / (count - 1)
            running_var.mul_(1 - momentum).add_(unbiased.mean(0).to(running_var.dtype), alpha=momentum)
    return packed_like(input, _affine(normalized, weight, bias))


@implements(torch.instance_norm)
def instance_norm_aten_order(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
    cudnn_enabled: bool = True,
) -> Tensor:
    """``torch.instance_norm``: the aten argument order of [`instance_norm`][danling.tensors.ops.normalization.instance_norm]."""
    return instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)


@implements(F.local_response_norm)
def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    r"""
    ``F.local_response_norm`` across neighbouring channels at every position, on the packed values.

    Examples:
        >>> nt = NestedTensor([torch.rand(4, 3), torch.rand(4, 5)])
        >>> out = F.local_response_norm(nt, 2)
        >>> torch.allclose(out[1], F.local_response_norm(nt[1][None], 2)[0])
        True
    """
    if not is_nested(input):
        return continue_to_aten(F.local_response_norm, (input, size, alpha, beta, k), {})
    values = channel_values(input)
    if values is not None:
        positions = values if values.dim() > 2 else values.unsqueeze(-1)
        return packed_like(input, F.local_response_norm(positions, size, alpha, beta, k).reshape(values.shape))
    dense = uniform_dense(input)
    if dense is not None and dense.dim() > 2:
        return from_uniform(input, F.local_response_norm(dense, size, alpha, beta, k))
    return each_element(
        lambda x: F.local_response_norm(x[None], size, alpha, beta, k)[0], input, detail="local_response_norm"
    )


# ---------------------------------------------------------------------------- batch_norm


@implements(F.batch_norm)
def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""
    ``F.batch_norm`` (and ``nn.BatchNorm1d/2d/3d``) with statistics over every real position of the batch.

    The statistics are those of the elements concatenated along their ragged dims, so padding never
    counts; the dense op on the padded batch would count it.

    Examples:
        >>> nt = NestedTensor([torch.randn(3, 4), torch.randn(3, 2)])
        >>> out = torch.nn.BatchNorm1d(3)(nt)
        >>> reference = F.batch_norm(torch.cat([nt[0], nt[1]], 1)[None], None, None, training=True)[0]
        >>> torch.allclose(torch.cat([out[0], out[1]], 1), reference, atol=1e-5)
        True
    """
    options = (running_mean, running_var, weight, bias, training, momentum, eps)
    if not is_nested(input) or any(is_nested(t) for t in options[:4]):
        return continue_to_aten(F.batch_norm, (input, *options), {})
    values = channel_values(input)
    if values is not None:
        return packed_like(input, F.batch_norm(values, *options))
    dense = uniform_dense(input)
    if dense is not None and dense.dim() >= 2:
        return from_uniform(input, F.batch_norm(dense, *options))
    raise ValueError(
        "batch_norm needs NestedTensor elements with a channel dim (element dim 0) of one size in every element, "
        f"got element shapes {input._layout.element_shapes[:4]}{'...' if len(input) > 4 else ''}"
    )


@implements(torch.batch_norm)
def batch_norm_aten_order(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    cudnn_enabled: bool = True,
) -> Tensor:
    """``torch.batch_norm``: the aten argument order of [`batch_norm`][danling.tensors.ops.normalization.batch_norm]."""
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


# ---------------------------------------------------------------------------- normalize


def _ragged_norms(nt: NestedTensor, dim: int, p: float) -> Tensor:
    """The p-norm along ragged element dim ``dim`` for every row of the values (one ``index_add``)."""
    layout, values = nt._layout, nt._values
    batch, *coordinates = layout.row_coordinates(values.device)
    line, lines = batch, layout.batch_size
    for ragged, coordinate in zip(layout.ragged_dims, coordinates):
        if ragged != dim:
            line = line * layout.max_sizes[ragged] + coordinate
            lines *= layout.max_sizes[ragged]
    magnitude = values.abs()
    totals = magnitude.new_zeros(lines, *values.shape[1:])
    if p == inf:
        index = line.view(-1, *(1,) * (values.dim() - 1)).expand_as(magnitude)
        return totals.scatter_reduce(0, index, magnitude, "amax")[line]
    totals = totals.index_add(0, line, magnitude.pow(p))
    positive = totals > 0
    return torch.where(positive, torch.where(positive, totals, 1).pow(1 / p), 0)[line]


@implements(F.normalize)
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: Tensor | None = None) -> Tensor:
    r"""
    ``F.normalize`` along an element dim: static dims on the packed values, ragged dims with one ``index_add``.

    Examples:
        >>> nt = NestedTensor([torch.tensor([3.0, 4.0]), torch.tensor([6.0])])
        >>> F.normalize(nt, dim=1).tolist()
        [[0.6000000238418579, 0.800000011920929], [1.0]]
    """
    if not is_nested(input) or out is not None:
        return continue_to_aten(F.normalize, (input, p, dim, eps), {"out": out})
    target = element_dim(input, dim)
    values_dim = input._layout.values_dim(target)
    if values_dim is not None:
        return packed_like(input, F.normalize(input._values, p, values_dim, eps))
    if p == inf or (0 < p < inf):
        norms = _ragged_norms(input, target, p)
        return packed_like(input, input._values / norms.clamp_min(eps))
    return each_element(lambda x: F.normalize(x, p, target, eps), input, detail=f"normalize with p={p}")


__all__ = [
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "normalize",
    "rms_norm",
]
