r"""
Order inside every element: ``sort``, ``argsort``, ``topk``; scans: ``cumsum``, ``cumprod``, ``logcumsumexp``,
``cummax``, ``cummin``; ``searchsorted`` and ``bucketize`` against dense boundaries.

Dims are NestedTensor dims; the batch dim raises (elements have no order across it). Along a static
dim the op runs on the packed values as they are. Along a ragged dim every element has its own length:

- large elements on the CPU (``prefer_per_element``) sort and scan one by one, on views of the
  values: a native sort of each element is faster than any batch-wide formulation (a documented
  slow path);
- otherwise (many short elements, or CUDA) the rows are grouped into *segments* (one element, one
  position along the other ragged dims; ``segments`` gives every row's position and, when the dim
  is not the last ragged one, the order that makes segments contiguous), and with no loop:
  ``sort``/``argsort``/``topk`` are a stable sort of the values over all rows then a stable sort of
  the segment keys; ``cumsum`` is one running sum over all rows (in float64, or int64 for integers)
  minus the sum before the segment's first row, exact for integers and within float64 rounding of
  the batch-wide running sum for floats; ``cumprod``, ``logcumsumexp``, ``cummax``, ``cummin`` take
  ``ceil(log2(longest))`` doubling steps, each combining a row with the one ``2**k`` before it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._arguments import bind
from ._fallback import per_element_fallback
from ._packed import batch_dim, element_dim, is_nested, normalize_dim
from ._registry import check_slow_path, implements_aten
from ._rows import prefer_per_element, ragged_strides, row_coordinates
from .slicing import cut

aten = torch.ops.aten


def _element_dim(nt: NestedTensor, dim: int, op: str) -> int:
    if normalize_dim(dim, nt.dim()) == batch_dim(nt):
        raise ValueError(f"Cannot {op} along the batch dimension of a NestedTensor: elements have no order across it")
    return element_dim(nt, dim)


def segments(nt: NestedTensor, dim: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    r"""
    ``(position, key, order, inverse)`` of every row for scans and sorts along ragged element ``dim``.

    ``position`` is the row's coordinate along ``dim``, ``key`` the first row of its segment; ``order``
    lists the rows segment by segment (``None`` when they already are, ``dim`` being the last ragged
    dim) and ``inverse`` undoes it. Cached on the layout.

    Examples:
        >>> nt = NestedTensor([torch.zeros(2, 3), torch.zeros(1, 2)]).transpose(1, 2)
        >>> position, key, order, inverse = segments(nt, 1)
        >>> position.tolist(), key.tolist(), order.tolist()
        ([0, 0, 0, 1, 1, 1, 0, 0], [0, 1, 2, 0, 1, 2, 6, 7], [0, 3, 1, 4, 2, 5, 6, 7])
    """
    layout = nt._layout
    level = layout.ragged_dims.index(dim)

    def build(device: torch.device) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        batch, coordinates = row_coordinates(layout, device)
        position = coordinates[level]
        rows = torch.arange(layout.num_rows, device=device)
        if level == layout.ragged_rank - 1:
            return position, rows - position, None, None
        key = rows - position * ragged_strides(layout, device)[batch, level]
        order = torch.sort(key, stable=True).indices
        return position, key, order, torch.argsort(order)

    return layout._cached(("sorting.segments", level), nt._values.device, build)


def _per_element(nt: NestedTensor, op: Callable[[Tensor], object]) -> list:
    """``op`` of every element (views of the values): the path for large elements on the CPU (``prefer_per_element``)."""
    check_slow_path(f"{op} per element: large elements on the CPU sort and scan faster one by one")
    return [op(element) for element in nt._layout.unpack(nt._values)]


def _grouped(values: Tensor, order: Tensor | None) -> Tensor:
    return values if order is None else values.index_select(0, order)


def _along_rows(position: Tensor, values: Tensor) -> Tensor:
    """``position`` shaped to broadcast against ``values`` (rows first)."""
    return position.view(-1, *([1] * (values.dim() - 1)))


# ------------------------------------------------------------------------------------------------ sort


def _sort_ragged(nt: NestedTensor, dim: int, descending: bool, stable: bool) -> tuple[Tensor, Tensor]:
    """Values and in-element indices of ``nt`` sorted along ragged ``dim``."""
    position, key, _, inverse = segments(nt, dim)
    values = nt._values
    by_value = values.sort(dim=0, descending=descending, stable=stable).indices
    keys = key.view(-1, *([1] * (values.dim() - 1))).expand_as(values) if values.dim() > 1 else key
    by_segment = keys.gather(0, by_value).sort(dim=0, stable=True).indices
    source = by_value.gather(0, by_segment)
    if inverse is not None:
        source = source.index_select(0, inverse)
    return values.gather(0, source), position[source]


def sort_elements(
    nt: NestedTensor, dim: int, descending: bool = False, stable: bool = False
) -> tuple[NestedTensor, NestedTensor]:
    """Sort every element along NestedTensor ``dim``; returns ``(values, indices)`` NestedTensors."""
    target = _element_dim(nt, dim, "sort")
    layout = nt._layout
    if target in layout.ragged_dims and prefer_per_element(nt):
        results = _per_element(nt, lambda e: e.sort(dim=target, descending=descending, stable=stable))
        values, indices = (layout.pack(list(part)) for part in zip(*results))
    elif target in layout.ragged_dims:
        values, indices = _sort_ragged(nt, target, descending, stable)
    else:
        values, indices = nt._values.sort(dim=layout.values_dim(target), descending=descending, stable=stable)
    return nt._rewrap(values), nt._rewrap(indices)


@implements_aten(aten.sort.default, aten.sort.stable)
def sort(func, args, kwargs) -> tuple[NestedTensor, NestedTensor]:
    r"""
    ``torch.sort(nt, dim)``: every element sorted along ``dim``, with in-element indices.

    Examples:
        >>> values, indices = NestedTensor([[3, 1, 2], [5, 4]]).sort()
        >>> values
        NestedTensor([
            [1, 2, 3],
            [4, 5]
        ])
        >>> indices.tolist()
        [[1, 2, 0], [1, 0]]
    """
    bound = bind(func, args, kwargs)
    return sort_elements(bound["self"], bound["dim"], bound["descending"], bool(bound.get("stable")))


@implements_aten(aten.argsort.default, aten.argsort.stable)
def argsort(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.argsort(nt, dim)``: in-element indices that sort every element.

    Examples:
        >>> NestedTensor([[3, 1, 2], [5, 4]]).argsort(descending=True).tolist()
        [[0, 2, 1], [0, 1]]
    """
    bound = bind(func, args, kwargs)
    return sort_elements(bound["self"], bound["dim"], bound["descending"], bool(bound.get("stable")))[1]


