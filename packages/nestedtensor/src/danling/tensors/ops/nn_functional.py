r"""
``torch.nn.functional`` layers on NestedTensors: ``linear``, ``bilinear``, ``embedding``, dropout, activations.

These handlers sit at the torch level (``F.linear`` is hot: calling it on the packed values directly
skips the decomposition into ``view`` + ``addmm`` that the padded logical shape would force).
Element dims keep their meaning from the dense ops: the *features* are the last element dim
(``linear``, ``embedding`` appends one), the *channels* are element dim 0 (a NestedTensor of shape
``(B, C, L)`` holds elements ``(C, L_i)``, as a dense ``(N, C, L)`` batch would), whatever
``batch_first`` says.

Every handler first tries the packed values: that works when the dims the op touches are static
(one size in every element, so they are trailing dims of ``values``). When they are not but all
elements have one shape, the values are viewed as the dense ``(B, *shape)`` batch. Otherwise the op
runs per element (a documented slow path guarded by ``check_slow_path``).

Activations tagged ``pointwise`` at the aten level (``relu``, ``gelu``, ``silu``, ...) are handled by
``elementwise.py``; the few that are not (``hardswish``, ``logsigmoid``, ``rrelu``, ``threshold``,
``prelu``, ``glu``) are here. ``softmin`` is ``softmax`` of the negated input and follows
``softmax.py``.

The helpers ``defer``, ``uniform_dense``, ``from_uniform``, ``each_element`` and ``channel_values``
serve ``normalization.py`` and ``loss.py`` too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._layout import NestedLayout
from .._padding import uniform_values
from ..nested_tensor import NestedTensor
from ._packed import align_dense, element_dim, from_elements, is_nested, packed_like, same_layout
from ._registry import check_slow_path, continue_to_aten, implements

# ---------------------------------------------------------------------------- helpers shared with the nn families


def uniform_dense(nt: NestedTensor) -> Tensor | None:
    r"""
    The values of ``nt`` viewed as the dense batch ``(B, *shape)`` when every element has one ``shape``.

    Returns ``None`` when the shapes differ or the packing is not row-major.

    Examples:
        >>> uniform_dense(NestedTensor([torch.arange(3), torch.arange(3)]))
        tensor([[0, 1, 2],
                [0, 1, 2]])
        >>> uniform_dense(NestedTensor([torch.arange(3), torch.arange(2)])) is None
        True
    """
    layout = nt._layout
    if not layout.permutation:
        return nt._values
    shapes = layout.element_shapes
    if not shapes or layout.ragged_rank != 1 or not layout.is_identity:
        return None
    if layout.num_rows != len(shapes) * layout.max_sizes[0]:
        return None
    return nt._values.reshape(len(shapes), *shapes[0])


def from_uniform(nt: NestedTensor, dense: Tensor) -> NestedTensor:
    """Wrap a dense ``(B, *shape)`` result of an op on ``uniform_dense(nt)`` with ``nt``'s settings."""
    values, layout = uniform_values(dense)
    return packed_like(nt, values, layout)


def each_element(fn: Callable[..., Tensor], *nested: NestedTensor, detail: str) -> NestedTensor:
    """The slow path: ``fn`` on every element (of each NestedTensor in ``nested``, zipped), results packed."""
    check_slow_path(detail)
    first = nested[0]
    for other in nested[1:]:
        if len(other) != len(first):
            raise ValueError(f"{detail}: NestedTensor batch sizes differ, {len(first)} vs {len(other)}")
    elements = zip(*(nt._layout.unpack(nt._values) for nt in nested))
    return from_elements([fn(*group) for group in elements], like=first)


def channel_values(nt: NestedTensor) -> Tensor | None:
    r"""
    The packed values with the channels (element dim 0) at dim 1, or ``None`` when channels are not static.

    Static dims follow the ragged ones in ascending order, so a static element dim 0 is ``values`` dim 1.

    Examples:
        >>> channel_values(NestedTensor([torch.zeros(4, 3), torch.zeros(4, 5)])).shape
        torch.Size([8, 4])
        >>> channel_values(NestedTensor([torch.zeros(3, 4), torch.zeros(5, 4)])) is None
        True
    """
    layout = nt._layout
    if layout.rank < 2 or layout.ragged_rank == layout.rank or layout.static_dims[0] != 0:
        return None
    return nt._values


