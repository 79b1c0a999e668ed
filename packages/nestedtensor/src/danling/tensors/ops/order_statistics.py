r"""
Order statistics: ``median``, ``nanmedian``, ``quantile``, ``nanquantile``.

They follow the reduction convention of ``sum`` and ``max`` (``reduction.py``), dims in NestedTensor
coordinates:

- no dim: one value over every real value (a 0-d tensor; ``quantile`` with a 1-D ``q`` gives one per q);
- the batch dim: one value per element, over the flattened element (``(B,)``; the indices of
  ``median`` point into the flattened element, as for ``max``);
- an element dim: the result of every element on its own, dense when all of them share a shape,
  a NestedTensor otherwise.

A 1-D ``q`` puts the quantiles first, as torch does: ``(Q, *result)`` for a dense result, elements of
``(Q, *element result)`` for a NestedTensor. NaN propagates as in torch (``median``/``quantile`` of a
slice with a NaN is NaN, the index of ``median`` is the first NaN's) and the ``nan*`` variants skip it.

How it runs, with no padding:

- along a static dim, torch's op runs on the packed values along that dim;
- along a ragged dim or the batch dim, every value gets the *cell* of the result it belongs to (the
  slots of the reduction plan, times the static positions that stay), two stable sorts order the
  values by cell and then by value (NaN last, as ``torch.sort`` puts it), and each cell reads its
  order statistic at ``start + rank`` in that order, ``rank`` computed from its count the way torch
  computes it for one tensor. Values are gathered from the input, so gradients flow to the values
  chosen (and interpolated), as for the dense ops;
- large elements on the CPU (``prefer_per_element``) run torch's op once per element instead, on
  views of the values (a documented slow path): there a native call per element is about ten times
  faster than sorting the whole batch (64 sequences of 16..512 by 256 features: 0.36 s against 3.9 s).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from math import prod
from typing import Any

import torch
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._packed import batch_dim, from_elements, is_nested, normalize_dim, split_elements
from ._registry import check_slow_path, continue_to_aten, implements, implements_aten
from ._rows import prefer_per_element
from ._segments import flat_index, plan_reduction, segment_reduce
from .joining import cat_elements
from .shape import unsqueeze_elements

aten = torch.ops.aten
_LAST = torch.iinfo(torch.int64).max


class _Cells:
    """Reducing along a ragged dim or the batch dim: every value's cell of the result, the index reported for it,
    and the values ordered by cell, then value."""

    def __init__(self, nt: NestedTensor, logical: int) -> None:
        values, device = nt._values, nt._values.device
        self.plan = plan = plan_reduction(nt, [logical])
        static = tuple(values.shape[1:])
        self.kept = tuple(1 if j + 1 in plan.static else s for j, s in enumerate(static))
        self.count = plan.slots * prod(self.kept)
        rows = plan.target if plan.target is not None else torch.arange(values.shape[0], device=device)
        cell = rows.view(-1, *(1,) * len(static)) * prod(self.kept)
        for j, size in enumerate(self.kept):
            if size > 1:
                shape = [1] * values.dim()
                shape[j + 1] = size
                cell = cell + torch.arange(size, device=device).view(shape) * prod(self.kept[j + 1 :])
        self.cell = cell.expand(values.shape).reshape(-1)
        self.position = self._positions(nt, logical).expand(values.shape).reshape(-1)
        self.values = values.reshape(-1)
        by_value = torch.sort(self.values.detach(), stable=True).indices
        self.order = by_value.gather(0, torch.sort(self.cell.gather(0, by_value), stable=True).indices)
        self.sizes = torch.bincount(self.cell, minlength=self.count)
        self.starts = self.sizes.cumsum(0) - self.sizes
        self.nan = self.values.isnan() if self.values.is_floating_point() else None
        self.nans = self.sizes.new_zeros(self.count)
        if self.nan is not None:
            self.nans = self.nans.index_add(0, self.cell, self.nan.to(torch.long))

    @staticmethod
    def _positions(nt: NestedTensor, logical: int) -> Tensor:
        """The index ``median`` reports for every value: along the reduced dim, or into the flattened element."""
        layout, values = nt._layout, nt._values
        batch = batch_dim(nt)
        if logical == batch:
            return flat_index(layout, values.device, padded=False)
        element = logical - 1 if logical > batch else logical  # a ragged dim: static ones never get here
        coordinate = layout.row_coordinates(values.device)[1 + layout.ragged_dims.index(element)]
        return coordinate.view(-1, *(1,) * (values.dim() - 1))

    def gather(self, rank: Tensor) -> Tensor:
        """Positions in ``values`` of the ``rank``-th value (per cell, broadcasting) in the sorted order."""
        return self.order[self.starts + rank]

    def finish(self, per_cell: Tensor, keepdim: bool, like: NestedTensor) -> Tensor:
        return self.plan.finish(per_cell.reshape(self.plan.slots, *self.kept), keepdim, like)


def _check_not_empty(nt: NestedTensor, logical: int | None, message: str, error: type[Exception]) -> None:
    """Raise ``error`` naming the first element with nothing along ``logical`` (with no values when None)."""
    batch = batch_dim(nt)
    element = None if logical is None or logical == batch else logical - (logical > batch)
    for index, shape in enumerate(nt._layout.element_shapes):
        if (prod(shape) if element is None else shape[element]) == 0:
            where = "has no values" if element is None else f"has no values along dim {logical}"
            raise error(f"{message}, but element {index} of the NestedTensor {where}")


def _static_dim(nt: NestedTensor, logical: int) -> int | None:
    """The dim of ``values`` holding element dim ``logical`` when it is static, else None (ragged or batch)."""
    batch = batch_dim(nt)
    return None if logical == batch else nt._layout.values_dim(logical - (logical > batch))


def _per_element(nt: NestedTensor, logical: int, keepdim: bool, call: Callable) -> list:
    """``call(element, dim, keepdim)`` of every element (a view): large elements on the CPU (``prefer_per_element``)."""
    check_slow_path("an order statistic of large elements on the CPU, one native call per element")
    batch = batch_dim(nt)
    if logical == batch:
        return [call(element.reshape(-1), 0, False) for element in split_elements(nt)]
    return [call(element, logical - (logical > batch), keepdim) for element in split_elements(nt)]


def _combine(results: list[Tensor], nt: NestedTensor, logical: int, keepdim: bool, leading: int = 0) -> Tensor:
    """Per-element results in the reduction convention; ``leading`` dims (of ``q``) stay in front."""
    batch = batch_dim(nt)
    if logical == batch:
        stacked = torch.stack(results, leading)
        return stacked.unsqueeze(leading + batch) if keepdim else stacked
    if len({result.shape for result in results}) == 1:
        return torch.stack(results, leading)
    return from_elements(results, like=nt)


# ---------------------------------------------------------------------------------------------- median


def _median_along(nt: NestedTensor, dim: int, keepdim: bool, ignore_nan: bool) -> tuple[Tensor, Tensor]:
    values = nt._values
    op = torch.nanmedian if ignore_nan else torch.median
    op(values.new_zeros(1))  # torch's own error for dtypes it cannot take a median of
    logical = normalize_dim(dim, nt.dim())
    if nt.dim() == 1:  # elements are scalars: the batch dim is every dim
        return tuple(op(values, 0, keepdim))  # type: ignore[return-value]
    _check_not_empty(nt, logical, f"median(): Expected reduction dim {dim} to have non-zero size", IndexError)
    along = _static_dim(nt, logical)
    if along is not None:  # torch's median along the dim of the values
        plan = plan_reduction(nt, [logical])
        found, index = op(values, along, keepdim=True)
        return plan.finish(found, keepdim, nt), plan.finish(index, keepdim, nt)
    if prefer_per_element(nt):
        pairs = _per_element(nt, logical, keepdim, lambda element, d, k: tuple(op(element, d, k)))
        return tuple(_combine(list(part), nt, logical, keepdim) for part in zip(*pairs))  # type: ignore[return-value]
    cells = _Cells(nt, logical)
    if ignore_nan:  # the lower median of the values that are not NaN (any one when all are)
        real = cells.sizes - cells.nans
        source = cells.gather(torch.where(real > 0, torch.div(real - 1, 2, rounding_mode="floor"), 0))
    else:
        source = cells.gather(torch.div(cells.sizes - 1, 2, rounding_mode="floor"))
        if cells.nan is not None:  # a NaN makes the median NaN, reported at the first NaN along the dim
            everywhere = torch.arange(values.numel(), device=values.device)
            first = segment_reduce(torch.where(cells.nan, cells.position, _LAST), cells.cell, cells.count, "amin")
            hit = cells.nan & (cells.position == first[cells.cell])
            nan_source = segment_reduce(torch.where(hit, everywhere, -1), cells.cell, cells.count, "amax")
            source = torch.where(cells.nans > 0, nan_source, source)
    found = cells.values[source]
    return cells.finish(found, keepdim, nt), cells.finish(cells.position[source], keepdim, nt)


@implements_aten(aten.median.default, aten.nanmedian.default)
def median_everything(func, args, kwargs) -> Tensor:
    r"""
    ``torch.median(nt)``/``nanmedian``: the lower median of every real value, a 0-d tensor.

    Examples:
        >>> torch.median(NestedTensor([[1.0, 5.0, 3.0], [4.0, 2.0]]))
        tensor(3.)
    """
    return (torch.nanmedian if func is aten.nanmedian.default else torch.median)(args[0]._values.reshape(-1))


@implements_aten(aten.median.dim, aten.nanmedian.dim)
def median(func, args, kwargs) -> tuple[Tensor, Tensor]:
    r"""
    ``torch.median(nt, dim)``/``nanmedian``: values and indices (see the module docstring for ``dim``).

    Examples:
        >>> nt = NestedTensor([[1.0, 5.0, 3.0], [4.0, 2.0]])
        >>> torch.median(nt, dim=1)
        torch.return_types.median(
        values=tensor([3., 2.]),
        indices=tensor([2, 1]))
        >>> torch.median(nt, dim=0).values
        tensor([3., 2.])
    """
    dim = args[1] if len(args) > 1 else kwargs["dim"]
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return _median_along(args[0], dim, keepdim, func is aten.nanmedian.dim)


# ---------------------------------------------------------------------------------------------- quantile


@cache
def _ranks_in_float64() -> bool:
    """Whether this torch computes quantile ranks in float64 whatever the input dtype.

    Newer torch does (0.3 of 10 in float32 is just above 3, so ``higher`` reads rank 4); torch 2.6
    computes them in the dtype of ``q`` (``higher`` reads rank 3). Asked of torch once, on 11 values.
    """
    return torch.quantile(torch.arange(11.0), 0.3, interpolation="higher").item() == 4.0


def _ranks(q: Tensor, last: Tensor, nans: Tensor | None, interpolation: str) -> Tensor:
    """Fractional ranks of ``q`` (``(Q, 1)``) in cells whose last index is ``last``, as torch computes them.

    In float64, or in the dtype of ``q`` where the running torch computes them so (``_ranks_in_float64``).
    """
    ranks = (q.to(torch.float64) if _ranks_in_float64() else q) * last
    if nans is None:  # nanquantile: the last index counts the values that are not NaN
        ranks = ranks.masked_fill(ranks < 0, 0)
    else:  # quantile: a NaN in the cell picks its last value, a NaN
        ranks = torch.where(nans > 0, last.to(ranks.dtype), ranks)
    if interpolation == "lower":
        return ranks.floor()
    if interpolation == "higher":
        return ranks.ceil()
    if interpolation == "nearest":
        return ranks.round()
    return ranks


def _quantile_along(nt: NestedTensor, q: Tensor, logical: int, keepdim: bool, interpolation: str, ignore_nan: bool):
    _check_not_empty(nt, None, "quantile() input tensor must be non-empty", RuntimeError)  # torch checks numel
    op = torch.nanquantile if ignore_nan else torch.quantile
    along = _static_dim(nt, logical)
    if along is not None:  # torch's quantile along the dim of the values
        plan = plan_reduction(nt, [logical])
        result = op(nt._values, q, dim=along, keepdim=True, interpolation=interpolation)
        per_q = [plan.finish(row, keepdim, nt) for row in (result.unsqueeze(0) if q.dim() == 0 else result)]
    elif prefer_per_element(nt):
        results = _per_element(nt, logical, keepdim, lambda e, d, k: op(e, q, d, k, interpolation=interpolation))
        return _combine(results, nt, logical, keepdim, q.dim())
    else:
        cells = _Cells(nt, logical)
        last = (cells.sizes - cells.nans if ignore_nan else cells.sizes) - 1
        ranks = _ranks(q.reshape(-1, 1), last, None if ignore_nan else cells.nans, interpolation)
        below = ranks.to(torch.long)
        result = cells.values[cells.gather(below)]
        if interpolation in ("linear", "midpoint"):
            weights = torch.full_like(ranks, 0.5) if interpolation == "midpoint" else ranks - below
            result = result.lerp(cells.values[cells.gather(ranks.ceil().to(torch.long))], weights.to(result.dtype))
        per_q = [cells.finish(row, keepdim, nt) for row in result]
    if q.dim() == 0:
        return per_q[0]
    if is_nested(per_q[0]):  # elements of (Q, *result of the element)
        return cat_elements([unsqueeze_elements(part, 0) for part in per_q], 0, "quantile")
    return torch.stack(per_q)


def quantile_of(nt: NestedTensor, q: Any, dim: int | None, keepdim: bool, interpolation: str, ignore_nan: bool):
    r"""
    ``torch.quantile(nt, q, dim)`` (``nanquantile`` with ``ignore_nan``), see the module docstring.

    Examples:
        >>> nt = NestedTensor([[1.0, 5.0, 3.0], [4.0, 2.0]])
        >>> quantile_of(nt, 0.5, None, False, "linear", False), quantile_of(nt, 0.5, 1, False, "linear", False)
        (tensor(3.), tensor([3., 3.]))
        >>> quantile_of(nt, torch.tensor([0.0, 1.0]), 1, False, "linear", False)
        tensor([[1., 2.],
                [5., 4.]])
    """
    values = nt._values
    op = torch.nanquantile if ignore_nan else torch.quantile
    op(values.new_zeros(1), q, interpolation=interpolation)  # torch's own errors for the dtype, q and interpolation
    if not isinstance(q, Tensor):
        q = torch.tensor(q, dtype=values.dtype, device=values.device)
    if dim is None:
        result = op(values.reshape(-1), q, interpolation=interpolation)
        return result.reshape(*q.shape, *(1,) * nt.dim()) if keepdim else result
    logical = normalize_dim(dim, nt.dim())
    if nt.dim() == 1:  # elements are scalars: the batch dim is every dim
        return op(values, q, dim=0, keepdim=keepdim, interpolation=interpolation)
    return _quantile_along(nt, q.to(values.device), logical, keepdim, interpolation, ignore_nan)


def _quantile_handler(ignore_nan: bool):
    def handler(
        input: Any,
        q: Any,
        dim: int | None = None,
        keepdim: bool = False,
        *,
        interpolation: str = "linear",
        out: Tensor | None = None,
    ) -> Tensor:
        op = torch.nanquantile if ignore_nan else torch.quantile
        if not is_nested(input):  # only ``q`` is nested: no batch meaning, run it per element
            return continue_to_aten(op, (input, q, dim, keepdim), {"interpolation": interpolation})
        if out is not None:
            raise TypeError(f"{op.__name__}(out=...) cannot write a NestedTensor result; assign the result instead")
        return quantile_of(input, q, dim, keepdim, interpolation, ignore_nan)

    handler.__name__ = handler.__qualname__ = "nanquantile" if ignore_nan else "quantile"
    handler.__doc__ = f"``torch.{handler.__name__}`` of a NestedTensor (see ``quantile_of``)."
    return handler


quantile = implements(torch.quantile, Tensor.quantile)(_quantile_handler(False))
nanquantile = implements(torch.nanquantile, Tensor.nanquantile)(_quantile_handler(True))


__all__ = ["median", "median_everything", "nanquantile", "quantile", "quantile_of"]