@implements_aten(aten.topk.default)
def topk(func, args, kwargs) -> tuple[NestedTensor, NestedTensor]:
    r"""
    ``torch.topk(nt, k, dim)``: the ``k`` largest (or smallest) entries of every element along ``dim``.

    Along a ragged dim every element needs at least ``k`` entries; the result is always sorted.

    Examples:
        >>> values, indices = torch.topk(NestedTensor([[3, 1, 2], [5, 4]]), 2)
        >>> values.tolist(), indices.tolist()
        ([[3, 2], [5, 4]], [[0, 2], [0, 1]])
    """
    bound = bind(func, args, kwargs)
    nt, k, dim, largest = bound["self"], bound["k"], bound["dim"], bound["largest"]
    target = _element_dim(nt, dim, "topk")
    layout = nt._layout
    if target not in layout.ragged_dims:
        values, indices = nt._values.topk(k, layout.values_dim(target), largest, bound["sorted"])
        new_layout = layout.with_static_sizes(values.shape[1:])
        return nt._rewrap(values, new_layout), nt._rewrap(indices, new_layout)
    shortest = min((shape[target] for shape in layout.element_shapes), default=k)
    if not 0 <= k <= shortest:
        raise RuntimeError(
            f"selected index k out of range: k={k} but an element has {shortest} entries along dim {dim}"
        )
    if prefer_per_element(nt):
        results = _per_element(nt, lambda e: e.topk(k, target, largest, True))
        new_layout = NestedLayout(
            tuple((*s[:target], k, *s[target + 1 :]) for s in layout.element_shapes),
            layout.permutation,
            layout.ragged_rank,
            layout.static_sizes,
        )
        return tuple(nt._rewrap(new_layout.pack(list(part)), new_layout) for part in zip(*results))
    values, indices = sort_elements(nt, dim, descending=largest)
    return cut(values, dim, lambda size: (0, k), ("topk", k)), cut(indices, dim, lambda size: (0, k), ("topk", k))


