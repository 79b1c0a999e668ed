"""Regrouping the dims of every element: ``view``, ``reshape``, ``flatten``, ``unflatten``.

Dims and target shapes are given in NestedTensor coordinates (the batch dim may be included and
never changes). Elements stored in row-major order (the common case) reshape as a view of the
packed values; merging or splitting dims that sit next to each other in the packing order never
copies either; anything else copies element by element (a documented slow path).
"""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._packed import batch_dim, element_dim, normalize_dim
from ._registry import check_slow_path, implements, implements_aten
from ._rows import from_row_major, prefer_per_element, row_major_values

aten = torch.ops.aten


def _unwrap_shape(shape: tuple) -> list[int]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return [int(s) for s in shape[0]]
    return [int(s) for s in shape]


def _strip_batch(nt: NestedTensor, shape: list[int]) -> list[int]:
    """Drop the batch dim from a target shape when the caller included it."""
    batch_size, position = len(nt), 0 if nt._batch_first else 1
    max_sizes = nt._layout.max_sizes
    if len(shape) <= position:
        return shape
    included = shape[position] == batch_size and len(shape) != nt.dim()
    if not included and len(shape) == nt.dim() and shape[position] in (-1, batch_size):
        rest = shape[:position] + shape[position + 1 :]
        included = any(size == -1 or size == limit for size, limit in zip(rest, max_sizes))
    return shape[:position] + shape[position + 1 :] if included else shape


def _element_target(target: list[int], element: tuple[int, ...], max_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Resolve one element's target shape: sizes equal to a max size mean that element's own size."""
    resolved, used = list(target), set()
    for i, size in enumerate(target):
        if size == -1:
            continue
        if i < len(max_sizes) and size == max_sizes[i] and i not in used:
            resolved[i] = element[i]
            used.add(i)
            continue
        candidates = [j for j, limit in enumerate(max_sizes) if limit == size and j not in used]
        if len(candidates) == 1:
            resolved[i] = element[candidates[0]]
            used.add(candidates[0])
    numel = prod(element)
    if resolved.count(-1) == 1:
        known = prod(s for s in resolved if s != -1)
        if known and numel % known == 0:
            resolved[resolved.index(-1)] = numel // known
    if -1 in resolved or prod(resolved) != numel:
        raise RuntimeError(f"shape '{target}' is invalid for input of size {numel}")
    return tuple(resolved)


def view_shapes(nt: NestedTensor, shape: tuple) -> list[tuple[int, ...]]:
    r"""
    Target shape of every element for ``nt.view(*shape)``.

    ``shape`` may include the batch dim; a size equal to a dim's max size stands for each element's
    own size along it, and one ``-1`` is inferred per element.

    Examples:
        >>> nt = NestedTensor([torch.zeros(3, 4), torch.zeros(2, 4)])
        >>> view_shapes(nt, (2, 3, 2, 2))
        [(3, 2, 2), (2, 2, 2)]
        >>> view_shapes(nt, (-1,))
        [(12,), (8,)]
    """
    target = _strip_batch(nt, _unwrap_shape(shape))
    max_sizes = nt._layout.max_sizes
    return [_element_target(target, element, max_sizes) for element in nt._layout.element_shapes]


def reshape_elements(nt: NestedTensor, shapes: list[tuple[int, ...]], copy: bool = True) -> NestedTensor:
    r"""
    Give every element a new shape (same numel).

    No copy when elements are stored in row-major order on both sides. Otherwise (say images stored
    channels-last in the values) small elements move with one scatter to row-major order and one
    gather into the new packing; large ones on the CPU are reshaped one by one, which is faster
    there (``prefer_per_element``, a documented slow path). ``copy=False`` (``view``) of a permuted
    layout views every element on its own, which torch allows only where its strides do.
    """
    layout = nt._layout
    if not shapes:  # an empty batch: a new NestedTensor viewing the same (empty) values, never ``nt`` itself
        return nt._rewrap(nt._values.view(nt._values.shape))
    new_layout = NestedLayout.from_shapes(shapes)
    if layout.is_identity and new_layout.is_identity:
        values = nt._values
        new_shape = (new_layout.num_rows, *new_layout.static_sizes) if new_layout.permutation else (len(shapes),)
        return nt._rewrap(values.reshape(new_shape) if copy else values.view(new_shape), new_layout)
    if not copy or prefer_per_element(nt):
        check_slow_path("reshape of elements stored in a permuted layout")
        elements = layout.unpack(nt._values)
        return nt._rewrap(
            new_layout.pack([t.reshape(s) if copy else t.view(s) for t, s in zip(elements, shapes)]), new_layout
        )
    return nt._rewrap(from_row_major(row_major_values(nt), new_layout), new_layout)


@implements_aten(aten.view.default, aten._unsafe_view.default)
def view(func, args, kwargs) -> NestedTensor:
    r"""
    View every element with a new shape (see [`view_shapes`][danling.tensors.ops.shape.view_shapes]).

    Examples:
        >>> nested_tensor = NestedTensor([torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6], [7, 8]])])
        >>> viewed = nested_tensor.view(4)  # View each 2x2 tensor as 4
        >>> viewed.shape
        torch.Size([2, 4])
        >>> type(viewed).__name__
        'NestedTensor'
    """
    nt, size = args[0], args[1]
    return reshape_elements(nt, view_shapes(nt, tuple(size)), copy=func is not aten.view.default)


@implements(torch.reshape, Tensor.reshape)
def reshape(input: NestedTensor, *shape) -> NestedTensor:
    r"""
    Reshape every element (copying only when a view is impossible).

    Examples:
        >>> nested_tensor = NestedTensor([torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6], [7, 8]])])
        >>> reshaped = nested_tensor.reshape(4)
        >>> reshaped.shape
        torch.Size([2, 4])
    """
    return reshape_elements(input, view_shapes(input, shape), copy=True)


@implements(torch.flatten, Tensor.flatten)
def flatten(input: NestedTensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    r"""
    Flatten element dims ``start_dim..end_dim``; a range that includes the batch dim flattens ``.tensor``.

    Free (no copy) when the dims sit next to each other in the packing order, which holds for
    elements stored in row-major order and for runs of static or of ragged dims.

    Examples:
        >>> NestedTensor([torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)]).flatten(2).shape
        torch.Size([2, 3, 4])
    """
    start, end = normalize_dim(start_dim, input.dim()), normalize_dim(end_dim, input.dim())
    if start <= batch_dim(input) <= end:
        return torch.flatten(input.tensor, start, end)
    return flatten_elements(input, element_dim(input, start), element_dim(input, end))


def flatten_elements(nt: NestedTensor, first: int, last: int) -> NestedTensor:
    """Merge element dims ``first..last`` into one; no copy when they are consecutive in the packing order."""
    layout = nt._layout
    if last <= first:
        return nt
    run = tuple(range(first, last + 1))
    shapes = [(*s[:first], prod(s[first : last + 1]), *s[last + 1 :]) for s in layout.element_shapes]
    position = layout.permutation.index(first)
    if layout.permutation[position : position + len(run)] != run:
        return reshape_elements(nt, shapes, copy=True)
    ragged_in_run = sum(1 for d in run if d in layout.ragged_dims)
    values = nt._values
    if ragged_in_run == 0:
        values = values.flatten(layout.values_dim(first), layout.values_dim(last))
    elif ragged_in_run < len(run):  # the ragged tail of the rows and the leading static dims of values
        values = values.flatten(0, len(run) - ragged_in_run)
    ragged_rank = layout.ragged_rank - ragged_in_run + (1 if ragged_in_run else 0)
    merged = len(run) - 1
    permutation = tuple(d if d <= first else d - merged for d in layout.permutation if d not in run[1:])
    static = tuple(values.shape[1:])
    return nt._rewrap(values, NestedLayout(tuple(shapes), permutation, ragged_rank, static))


def _unflattened_sizes(sizes: list[int], size: int, dim: int) -> list[int]:
    """``sizes`` with its ``-1`` resolved against an element's ``size``, checked like ``torch.unflatten``."""
    known = prod(s for s in sizes if s != -1)
    resolved = list(sizes)
    if sizes.count(-1) == 1 and known and size % known == 0:
        resolved[sizes.index(-1)] = size // known
    if sizes.count(-1) > 1 or prod(resolved) != size or -1 in resolved:
        raise RuntimeError(
            f"unflatten: Provided sizes {sizes} don't multiply up to the size of dim {dim} ({size}) in the input tensor"
        )
    return resolved


