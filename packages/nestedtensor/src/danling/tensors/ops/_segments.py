r"""
Segments: which packed values a reduction over some NestedTensor dims combines, and where the result goes.

A reduction over a set of dims (in NestedTensor coordinates) is planned once per layout and cached on
it. The plan splits the work in two vectorised steps:

1. static dims to reduce are reduced on ``values`` directly (``keepdim=True``, squeezed at the end);
2. ragged dims to reduce fold rows together: every row of ``values`` gets a *slot* (``target``) and
   one ``index_add``/``scatter_reduce`` combines the rows of each slot.

Slots depend on what the reduction keeps:

- the batch dim alone: one slot per element (every element reduced whole);
- element dims only: the rows of the *reduced layout* (each element keeps its own sizes along the
  dims that remain);
- the batch dim with some element dims: the positions of the padded grid over the remaining ragged
  dims (what reducing the padded tensor would give, padding excluded).

``ReductionPlan.finish`` turns the per-slot values into the op's result: a dense tensor where all
per-element results share a shape, a NestedTensor otherwise. Nothing here loops over elements or
pads; the index tensors are built from the layout's CPU metadata and cached per device.
"""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor

from .._layout import NestedLayout, inverse_permutation
from ..nested_tensor import NestedTensor
from ._packed import batch_dim

_IDENTITY = {"sum": 0, "prod": 1, "amax": -float("inf"), "amin": float("inf")}


def identity(op: str, dtype: torch.dtype) -> float | int | bool:
    """The value of an empty ``op`` reduction (and the fill of slots no row reaches)."""
    if op in ("amax", "amin") and dtype == torch.bool:
        return op == "amin"
    if op in ("amax", "amin") and not (dtype.is_floating_point or dtype.is_complex):
        info = torch.iinfo(dtype)
        return info.min if op == "amax" else info.max
    return _IDENTITY[op]


def reduce_static(values: Tensor, op: str, dims: tuple[int, ...]) -> Tensor:
    """Reduce ``values`` over ``dims`` keeping them as size 1 (``prod`` takes one dim at a time)."""
    if not dims:
        return values
    if op == "sum":
        return values.sum(dims, keepdim=True)
    if op == "amax":
        return values.amax(dims, keepdim=True)
    if op == "amin":
        return values.amin(dims, keepdim=True)
    for dim in dims:
        values = values.prod(dim, keepdim=True)
    return values


def segment_reduce(rows: Tensor, target: Tensor, slots: int, op: str) -> Tensor:
    """Combine ``rows`` into ``slots`` rows by ``target`` (one index op); empty slots hold the identity."""
    if op == "sum":
        return rows.new_zeros((slots, *rows.shape[1:])).index_add(0, target, rows)
    out = rows.new_full((slots, *rows.shape[1:]), identity(op, rows.dtype))
    index = target.view(-1, *(1,) * (rows.dim() - 1)).expand_as(rows)
    return out.scatter_reduce(0, index, rows, reduce=op, include_self=False)


class ReductionPlan:
    r"""
    How to reduce the values of one layout over a set of dims; see the module docstring.

    Build it with [`plan_reduction`][danling.tensors.ops._segments.plan_reduction].

    Examples:
        >>> nt = NestedTensor([torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0]])])
        >>> plan = plan_reduction(nt, [1])  # along the ragged dim: one slot per element
        >>> plan.finish(plan.reduce(nt._values, "sum"), keepdim=False, like=nt)
        tensor([[4., 6.],
                [5., 6.]])
    """

    __slots__ = ("_finish", "counts", "reduced", "slots", "static", "target")

    def __init__(
        self,
        static: tuple[int, ...],
        target: Tensor | None,
        slots: int,
        counts: Tensor,
        finish,
        reduced: NestedLayout | None = None,
    ) -> None:
        self.static = static
        self.target = target
        self.slots = slots
        self.counts = counts
        self._finish = finish
        self.reduced = reduced

    def reduce(self, values: Tensor, op: str) -> Tensor:
        """``(slots, *static sizes, reduced ones at 1)``: ``values`` reduced with ``op`` (sum, prod, amax, amin)."""
        values = reduce_static(values, op, self.static)
        if self.target is None:
            return values
        return segment_reduce(values, self.target, self.slots, op)

    def expand(self, per_slot: Tensor) -> Tensor:
        """Per-slot values sent back to every row (to broadcast against ``values``)."""
        return per_slot if self.target is None else per_slot[self.target]

    def count(self, like: Tensor) -> Tensor:
        """How many values each slot combines, shaped to broadcast against ``reduce``'s result."""
        counts = self.counts.to(like.dtype if like.is_floating_point() or like.is_complex() else torch.float32)
        return counts.view(-1, *(1,) * (like.dim() - 1))

    def finish(self, per_slot: Tensor, keepdim: bool, like: NestedTensor) -> Tensor:
        """The op's result from the per-slot values: dense, or a NestedTensor of the reduced layout (``like``'s settings)."""
        return self._finish(per_slot, keepdim, like)


