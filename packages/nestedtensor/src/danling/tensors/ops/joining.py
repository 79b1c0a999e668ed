r"""
Joining NestedTensors: ``torch.cat`` (and ``concat``, ``concatenate``, ``hstack``, ...) and ``torch.stack``.

- Along the batch dim, ``cat`` concatenates batches: one ``torch.cat`` of the values. A dense tensor
  joins as a batch of equal-shape elements (its size along the batch dim is its number of elements,
  as for dense ``torch.cat``; the reference implementation appended it as one element). Empty
  NestedTensors (``NestedTensor([])``, whose elements have no rank) contribute nothing.
- Along an element dim, element ``i`` of the result is ``torch.cat`` of elements ``i`` of the inputs:
  one ``torch.cat`` of the values along a static dim, one gather of rows along a ragged dim (for
  large elements on the CPU joined along their first ragged dim, one ``torch.cat`` of their row
  blocks, which is faster: a documented slow path, see ``prefer_per_element``).
- ``stack`` inserts a new element dim and concatenates along it. Stacking at the batch dim stacks
  inside every element at its dim 0, as the spec describes (a NestedTensor has one batch dim).

NestedTensor inputs must share ``batch_first``, ``padding_value`` and ``mask_value``, and their
elements one rank. Packings are aligned without a loop (folding static dims into the rows, or one
dense permute for inputs whose elements all share a shape); inputs packed along different ragged
dims (say, one ragged along rows and one along columns) are repacked element by element, a slow path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._arguments import bind
from ._packed import batch_dim, element_dim, from_elements, is_nested, normalize_dim
from ._registry import check_slow_path, implements_aten
from ._rows import is_uniform, prefer_per_element, ragged_strides, repack, row_coordinates
from .shape import unsqueeze_elements

aten = torch.ops.aten


def _settings(nt: NestedTensor) -> tuple:
    return nt._batch_first, nt._padding_value, nt._mask_value


def _check_inputs(tensors: Sequence[Tensor], op: str) -> NestedTensor:
    """The NestedTensor the result takes after, checking that all of them agree on settings and rank.

    That is the first one with elements (or the first one, when all are empty). Empty NestedTensors
    join any batch: their rank is not checked (``NestedTensor([])`` has elements of no known rank).
    """
    nested = [(i, t) for i, t in enumerate(tensors) if is_nested(t)]
    first_index, first = next(((i, t) for i, t in nested if len(t)), nested[0])
    for index, other in nested:
        if _settings(other) != _settings(first):
            names = "batch_first, padding_value, mask_value"
            raise ValueError(
                f"{op} of NestedTensors needs one ({names}), but tensors[{first_index}] has {_settings(first)} "
                f"and tensors[{index}] has {_settings(other)}"
            )
        if len(other) and other._layout.rank != first._layout.rank:
            raise ValueError(
                f"{op} of NestedTensors needs elements of one rank, but tensors[{first_index}] has rank "
                f"{first._layout.rank} and tensors[{index}] has rank {other._layout.rank}"
            )
    return first


def _as_batch(tensor: Tensor, like: NestedTensor) -> NestedTensor:
    """A dense tensor as a batch of equal-shape elements, its batch dim where ``like`` has it."""
    dense = tensor.movedim(batch_dim(like), 0) if tensor.dim() > 1 else tensor
    if len(like) and dense.dim() != like._layout.rank + 1:
        raise ValueError(
            f"torch.cat along the batch dim needs a dense tensor of {like.dim()} dims to join a NestedTensor of "
            f"{like.dim()} dims, got shape {tuple(tensor.shape)}"
        )
    layout = NestedLayout.from_shapes([tuple(dense.shape[1:])] * dense.shape[0])
    values = dense.reshape(layout.num_rows, *layout.static_sizes) if layout.permutation else dense.reshape(-1)
    return like._rewrap(values, layout)


def align_packings(parts: Sequence[NestedTensor], dim: int | None = None) -> list[tuple[Tensor, NestedLayout]] | None:
    r"""
    Values and layouts of ``parts`` in one packing (permutation, ragged dims, and static sizes except at ``dim``).

    Returns ``None`` when that would take a loop over elements.

    Examples:
        >>> rows = NestedTensor([torch.zeros(3, 4), torch.zeros(5, 4)])  # dim 1 static
        >>> grid = NestedTensor([torch.zeros(3, 2), torch.zeros(5, 6)])  # dims 0 and 1 ragged
        >>> [layout.ragged_rank for _, layout in align_packings([rows, grid])]
        [2, 2]
    """
    varying = {p._layout.permutation for p in parts if not is_uniform(p._layout)}
    if len(varying) > 1:
        return None
    permutation = next(iter(varying)) if varying else parts[0]._layout.permutation
    same = [p._layout.ragged_rank for p in parts if p._layout.permutation == permutation]
    for ragged_rank in range(max(same), len(permutation) + 1):
        packed = [repack(p, permutation, ragged_rank) for p in parts]
        if any(entry is None for entry in packed):
            return None
        static = {
            tuple(s for d, s in zip(permutation[ragged_rank:], layout.static_sizes) if d != dim) for _, layout in packed
        }
        if len(static) == 1:
            return packed  # type: ignore[return-value]
    return None


def cat_batches(tensors: Sequence[Tensor], like: NestedTensor) -> NestedTensor:
    """Concatenate batches: the elements of every input, in order."""
    parts = [t if is_nested(t) else _as_batch(t, like) for t in tensors]
    nonempty = [p for p in parts if len(p)]
    if len(nonempty) <= 1:  # a copy, as every torch.cat returns
        only = nonempty[0] if nonempty else like
        return like._rewrap(only._values.clone(), only._layout)
    packed = align_packings(nonempty)
    if packed is None:
        check_slow_path("torch.cat of NestedTensors packed along different ragged dims")
        return from_elements([e for p in nonempty for e in p._layout.unpack(p._values)], like=like)
    layout = packed[0][1]
    shapes = tuple(shape for _, part in packed for shape in part.element_shapes)
    values = torch.cat([values for values, _ in packed])
    return like._rewrap(values, NestedLayout(shapes, layout.permutation, layout.ragged_rank, layout.static_sizes))


def _joined_shapes(parts: Sequence[NestedTensor], dim: int, op: str) -> tuple[tuple[int, ...], ...]:
    """Element shapes of the concatenation along element ``dim``, checking that the other sizes match."""
    lengths = [len(p) for p in parts]
    if len(set(lengths)) > 1:
        raise ValueError(f"{op} along an element dim needs NestedTensors of one batch size, got {lengths}")
    sizes = torch.stack([p._layout.shape_tensor for p in parts])  # (inputs, B, rank)
    others = torch.cat([sizes[..., :dim], sizes[..., dim + 1 :]], -1)
    mismatched = (others != others[:1]).flatten(2).any(-1).any(0).nonzero().flatten().tolist()
    if mismatched:
        index = mismatched[0]
        raise ValueError(
            f"{op}: sizes of element {index} must match except in element dim {dim}, "
            f"got {[p._layout.element_shapes[index] for p in parts]}"
        )
    joined = sizes[0].clone()
    joined[:, dim] = sizes[:, :, dim].sum(0)
    return tuple(map(tuple, joined.tolist()))


def _ragged_join_index(packed: list[tuple[Tensor, NestedLayout]], layout: NestedLayout, level: int) -> Tensor:
    """Row of ``torch.cat(values)`` that every row of the joined ``layout`` reads."""
    device = packed[0][0].device
    batch, coordinates = row_coordinates(layout, device)
    sizes = torch.tensor([[shape[layout.ragged_dims[level]] for shape in p.element_shapes] for _, p in packed])
    bounds = layout.to_device(torch.cat([sizes.new_zeros(1, sizes.shape[1]), sizes.cumsum(0)]).T, device)
    position = coordinates[level]
    part = (position.unsqueeze(1) >= bounds[batch, 1:-1]).sum(1)
    coordinates[level] = position - bounds[batch, part]
    bases = torch.tensor([0, *(v.shape[0] for v, _ in packed[:-1])]).cumsum(0)
    starts = torch.stack([p.offsets[:-1] + base for (_, p), base in zip(packed, bases)])
    index = layout.to_device(starts, device)[part, batch]
    if layout.ragged_rank > 1:
        strides = torch.stack([ragged_strides(p, device) for _, p in packed])[part, batch]
        return index + sum(c * strides[:, j] for j, c in enumerate(coordinates))
    return index + coordinates[0]


def cat_elements(parts: Sequence[NestedTensor], dim: int, op: str = "torch.cat") -> NestedTensor:
    """Concatenate element ``i`` of every input along element ``dim``, for every ``i``."""
    like = parts[0]
    shapes = _joined_shapes(parts, dim, op)
    packed = align_packings(parts, dim)
    if packed is None:
        check_slow_path(f"{op} of NestedTensors packed along different ragged dims")
        columns = zip(*(p._layout.unpack(p._values) for p in parts))
        return from_elements([torch.cat(column, dim) for column in columns], like=like)
    first = packed[0][1]
    permutation, ragged_rank = first.permutation, first.ragged_rank
    position = permutation.index(dim)
    if position >= ragged_rank:
        values = torch.cat([values for values, _ in packed], 1 + position - ragged_rank)
        static = tuple(shapes[0][d] for d in permutation[ragged_rank:]) if shapes else tuple(values.shape[1:])
        return like._rewrap(values, NestedLayout(shapes, permutation, ragged_rank, static))
    layout = NestedLayout(shapes, permutation, ragged_rank, first.static_sizes)
    if position == 0 and prefer_per_element(like):  # whole row blocks of every element: one cat of views
        check_slow_path(f"{op} of large elements along their first ragged dim, as one cat of row blocks")
        blocks = [values.split(part.packed_sizes) for values, part in packed]
        return like._rewrap(torch.cat([block for group in zip(*blocks) for block in group]), layout)
    values = torch.cat([values for values, _ in packed]).index_select(0, _ragged_join_index(packed, layout, position))
    return like._rewrap(values, layout)


@implements_aten(aten.cat.default)
def cat(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.cat`` of NestedTensors: batches along the batch dim, elements along an element dim.

    Examples:
        >>> a = NestedTensor([[1, 2, 3], [4, 5]])
        >>> torch.cat([a, NestedTensor([[6]])])
        NestedTensor([
            [1, 2, 3],
            [4, 5],
            [6]
        ])
        >>> torch.cat([a, a], dim=1)
        NestedTensor([
            [1, 2, 3, 1, 2, 3],
            [4, 5, 4, 5]
        ])
    """
    bound = bind(func, args, kwargs)
    tensors = list(bound["tensors"])
    like = _check_inputs(tensors, "torch.cat")
    dim = normalize_dim(bound["dim"], like.dim())
    if dim == batch_dim(like):
        return cat_batches(tensors, like)
    if not all(is_nested(t) for t in tensors):
        raise ValueError("torch.cat along an element dim needs every input to be a NestedTensor")
    return cat_elements(tensors, element_dim(like, dim))


