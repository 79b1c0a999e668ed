r"""
Row arithmetic for ops that move data along ragged dims: one gather of rows, no loop, no padding.

A row of ``values`` is one position along the ragged dims of one element: ``layout.row_coordinates``
gives, per row, the element and its coordinate along every ragged dim (in ``layout.ragged_dims``
order). An op that moves data along ragged dims (flip, roll, slicing, cat, sort) maps the coordinates
of every row of its result to the coordinates it reads in the source; [`row_index`][danling.tensors.ops._rows.row_index]
turns those back into source rows and one ``index_select`` moves the data (its backward is one
``index_add``). Index tensors are cached on the source layout, keyed by the op and its arguments,
so a training loop pays for them once per layout.

Layouts with the same permutation but fewer ragged dims are converted for free:
[`with_ragged_rank`][danling.tensors.ops._rows.with_ragged_rank] folds leading static dims into the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor

Coordinates = tuple[Tensor, list[Tensor]]
"""``(batch, [coordinate along each ragged dim])`` of a set of rows, all ``(rows,)`` int64 tensors."""


def ragged_sizes(layout: NestedLayout, device: torch.device) -> Tensor:
    """``(B, ragged_rank)`` sizes of every element along the ragged dims, on ``device`` (cached)."""
    dims = list(layout.ragged_dims)
    return layout._cached("rows.ragged_sizes", device, lambda device: layout.sizes_on(device)[:, dims])


def ragged_strides(layout: NestedLayout, device: torch.device) -> Tensor:
    """``(B, ragged_rank)``: how many rows apart consecutive positions along each ragged dim are, per element."""

    def build(device: torch.device) -> Tensor:
        sizes = layout.shape_tensor[:, list(layout.ragged_dims)]
        suffix = torch.ones_like(sizes)
        if sizes.shape[1] > 1:
            suffix[:, :-1] = sizes.flip(1).cumprod(1).flip(1)[:, 1:]
        return layout.to_device(suffix, device)

    return layout._cached("rows.ragged_strides", device, build)


def row_coordinates(layout: NestedLayout, device: torch.device) -> Coordinates:
    """``(batch, coordinates)`` of every row of ``layout`` (see ``NestedLayout.row_coordinates``)."""
    batch, *coordinates = layout.row_coordinates(device)
    return batch, list(coordinates)


def row_index(layout: NestedLayout, batch: Tensor, coordinates: Sequence[Tensor], device: torch.device) -> Tensor:
    r"""
    Rows of ``layout`` at ``coordinates`` (one tensor per ragged dim, ``layout.ragged_dims`` order) in ``batch``.

    Examples:
        >>> layout = NestedLayout.from_shapes([(3, 2), (2, 4)])  # both dims ragged
        >>> row_index(layout, torch.tensor([0, 1]), [torch.tensor([2, 1]), torch.tensor([1, 3])], torch.device("cpu"))
        tensor([ 5, 13])
    """
    index = layout.offsets_on(device)[batch]
    if layout.ragged_rank == 1:
        return index + coordinates[0]
    strides = ragged_strides(layout, device)[batch]
    for level, coordinate in enumerate(coordinates):
        index = index + coordinate * strides[:, level]
    return index


def gather_rows(
    nt: NestedTensor,
    layout: NestedLayout,
    key: tuple,
    source: Callable[[Tensor, list[Tensor]], list[Tensor]],
) -> Tensor:
    r"""
    Values of a result laid out by ``layout``, whose rows read ``nt``'s rows at ``source(batch, coordinates)``.

    ``source`` maps the coordinates of the result's rows to coordinates in ``nt``; the index is cached
    on ``nt``'s layout under ``key``, which must name the op and every argument that shapes it.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> sizes = ragged_sizes(nt._layout, nt.device)
        >>> gather_rows(nt, nt._layout, ("reverse",), lambda batch, c: [sizes[batch, 0] - 1 - c[0]])
        tensor([3, 2, 1, 5, 4])
    """
    values, source_layout = nt._values, nt._layout

    def build(device: torch.device) -> Tensor:
        batch, coordinates = row_coordinates(layout, device)
        return row_index(source_layout, batch, source(batch, coordinates), device)

    index = source_layout._cached(("rows", *key), values.device, build)
    return values.index_select(0, index)


def with_ragged_rank(nt: NestedTensor, ragged_rank: int) -> tuple[Tensor, NestedLayout]:
    r"""
    ``nt``'s values and layout with its first static dims folded into the rows, so ``ragged_rank`` dims are ragged.

    The permutation is kept, so the rows stay in row-major order over the (now more) ragged dims and
    no data moves: the result is a view whenever ``values`` allows one.

    Examples:
        >>> nt = NestedTensor([torch.zeros(3, 4, 2), torch.zeros(5, 4, 2)])
        >>> values, layout = with_ragged_rank(nt, 2)
        >>> tuple(values.shape), layout.ragged_dims, layout.static_sizes
        ((32, 2), (0, 1), (2,))
    """
    layout = nt._layout
    folded = ragged_rank - layout.ragged_rank
    if folded <= 0:
        return nt._values, layout
    if ragged_rank > layout.rank:
        raise ValueError(f"Cannot make {ragged_rank} dims ragged in elements of rank {layout.rank}")
    values = nt._values.flatten(0, folded) if nt._values.dim() > 1 else nt._values
    new_layout = NestedLayout(layout.element_shapes, layout.permutation, ragged_rank, layout.static_sizes[folded:])
    return values, new_layout


def row_major_positions(layout: NestedLayout, device: torch.device) -> Tensor:
    r"""
    For every value of ``values.flatten()``, its position when the elements are listed in row-major order.

    Computed per row and per static position (never with per-value division), and cached.

    Examples:
        >>> layout = NestedLayout.from_shapes([(2, 3), (2, 1)])  # dim 1 ragged, dim 0 static: permuted
        >>> row_major_positions(layout, torch.device("cpu"))
        tensor([0, 3, 1, 4, 2, 5, 6, 7])
    """

    def build(device: torch.device) -> Tensor:
        if not layout.permutation:
            return torch.arange(layout.batch_size, device=device)
        shapes = layout.shape_tensor
        strides = torch.ones_like(shapes)
        if layout.rank > 1:
            strides[:, :-1] = shapes.flip(1).cumprod(1).flip(1)[:, 1:]
        numels = shapes.prod(1)
        strides = layout.to_device(strides, device)
        starts = layout.to_device(numels.cumsum(0) - numels, device)
        batch, coordinates = row_coordinates(layout, device)
        positions = starts[batch]
        for coordinate, dim in zip(coordinates, layout.ragged_dims):
            positions = positions + coordinate * strides[batch, dim]
        if not layout.static_dims:
            return positions
        batch_size, static = layout.batch_size, len(layout.static_dims)
        grid = torch.zeros(batch_size, *layout.static_sizes, dtype=torch.long, device=device)
        for position, (dim, size) in enumerate(zip(layout.static_dims, layout.static_sizes)):
            shape = [batch_size] + [1] * static
            shape[1 + position] = size
            grid = grid + (torch.arange(size, device=device) * strides[:, dim : dim + 1]).view(shape)
        return (positions.unsqueeze(1) + grid.reshape(batch_size, -1)[batch]).reshape(-1)

    return layout._cached("rows.row_major", device, build)


def row_major_values(nt: NestedTensor) -> Tensor:
    """Every element's values in row-major order, one element after the other (1-D; a view when the layout allows)."""
    layout, values = nt._layout, nt._values
    flat = values.reshape(-1)
    if layout.is_identity:
        return flat
    return flat.new_zeros(flat.shape).index_copy(0, row_major_positions(layout, values.device), flat)