def plan_reduction(nt: NestedTensor, dims: list[int]) -> ReductionPlan:
    """The plan reducing ``nt`` over ``dims`` (sorted logical dims, at least one, not all), cached on its layout."""
    layout, batch = nt._layout, batch_dim(nt)
    key = ("reduction", tuple(dims), batch, nt.dim())
    return layout._cached(key, nt._values.device, lambda device: _build(layout, dims, batch, device))


def plan_across_batch(nt: NestedTensor) -> ReductionPlan:
    """The plan combining, at every position of the padded grid, the values of all elements there (cached)."""
    layout, batch = nt._layout, batch_dim(nt)
    key = ("across_batch", batch, nt.dim())
    return layout._cached(key, nt._values.device, lambda device: _across_batch(layout, set(), (), 1, batch, device))


def _build(layout: NestedLayout, dims: list[int], batch: int, device: torch.device) -> ReductionPlan:
    if dims == [batch]:
        return _per_element(layout, batch, device)
    element = {d - 1 if d > batch else d for d in dims if d != batch}
    static = tuple(layout.values_dim(d) for d in layout.static_dims if d in element)
    per_row = prod(s for d, s in zip(layout.static_dims, layout.static_sizes) if d in element)
    if batch in dims:
        return _across_batch(layout, element, static, per_row, batch, device)
    return _inside_elements(layout, element, static, per_row, device)


def _per_element(layout: NestedLayout, batch: int, device: torch.device) -> ReductionPlan:
    """The batch dim alone: every element reduced whole, ``(B,)``."""
    static = tuple(range(1, 1 + len(layout.static_sizes)))
    counts = torch.tensor([prod(shape) for shape in layout.element_shapes], dtype=torch.float64)
    target = layout.row_batch_index(device) if layout.permutation else None

    def finish(per_slot: Tensor, keepdim: bool, like: NestedTensor) -> Tensor:
        result = per_slot.reshape(layout.batch_size)
        return result.unsqueeze(batch) if keepdim else result

    return ReductionPlan(static, target, layout.batch_size, layout.to_device(counts, device), finish)


def reduced_layout(layout: NestedLayout, dims: set[int], keepdim: bool) -> tuple[NestedLayout, tuple[int, ...]]:
    """Layout of every element with ``dims`` reduced, and the kept static dims in element order."""
    shapes = tuple(tuple(1 if d in dims else s for d, s in enumerate(shape)) for shape in layout.element_shapes)
    static_sizes = tuple(1 if d in dims else s for d, s in zip(layout.static_dims, layout.static_sizes))
    if keepdim:
        return NestedLayout(shapes, layout.permutation, layout.ragged_rank, static_sizes), layout.static_dims
    renumber = {d: i for i, d in enumerate(d for d in range(layout.rank) if d not in dims)}
    shapes = tuple(tuple(s for d, s in enumerate(shape) if d not in dims) for shape in shapes)
    ragged = [renumber[d] for d in layout.ragged_dims if d not in dims]
    static = tuple(renumber[d] for d in layout.static_dims if d not in dims)
    kept_sizes = tuple(s for d, s in zip(layout.static_dims, static_sizes) if d not in dims)
    return NestedLayout(shapes, (*ragged, *static), len(ragged), kept_sizes), static


def _slot_of_rows(layout: NestedLayout, reduced: NestedLayout, dims: set[int], device: torch.device) -> Tensor:
    """Row of ``reduced`` each row of ``layout`` folds into (row-major over the kept ragged dims)."""
    batch, *coordinates = layout.row_coordinates(device)
    target = layout.to_device(torch.tensor(reduced.starts[:-1], dtype=torch.long), device)[batch]
    sizes = layout.sizes_on(device)[batch]
    stride = torch.ones_like(batch)
    for dim, coordinate in reversed(list(zip(layout.ragged_dims, coordinates))):
        if dim not in dims:
            target = target + coordinate * stride
            stride = stride * sizes[:, dim]
    return target


def _counts(target: Tensor | None, slots: int, rows: int, per_row: int, device: torch.device) -> Tensor:
    """Values per slot: ``per_row`` (reduced static sizes) times the rows landing in the slot."""
    if target is None:
        return torch.full((slots,), float(per_row), dtype=torch.float64, device=device)
    ones = torch.full((rows,), float(per_row), dtype=torch.float64, device=device)
    return torch.zeros(slots, dtype=torch.float64, device=device).index_add_(0, target, ones)


def uniform_dense(layout: NestedLayout, values: Tensor) -> Tensor:
    """``(B, *shape)`` from the values of a layout whose elements all have one shape (a view when possible)."""
    shape = layout.element_shapes[0] if layout.element_shapes else layout.max_sizes
    ragged = [shape[d] for d in layout.ragged_dims]
    dense = values.reshape(layout.batch_size, *ragged, *values.shape[1:])
    if layout.is_identity:
        return dense
    return dense.permute(0, *(1 + p for p in inverse_permutation(layout.permutation)))