def trailing_static(nt: NestedTensor, count: int) -> bool:
    """Whether the last ``count`` element dims are static, i.e. the last ``count`` dims of the values."""
    layout = nt._layout
    static = layout.static_dims
    return 0 < count <= len(static) and static[-count:] == tuple(range(layout.rank - count, layout.rank))


# ---------------------------------------------------------------------------- linear layers


@implements(F.linear, compile_safe=True)
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""
    ``F.linear`` (and ``nn.Linear``) over the last element dim, one matmul on the packed values.

    Examples:
        >>> layer = torch.nn.Linear(4, 2)
        >>> nt = NestedTensor([torch.randn(3, 4), torch.randn(5, 4)])
        >>> layer(nt).shape
        torch.Size([2, 5, 2])
        >>> torch.allclose(layer(nt)[1], layer(nt[1]))
        True
    """
    if not is_nested(input) or is_nested(weight) or is_nested(bias):
        return continue_to_aten(F.linear, (input, weight, bias), {})
    if trailing_static(input, 1):
        return packed_like(input, F.linear(input._values, weight, bias))
    dense = uniform_dense(input)
    if dense is not None:
        return from_uniform(input, F.linear(dense, weight, bias))
    return each_element(lambda x: F.linear(x, weight, bias), input, detail="linear over a ragged last dim")


@implements(F.bilinear)
def bilinear(input1: Tensor, input2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""
    ``F.bilinear`` of two NestedTensors with the same element shapes, on the packed values.

    Examples:
        >>> layer = torch.nn.Bilinear(3, 2, 4)
        >>> left = NestedTensor([torch.randn(2, 3), torch.randn(1, 3)])
        >>> right = NestedTensor([torch.randn(2, 2), torch.randn(1, 2)])
        >>> layer(left, right).shape
        torch.Size([2, 2, 4])
    """
    if not (is_nested(input1) and is_nested(input2)) or is_nested(weight) or is_nested(bias):
        return continue_to_aten(F.bilinear, (input1, input2, weight, bias), {})
    if trailing_static(input1, 1) and trailing_static(input2, 1) and _rows_match(input1, input2):
        return packed_like(input1, F.bilinear(input1._values, input2._values, weight, bias))
    return each_element(lambda x, y: F.bilinear(x, y, weight, bias), input1, input2, detail="bilinear")


def _rows_match(first: NestedTensor, second: NestedTensor) -> bool:
    """Whether the packed rows of two NestedTensors hold the same positions (their last dims may differ)."""
    a, b = first._layout, second._layout
    return same_layout(first, second) or (
        a.permutation == b.permutation
        and a.ragged_rank == b.ragged_rank
        and a.packed_sizes == b.packed_sizes
        and a.static_sizes[:-1] == b.static_sizes[:-1]
        and all(x[:-1] == y[:-1] for x, y in zip(a.element_shapes, b.element_shapes))
    )