def from_row_major(flat: Tensor, layout: NestedLayout) -> Tensor:
    """Values of ``layout`` from its elements in row-major order (the inverse of ``row_major_values``)."""
    shape = (layout.num_rows, *layout.static_sizes) if layout.permutation else (layout.batch_size,)
    if layout.is_identity:
        return flat.reshape(shape)
    return flat.index_select(0, row_major_positions(layout, flat.device)).reshape(shape)


PER_ELEMENT_MIN_SIZE = 32
"""On CPU, from this many values per element on average, one native call per element (on views of the
packed values) beats a batch-wide formulation (a sort or scan over all rows, a gather by a computed
index): measured by ``benchmarks/nested_shape_ops.py`` and sweeps of batch size against length. On
CUDA the batch-wide formulation always runs: a kernel launch per element costs more than the extra work."""


def prefer_per_element(nt: NestedTensor) -> bool:
    """Whether a data-moving op along ragged dims should run once per element (large elements on the CPU)."""
    values = nt._values
    return values.device.type == "cpu" and 0 < values.numel() >= PER_ELEMENT_MIN_SIZE * len(nt)


def is_uniform(layout: NestedLayout) -> bool:
    """Whether every element has the same shape (the values are then a dense tensor in disguise)."""
    shapes = layout.element_shapes
    return bool(shapes) and shapes.count(shapes[0]) == len(shapes)


def repack(nt: NestedTensor, permutation: tuple[int, ...], ragged_rank: int) -> tuple[Tensor, NestedLayout] | None:
    r"""
    ``nt``'s values and layout in another packing, or ``None`` when that would take a loop over elements.

    The same permutation with more ragged dims is a view (``with_ragged_rank``); elements that all
    share one shape are one dense ``permute`` and copy away from any packing.

    Examples:
        >>> nt = NestedTensor([torch.arange(6).view(2, 3), torch.arange(6, 12).view(2, 3)])
        >>> values, layout = repack(nt, (1, 0), 1)
        >>> values.tolist(), layout.element_shapes
        ([[0, 3], [1, 4], [2, 5], [6, 9], [7, 10], [8, 11]], ((2, 3), (2, 3)))
    """
    layout = nt._layout
    if permutation == layout.permutation and ragged_rank >= layout.ragged_rank:
        return with_ragged_rank(nt, ragged_rank)
    if not is_uniform(layout) or len(permutation) != layout.rank:
        return None
    shape = layout.element_shapes[0]
    dense = nt._values.reshape(len(nt), *(shape[d] for d in layout.permutation))
    dense = dense.permute(0, *(1 + layout.permutation.index(d) for d in permutation))
    static = tuple(shape[d] for d in permutation[ragged_rank:])
    rows = len(nt) * prod(shape[d] for d in permutation[:ragged_rank])
    values = dense.reshape(rows, *static)
    return values, NestedLayout(layout.element_shapes, permutation, ragged_rank, static)


__all__ = [
    "PER_ELEMENT_MIN_SIZE",
    "from_row_major",
    "gather_rows",
    "is_uniform",
    "prefer_per_element",
    "ragged_sizes",
    "ragged_strides",
    "repack",
    "row_coordinates",
    "row_index",
    "row_major_positions",
    "row_major_values",
    "with_ragged_rank",
]