def _inside_elements(
    layout: NestedLayout, element: set[int], static: tuple[int, ...], per_row: int, device: torch.device
) -> ReductionPlan:
    """Element dims only: slots are the rows of the reduced layout."""
    reduced, _ = reduced_layout(layout, element, keepdim=True)
    folds_rows = any(d in element for d in layout.ragged_dims)
    target = _slot_of_rows(layout, reduced, element, device) if folds_rows else None
    counts = _counts(target, reduced.num_rows, layout.num_rows, per_row, device)
    kept, _ = reduced_layout(layout, element, keepdim=False)
    uniform = len(set(reduced.element_shapes)) <= 1  # then the results of every element share a shape

    def finish(per_slot: Tensor, keepdim: bool, like: NestedTensor) -> Tensor:
        out = reduced if keepdim else kept
        values = per_slot if keepdim else per_slot.reshape(per_slot.shape[0], *out.static_sizes)
        if not out.permutation:  # every element reduced to a scalar
            return values.reshape(out.batch_size)
        return uniform_dense(out, values) if uniform else like._rewrap(values, out)

    return ReductionPlan(static, target, reduced.num_rows, counts, finish, reduced)


def _across_batch(
    layout: NestedLayout, element: set[int], static: tuple[int, ...], per_row: int, batch: int, device: torch.device
) -> ReductionPlan:
    """The batch dim with element dims: slots are positions of the padded grid over the kept ragged dims."""
    kept_ragged = [d for d in layout.ragged_dims if d not in element]
    grid = [layout.max_sizes[d] for d in kept_ragged]
    _, *coordinates = layout.row_coordinates(device)
    target = torch.zeros_like(coordinates[0])
    for dim, coordinate in zip(layout.ragged_dims, coordinates):
        if dim not in element:
            target = target * layout.max_sizes[dim] + coordinate
    slots = prod(grid)
    counts = _counts(target, slots, layout.num_rows, per_row, device)
    kept_static = [(d, s) for d, s in zip(layout.static_dims, layout.static_sizes) if d not in element]
    order = kept_ragged + [d for d, _ in kept_static]  # element dims of the grid values, in packing order
    to_element_order = sorted(range(len(order)), key=order.__getitem__)

    def finish(per_slot: Tensor, keepdim: bool, like: NestedTensor) -> Tensor:
        values = per_slot.reshape(*grid, *(s for _, s in kept_static)).permute(to_element_order)
        if not keepdim:
            return values
        for dim in sorted(element):
            values = values.unsqueeze(dim)
        return values.unsqueeze(batch)

    return ReductionPlan(static, target, slots, counts, finish)


def flat_index(layout: NestedLayout, device: torch.device, padded: bool) -> Tensor:
    r"""
    ``(rows, *static)``: where every packed value sits in its flattened element (row-major), or with
    ``padded=True`` in the flattened batch-first padded tensor. Cached on the layout.

    Examples:
        >>> layout = NestedLayout.from_shapes([(2, 3), (1, 3)])
        >>> flat_index(layout, torch.device("cpu"), padded=True)
        tensor([[0, 1, 2],
                [3, 4, 5],
                [6, 7, 8]])
    """

    def build(device: torch.device) -> Tensor:
        if not layout.permutation:
            return (
                torch.arange(layout.batch_size, device=device)
                if padded
                else torch.zeros_like(layout.row_batch_index(device))
            )
        batch, *coordinates = layout.row_coordinates(device)
        if padded:
            suffix = [prod(layout.max_sizes[d + 1 :]) for d in range(layout.rank)]
            strides = torch.tensor(suffix, device=device).expand(len(batch), -1)
            flat = batch * prod(layout.max_sizes)
        else:
            sizes = layout.sizes_on(device)[batch]
            strides = torch.cat([sizes.flip(1).cumprod(1).flip(1)[:, 1:], torch.ones_like(sizes[:, :1])], 1)
            flat = torch.zeros_like(batch)
        for dim, coordinate in zip(layout.ragged_dims, coordinates):
            flat = flat + coordinate * strides[:, dim]
        static = len(layout.static_sizes)
        flat = flat.view(-1, *(1,) * static)
        for position, (dim, size) in enumerate(zip(layout.static_dims, layout.static_sizes)):
            along = torch.arange(size, device=device).view(size, *(1,) * (static - position - 1))
            flat = flat + along * strides[:, dim].view(-1, *(1,) * static)
        return flat

    return layout._cached(("flat_index", padded), device, build)


__all__ = [
    "ReductionPlan",
    "flat_index",
    "identity",
    "plan_across_batch",
    "plan_reduction",
    "reduce_static",
    "reduced_layout",
    "segment_reduce",
    "uniform_dense",
]
