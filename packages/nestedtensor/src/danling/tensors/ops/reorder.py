r"""
Ops that reorder data inside every element: ``flip``, ``roll``, ``rot90``.

Dims are NestedTensor dims (the batch dim included, which never moves). Along static dims the op
runs on the packed values as it is; along ragged dims every element has its own size, so the rows
are permuted by one gather (see ``_rows.py``): no loop over elements, no padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._packed import batch_dim, element_dim, normalize_dim
from ._registry import implements, implements_aten
from ._rows import gather_rows, ragged_sizes
from .indexing import select_elements
from .reshape import reshape_elements
from .shape import permute_elements

aten = torch.ops.aten


def _element_dims(nt: NestedTensor, dims: Sequence[int], op: str) -> list[int]:
    """Element dims named by NestedTensor ``dims``; the batch dim raises."""
    batch = batch_dim(nt)
    if any(normalize_dim(d, nt.dim()) == batch for d in dims):
        raise ValueError(f"Cannot {op} along the batch dimension of a NestedTensor, got dims {list(dims)}")
    return [element_dim(nt, d) for d in dims]


def flip_elements(nt: NestedTensor, dims: Sequence[int]) -> NestedTensor:
    r"""
    Reverse every element along element ``dims``.

    Examples:
        >>> flip_elements(NestedTensor([[1, 2, 3], [4, 5]]), [0])
        NestedTensor([
            [3, 2, 1],
            [5, 4]
        ])
    """
    layout = nt._layout
    levels = sorted({layout.ragged_dims.index(d) for d in dims if d in layout.ragged_dims})
    static = sorted({layout.values_dim(d) for d in dims if d not in layout.ragged_dims})
    values = nt._values
    if levels:
        sizes = ragged_sizes(layout, values.device)

        def source(batch: Tensor, coordinates: list[Tensor]) -> list[Tensor]:
            return [sizes[batch, j] - 1 - c if j in levels else c for j, c in enumerate(coordinates)]

        values = gather_rows(nt, layout, ("flip", tuple(levels)), source)
    if static:
        values = values.flip(static)
    return nt._rewrap(values)


@implements_aten(aten.flip.default)
def flip(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.flip(nt, dims)``: reverse every element along ``dims``; the batch dim reverses the order of the elements.

    Examples:
        >>> nt = NestedTensor([torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.tensor([[7, 8]])])
        >>> nt.flip(1)
        NestedTensor([
            [[5, 6],
             [3, 4],
             [1, 2]],
            [[7, 8]]
        ])
        >>> nt.flip([1, 2])[0]
        tensor([[6, 5],
                [4, 3],
                [2, 1]])
    """
    nt, dims = args[0], list(args[1] if len(args) > 1 else kwargs["dims"])
    batch = [d for d in dims if normalize_dim(d, nt.dim()) == batch_dim(nt)]
    flipped = flip_elements(nt, _element_dims(nt, [d for d in dims if d not in batch], "flip"))
    if len(batch) % 2:
        flipped = select_elements(flipped, list(reversed(range(len(nt)))))
    return flipped


def roll_elements(nt: NestedTensor, shifts: Sequence[int], dims: Sequence[int]) -> NestedTensor:
    """Roll every element by ``shifts`` along element ``dims`` (ragged dims: by each element's own size)."""
    layout, values = nt._layout, nt._values
    ragged_shifts: dict[int, int] = {}
    for shift, dim in zip(shifts, dims):
        if dim in layout.ragged_dims:
            level = layout.ragged_dims.index(dim)
            ragged_shifts[level] = ragged_shifts.get(level, 0) + shift
        else:
            values = values.roll(shift, layout.values_dim(dim))
    if ragged_shifts:
        rolled = nt._rewrap(values) if values is not nt._values else nt
        sizes = ragged_sizes(layout, values.device)

        def source(batch: Tensor, coordinates: list[Tensor]) -> list[Tensor]:
            return [
                torch.remainder(c - ragged_shifts[j], sizes[batch, j]) if j in ragged_shifts else c
                for j, c in enumerate(coordinates)
            ]

        values = gather_rows(rolled, layout, ("roll", tuple(sorted(ragged_shifts.items()))), source)
    return nt._rewrap(values)