# ------------------------------------------------------------------------------------------------ scans


def _scan_dtype(values: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """Result dtype of ``torch.cumsum``/``cumprod``: integers and bools widen to int64."""
    if dtype is not None:
        return dtype
    return values.dtype if values.is_floating_point() or values.is_complex() else torch.int64


def _segmented_cumsum(values: Tensor, position: Tensor, dtype: torch.dtype) -> Tensor:
    """Running sums restarting at every segment (rows of a segment contiguous), one pass over all rows."""
    wide = torch.complex128 if dtype.is_complex else torch.float64 if dtype.is_floating_point else torch.int64
    running = values.to(wide).cumsum(0)
    first = torch.arange(values.shape[0], device=values.device) - position
    before = running.index_select(0, first) - values.to(wide).index_select(0, first)
    return (running - before).to(dtype)


def _doubling_scan(values: Tensor | tuple, position: Tensor, longest: int, combine: Callable) -> Tensor | tuple:
    """Inclusive scan of ``combine`` restarting at every segment: ``ceil(log2(longest))`` vectorised steps."""
    result, step = values, 1
    parts = isinstance(values, tuple)
    reference = values[0] if parts else values
    while step < longest:
        inside = _along_rows(position >= step, reference)
        if parts:
            earlier = tuple(part.roll(step, 0) for part in result)
            result = tuple(torch.where(inside, new, old) for new, old in zip(combine(earlier, result), result))
        else:
            result = torch.where(inside, combine(result.roll(step, 0), result), result)
        step *= 2
    return result


def _extremum(larger: bool) -> Callable:
    """Combine two running (max or min, index) pairs as torch does: the later wins ties, and NaN beats numbers."""

    def combine(earlier: tuple[Tensor, Tensor], later: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        (first, first_index), (second, second_index) = earlier, later
        take = second >= first if larger else second <= first
        if first.is_floating_point() or first.is_complex():
            take = torch.isnan(second) | (~torch.isnan(first) & take)
        return torch.where(take, second, first), torch.where(take, second_index, first_index)

    return combine


def _static_scan(values: Tensor, along: int, op: str) -> Tensor | tuple[Tensor, Tensor]:
    if op in ("cummax", "cummin"):
        return tuple(getattr(torch, op)(values, along))
    if op in ("cumsum", "cumprod"):  # the values are already in the result dtype
        return getattr(torch, op)(values, along, dtype=values.dtype)
    return getattr(torch, op)(values, along)


def _scan(nt: NestedTensor, dim: int, op: str, dtype: torch.dtype | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Packed values of a scan of every element along NestedTensor ``dim``."""
    target = _element_dim(nt, dim, op)
    layout, values = nt._layout, nt._values
    if op in ("cumsum", "cumprod"):
        values = values.to(_scan_dtype(values, dtype))
    if target not in layout.ragged_dims:
        return _static_scan(values, layout.values_dim(target), op)
    if prefer_per_element(nt):
        results = _per_element(nt._rewrap(values), lambda e: _static_scan(e, target, op))
        if op in ("cummax", "cummin"):
            return tuple(layout.pack(list(part)) for part in zip(*results))
        return layout.pack(results)
    position, _, order, inverse = segments(nt, target)
    grouped, position = _grouped(values, order), _grouped(position, order)
    longest = layout.max_sizes[target]
    if op == "cumsum":
        result = _segmented_cumsum(grouped, position, grouped.dtype)
    elif op in ("cummax", "cummin"):
        index = _along_rows(position, grouped).expand_as(grouped)
        result = _doubling_scan((grouped, index), position, longest, _extremum(op == "cummax"))
    else:
        result = _doubling_scan(grouped, position, longest, torch.mul if op == "cumprod" else torch.logaddexp)
    if inverse is None:
        return result
    if isinstance(result, tuple):
        return tuple(part.index_select(0, inverse) for part in result)
    return result.index_select(0, inverse)


@implements_aten(aten.cumsum.default, aten.cumprod.default, aten.logcumsumexp.default)
def scan(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.cumsum``/``cumprod``/``logcumsumexp`` of every element along ``dim``.

    Examples:
        >>> NestedTensor([[1, 2, 3], [4, 5]]).cumsum(1)
        NestedTensor([
            [1, 3, 6],
            [4, 9]
        ])
        >>> NestedTensor([[1.0, 2.0, 3.0], [4.0, 5.0]]).cumprod(-1).tolist()
        [[1.0, 2.0, 6.0], [4.0, 20.0]]
    """
    bound = bind(func, args, kwargs)
    op = func._schema.name.split("::")[1]
    return bound["self"]._rewrap(_scan(bound["self"], bound["dim"], op, bound.get("dtype")))


@implements_aten(aten.cummax.default, aten.cummin.default)
def running_extremum(func, args, kwargs) -> tuple[NestedTensor, NestedTensor]:
    r"""
    ``torch.cummax``/``cummin`` of every element along ``dim``, with in-element indices.

    Examples:
        >>> values, indices = NestedTensor([[1, 3, 2], [5, 4]]).cummax(1)
        >>> values.tolist(), indices.tolist()
        ([[1, 3, 3], [5, 5]], [[0, 1, 1], [0, 0]])
    """
    bound = bind(func, args, kwargs)
    nt = bound["self"]
    values, indices = _scan(nt, bound["dim"], func._schema.name.split("::")[1])
    return nt._rewrap(values), nt._rewrap(indices)


# ------------------------------------------------------------------------------------------------ search


def _check_sorter(boundaries: Tensor, sorter: Tensor | None) -> None:
    """``sorter`` must have the shape of ``boundaries``: the same elements when either is nested."""
    if sorter is None:
        return
    if is_nested(boundaries) and is_nested(sorter):
        same = boundaries._layout.element_shapes == sorter._layout.element_shapes
    else:
        same = not is_nested(boundaries) and not is_nested(sorter) and boundaries.shape == sorter.shape
    if not same:
        raise RuntimeError(
            "torch.searchsorted(): boundary and sorter must have the same size, but got boundary tensor "
            f"{list(boundaries.shape)}and got sorter tensor {list(sorter.shape)}"
            + (
                " (a NestedTensor of sorted sequences takes a NestedTensor sorter of the same element shapes)"
                if is_nested(boundaries) or is_nested(sorter)
                else ""
            )
        )


@implements_aten(aten.searchsorted.Tensor, aten.searchsorted.Scalar)
def searchsorted(func, args, kwargs) -> Tensor:
    r"""
    ``torch.searchsorted(boundaries, nt)``: dense 1-D boundaries search the packed values at once.

    A NestedTensor of sorted sequences searches element by element (a documented slow path: each
    element has its own boundaries); its ``sorter`` is then a NestedTensor of the same element
    shapes. A ``sorter`` has the shape of the boundaries, as torch requires.

    Examples:
        >>> torch.searchsorted(torch.tensor([1, 3, 5]), NestedTensor([[0, 4], [6]]))
        NestedTensor([
            [0, 2],
            [3]
        ])
    """
    bound = bind(func, args, kwargs)
    boundaries, nt = bound["sorted_sequence"], bound["self"]
    _check_sorter(boundaries, bound.get("sorter"))
    if is_nested(boundaries) or not is_nested(nt) or boundaries.dim() != 1:
        return per_element_fallback(func, args, kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in ("sorted_sequence", "self")}
    return nt._rewrap(func(boundaries, nt._values, *args[2:], **rest))


@implements_aten(aten.bucketize.Tensor)
def bucketize(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.bucketize(nt, boundaries)``: the bucket of every value, on the packed values.

    Examples:
        >>> torch.bucketize(NestedTensor([[0, 4], [6]]), torch.tensor([1, 3, 5]))
        NestedTensor([
            [0, 2],
            [3]
        ])
    """
    nt, boundaries = args[0], args[1]
    if is_nested(boundaries) or not is_nested(nt):
        return per_element_fallback(func, args, kwargs)
    return nt._rewrap(func(nt._values, boundaries, *args[2:], **kwargs))


__all__ = [
    "argsort",
    "bucketize",
    "running_extremum",
    "scan",
    "searchsorted",
    "segments",
    "sort",
    "sort_elements",
    "topk",
]