@implements(F.embedding)
def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Tensor:
    r"""
    ``F.embedding`` (and ``nn.Embedding``) of ragged index tensors: one lookup of the packed indices.

    Every element gains a trailing static dim of size ``embedding_dim``.

    Examples:
        >>> table = torch.nn.Embedding(10, 3)
        >>> tokens = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4])])
        >>> table(tokens).shape
        torch.Size([2, 3, 3])
        >>> torch.equal(table(tokens)[1], table(torch.tensor([4])))
        True
    """
    options = (padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
    if not is_nested(input) or is_nested(weight):
        return continue_to_aten(F.embedding, (input, weight, *options), {})
    values = F.embedding(input._values, weight, *options)
    layout = input._layout
    if not layout.permutation:
        return from_uniform(input, values)
    size = values.shape[-1]
    shapes = tuple((*shape, size) for shape in layout.element_shapes)
    grown = NestedLayout(shapes, (*layout.permutation, layout.rank), layout.ragged_rank, (*layout.static_sizes, size))
    return packed_like(input, values, grown)


@implements(torch.embedding)
def embedding_aten_order(
    weight: Tensor, indices: Tensor, padding_idx: int = -1, scale_grad_by_freq: bool = False, sparse: bool = False
) -> Tensor:
    """``torch.embedding``: the aten argument order (table first, ``-1`` for no padding) of [`embedding`][danling.tensors.ops.nn_functional.embedding]."""
    return embedding(indices, weight, padding_idx if padding_idx >= 0 else None, None, 2.0, scale_grad_by_freq, sparse)


@implements(F.embedding_bag)
def embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None = None,
    max_norm: float | None = None,
    norm_type: float = 2,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> Tensor:
    r"""
    ``F.embedding_bag`` (and ``nn.EmbeddingBag``) with every 1-D element as one bag: a dense ``(B, D)`` result.

    The packed indices and the element offsets are exactly what the op takes; ``per_sample_weights``
    may be a NestedTensor of the same element shapes (or of their padded shape).

    Examples:
        >>> bag = torch.nn.EmbeddingBag(10, 3, mode="sum")
        >>> tokens = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4])])
        >>> torch.allclose(bag(tokens)[0], bag.weight[1:4].sum(0))
        True
    """
    options = (max_norm, norm_type, scale_grad_by_freq, mode, sparse)
    if not is_nested(input) or offsets is not None or is_nested(weight) or input._layout.rank != 1:
        arguments = (input, weight, offsets, *options, per_sample_weights, include_last_offset, padding_idx)
        return continue_to_aten(F.embedding_bag, arguments, {})
    lengths = input._layout.sizes_on(input.device)[:, 0]  # cached on the device: no copy per call
    starts = lengths.cumsum(0) - lengths
    if is_nested(per_sample_weights):
        per_sample_weights = per_sample_weights._values
    elif per_sample_weights is not None and per_sample_weights.shape == input.shape:
        per_sample_weights = align_dense(input, per_sample_weights)
    return F.embedding_bag(input._values, weight, starts, *options, per_sample_weights, False, padding_idx)


# ---------------------------------------------------------------------------- elementwise ops that are not aten-pointwise

_ON_VALUES = (
    F.dropout,
    F.alpha_dropout,
    torch.dropout,
    torch.dropout_,
    torch.alpha_dropout,
    torch.alpha_dropout_,
    F.hardswish,
    F.logsigmoid,
    F.rrelu,
    F.rrelu_,
    torch.rrelu,
    torch.rrelu_,
    F.threshold,
    torch.threshold,
    torch.threshold_,
)
"""Ops that act on every value independently (random ones draw per value), run once on the packed values."""


def _on_values(func: Callable) -> Callable:
    def handler(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if not is_nested(input) or any(is_nested(a) for a in (*args, *kwargs.values())):
            return continue_to_aten(func, (input, *args), kwargs)
        result = func(input._values, *args, **kwargs)
        return input if result is input._values else packed_like(input, result)

    handler.__name__ = handler.__qualname__ = getattr(func, "__name__", "on_values")
    handler.__doc__ = f"``{handler.__name__}`` on the packed values (in-place forms write into them)."
    return handler


for _func in _ON_VALUES:
    implements(_func)(_on_values(_func))


@implements(F.prelu, torch.prelu)
def prelu(input: Tensor, weight: Tensor) -> Tensor:
    r"""
    ``F.prelu``: one slope, or one per channel (element dim 0), on the packed values.

    Examples:
        >>> nt = NestedTensor([-torch.ones(2, 3), -torch.ones(2, 1)])
        >>> F.prelu(nt, torch.tensor([0.5, 0.25]))
        NestedTensor([
            [[-0.5000, -0.5000, -0.5000],
             [-0.2500, -0.2500, -0.2500]],
            [[-0.5000],
             [-0.2500]]
        ])
    """
    if not is_nested(input) or is_nested(weight):
        return continue_to_aten(F.prelu, (input, weight), {})
    if weight.numel() == 1 or channel_values(input) is not None:
        return packed_like(input, F.prelu(input._values, weight))
    dense = uniform_dense(input)
    if dense is not None:
        return from_uniform(input, F.prelu(dense, weight))
    return each_element(lambda x: F.prelu(x.unsqueeze(0), weight).squeeze(0), input, detail="prelu, ragged channels")


@implements(F.glu)
def glu(input: Tensor, dim: int = -1) -> Tensor:
    r"""
    ``F.glu`` along a static element dim on the packed values; along a ragged dim, per element.

    Examples:
        >>> nt = NestedTensor([torch.randn(3, 4), torch.randn(1, 4)])
        >>> F.glu(nt).shape
        torch.Size([2, 3, 2])
    """
    if not is_nested(input):
        return continue_to_aten(F.glu, (input, dim), {})
    target = element_dim(input, dim)
    values_dim = input._layout.values_dim(target)
    if values_dim is not None:
        return packed_like(input, F.glu(input._values, values_dim))
    dense = uniform_dense(input)
    if dense is not None:
        return from_uniform(input, F.glu(dense, target + 1))
    return each_element(lambda x: F.glu(x, target), input, detail="glu along a ragged dim")


@implements(F.gumbel_softmax)
def gumbel_softmax(logits: Tensor, tau: float = 1, hard: bool = False, eps: float = 1e-10, dim: int = -1) -> Tensor:
    r"""
    ``F.gumbel_softmax`` along a static element dim, on the packed values (one draw per value).

    Along a ragged dim it decomposes into ops that run on NestedTensors (``softmax.py``).

    Examples:
        >>> nt = NestedTensor([torch.randn(3, 4), torch.randn(1, 4)])
        >>> F.gumbel_softmax(nt, hard=True).sum(-1).tolist()
        [[1.0, 1.0, 1.0], [1.0]]
    """
    if is_nested(logits):
        values_dim = logits._layout.values_dim(element_dim(logits, dim))
        if values_dim is not None:
            return packed_like(logits, F.gumbel_softmax(logits._values, tau, hard, eps, values_dim))
    return continue_to_aten(F.gumbel_softmax, (logits, tau, hard, eps, dim), {})


# ---------------------------------------------------------------------------- channel-wise dropout


def _check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def _channel_dropout(input: NestedTensor, p: float, training: bool, inplace: bool, alpha: bool) -> NestedTensor:
    """Zero (or, for alpha dropout, saturate) whole channels of every element, one draw per (element, channel)."""
    _check_probability(p)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    values = channel_values(input)
    if values is None:
        dense = uniform_dense(input)
        if dense is None:
            raise ValueError(
                "channel-wise dropout needs the channel dim (element dim 0) to have one size in every element, got "
                f"element shapes {input._layout.element_shapes}"
            )
        values = dense
        keep = values.new_empty(values.shape[:2]).bernoulli_(1 - p)
    else:
        keep = values.new_empty(len(input), values.shape[1]).bernoulli_(1 - p)
        keep = keep[input._layout.row_batch_index(values.device)]
    keep = keep.view(*keep.shape, *(1,) * (values.dim() - 2))
    scale, shift = _dropout_affine(keep, p, alpha)
    if inplace:
        input._values.view(values.shape).mul_(scale).add_(shift)
        return input
    result = (values * scale + shift).reshape(input._values.shape)
    return packed_like(input, result)


def _dropout_affine(keep: Tensor, p: float, alpha: bool) -> tuple[Tensor, Tensor | float]:
    """``(scale, shift)`` with ``output = input * scale + shift`` for kept (1) and dropped (0) channels."""
    if p == 1.0:
        return keep.new_zeros(()), 0.0
    if not alpha:
        return keep / (1 - p), 0.0
    # Alpha dropout sets dropped values to SELU's negative saturation and renormalises so that
    # inputs with zero mean and unit variance keep them (Klambauer et al., 2017).
    saturation = 1.7580993408473766
    gain = ((saturation**2 * p + 1) * (1 - p)) ** -0.5
    return keep * gain, (keep - 1 + p) * saturation * gain


def _register_channel_dropout(func: Callable, ranks: tuple[int, ...], alpha: bool) -> None:
    def handler(input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False) -> Tensor:
        if not is_nested(input):
            return continue_to_aten(func, (input, p, training, inplace), {})
        if input._layout.rank not in ranks:
            raise ValueError(
                f"{func.__name__} expects NestedTensor elements of rank {' or '.join(map(str, ranks))} "
                f"(channels first), got rank {input._layout.rank}"
            )
        return _channel_dropout(input, p, training, inplace, alpha)

    handler.__name__ = handler.__qualname__ = func.__name__
    handler.__doc__ = f"``F.{func.__name__}``: one keep/drop draw per (element, channel), on the packed values."
    implements(func)(handler)


_register_channel_dropout(F.dropout1d, (2,), alpha=False)
_register_channel_dropout(F.dropout2d, (2, 3), alpha=False)
_register_channel_dropout(F.dropout3d, (4,), alpha=False)
_register_channel_dropout(F.feature_alpha_dropout, tuple(range(2, 9)), alpha=True)


__all__ = [
    "bilinear",
    "channel_values",
    "each_element",
    "embedding",
    "embedding_bag",
    "from_uniform",
    "glu",
    "gumbel_softmax",
    "linear",
    "prelu",
    "trailing_static",
    "uniform_dense",
]