@implements_aten(aten.unflatten.int)
def unflatten(func, args, kwargs) -> NestedTensor:
    r"""
    Split element dim ``dim`` into ``sizes``; a ``-1`` is resolved for every element on its own.

    Never copies: a ragged dim becomes several ragged dims over the same rows, a static dim is
    unflattened in the values.

    Examples:
        >>> nt = NestedTensor([torch.arange(6), torch.arange(4)])
        >>> nt.unflatten(1, (-1, 2))
        NestedTensor([
            [[0, 1],
             [2, 3],
             [4, 5]],
            [[0, 1],
             [2, 3]]
        ])
    """
    nt, dim, sizes = args[0], args[1], [int(s) for s in args[2]]
    if normalize_dim(dim, nt.dim()) == batch_dim(nt):
        raise ValueError("Cannot unflatten the batch dimension of a NestedTensor.")
    layout, target = nt._layout, element_dim(nt, dim)
    shapes = tuple(
        (*s[:target], *_unflattened_sizes(sizes, s[target], dim), *s[target + 1 :]) for s in layout.element_shapes
    )
    added = len(sizes) - 1
    new_dims = tuple(range(target, target + len(sizes)))
    permutation: list[int] = []
    for d in layout.permutation:
        permutation.extend(new_dims if d == target else (d if d < target else d + added,))
    values, ragged_rank = nt._values, layout.ragged_rank
    if target in layout.ragged_dims:
        ragged_rank += added
    else:
        values = values.unflatten(
            layout.values_dim(target), _unflattened_sizes(sizes, values.shape[layout.values_dim(target)], dim)
        )
    return nt._rewrap(values, NestedLayout(shapes, tuple(permutation), ragged_rank, tuple(values.shape[1:])))