@implements_aten(aten.stack.default)
def stack(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.stack`` of NestedTensors: a new element dim; at the batch dim, element dim 0 (as the spec describes).

    Examples:
        >>> a = NestedTensor([[1, 2, 3], [4, 5]])
        >>> torch.stack([a, a * 10])
        NestedTensor([
            [[ 1,  2,  3],
             [10, 20, 30]],
            [[ 4,  5],
             [40, 50]]
        ])
        >>> torch.stack([a, a], dim=-1).shape
        torch.Size([2, 3, 2])
    """
    bound = bind(func, args, kwargs)
    tensors = list(bound["tensors"])
    like = _check_inputs(tensors, "torch.stack")
    if not all(is_nested(t) for t in tensors):
        raise ValueError("torch.stack of a NestedTensor needs every input to be a NestedTensor")
    dim, batch = normalize_dim(bound["dim"], like.dim() + 1), batch_dim(like)
    new = 0 if dim == batch else (dim - 1 if dim > batch else dim)
    for index, other in enumerate(tensors[1:], 1):
        if other._layout.element_shapes != like._layout.element_shapes:
            raise ValueError(
                f"torch.stack expects NestedTensors of equal element shapes, but tensors[0] has "
                f"{list(like._layout.element_shapes)} and tensors[{index}] has {list(other._layout.element_shapes)}"
            )
    return cat_elements([unsqueeze_elements(t, new) for t in tensors], new, "torch.stack")


__all__ = ["align_packings", "cat", "cat_batches", "cat_elements", "stack"]