@implements_aten(aten.roll.default)
def roll(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.roll(nt, shifts, dims)``: roll every element; without dims, each element rolls as if flattened.

    Rolling the batch dim rotates the order of the elements. Without dims, every element rolls in
    row-major order: one gather (three when the layout is permuted).

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> nt.roll(1, 1)
        NestedTensor([
            [3, 1, 2],
            [5, 4]
        ])
        >>> NestedTensor([torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6]])]).roll(1)
        NestedTensor([
            [[4, 1],
             [2, 3]],
            [[6, 5]]
        ])
    """
    nt = args[0]
    shifts = list(args[1]) if len(args) > 1 else list(kwargs["shifts"])
    dims = list(args[2]) if len(args) > 2 else list(kwargs.get("dims", ()))
    if not dims:
        if len(shifts) != 1:
            raise RuntimeError(f"roll: shifts {shifts} need dims when more than one is given")
        shapes = nt._layout.element_shapes
        flat = reshape_elements(nt, [(prod(shape),) for shape in shapes])
        return reshape_elements(roll_elements(flat, shifts, [0]), list(shapes))
    if len(shifts) != len(dims):
        raise RuntimeError(f"shifts and dimensions must align. shifts: {len(shifts)}, dims:{len(dims)}")
    on_batch = [normalize_dim(d, nt.dim()) == batch_dim(nt) for d in dims]
    inside = [(shift, d) for shift, d, batch in zip(shifts, dims, on_batch) if not batch]
    rolled = roll_elements(nt, [s for s, _ in inside], _element_dims(nt, [d for _, d in inside], "roll"))
    shift = sum(s for s, batch in zip(shifts, on_batch) if batch)
    if shift % max(len(nt), 1):
        rolled = select_elements(rolled, [(i - shift) % len(nt) for i in range(len(nt))])
    return rolled


@implements(torch.rot90, Tensor.rot90)
def rot90(input: NestedTensor, k: int = 1, dims: Sequence[int] | None = None) -> NestedTensor:
    r"""
    Rotate every element by ``k`` quarter turns in the plane of ``dims``: a flip and a (free) transpose.

    ``dims`` are NestedTensor dims; left out, the plane is the first two element dims (the spec's
    default ``(0, 1)`` would name the batch dim, so it could only raise).

    Examples:
        >>> nt = NestedTensor([torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.tensor([[7, 8]])])
        >>> nt.rot90()
        NestedTensor([
            [[2, 4, 6],
             [1, 3, 5]],
            [[8],
             [7]]
        ])
        >>> torch.equal(torch.rot90(nt, -1, (1, 2))[0], torch.rot90(nt[0], -1, (0, 1)))
        True
    """
    if dims is None:
        if input._layout.rank < 2:
            raise RuntimeError(f"expected total dims >= 2, but got total dims = {input._layout.rank + 1}")
        first, second = 0, 1
    else:
        if len(dims) != 2:
            raise RuntimeError(f"expected total rotation dims == 2, but got dims = {len(dims)}")
        first, second = _element_dims(input, dims, "rotate")
        if first == second:
            raise RuntimeError(f"expected rotation dims to be different, but got dim0 = {dims[0]} and dim1 = {dims[1]}")
    turns = k % 4
    if turns == 0:
        return input.clone()
    if turns == 2:
        return flip_elements(input, [first, second])
    order = list(range(input._layout.rank))
    order[first], order[second] = second, first
    flipped = flip_elements(input, [second if turns == 1 else first])
    return permute_elements(flipped, order)


__all__ = ["flip", "flip_elements", "roll", "roll_elements", "rot90"]
