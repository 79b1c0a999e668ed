"""Reductions: ``sum``, ``mean``, ``prod``, ``all``, ``any``, ``amax``, ``amin`` (and global ``max``/``min``), ``equal``.

Semantics, with dims in NestedTensor coordinates:

- no dim (or every dim): one value over the real data, padding never counts;
- the batch dim alone: one full reduction per element, shape ``(B,)``;
- element dims only: the reduction inside every element; a dense tensor when every result has the
  same shape, otherwise a NestedTensor;
- the batch dim with some element dims: reduced over the padded tensor, padding filled with the
  op's identity (``mean`` divides by the number of real values).

Every case is vectorised: static dims reduce on the packed values directly, ragged dims through one
``scatter_reduce`` of the rows into their target slots.
"""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor

from .._layout import NestedLayout
from .._padding import to_padded
from ..nested_tensor import NestedTensor
from ._packed import batch_dim, dims_argument, element_dim, normalize_dim, same_layout
from ._registry import implements_aten

aten = torch.ops.aten

_IDENTITY = {"sum": 0, "mean": 0, "prod": 1, "amax": -float("inf"), "amin": float("inf"), "all": 1, "any": 0}
_SCATTER = {"sum": "sum", "mean": "sum", "prod": "prod", "amax": "amax", "amin": "amin", "all": "amin", "any": "amax"}


def _prepare(values: Tensor, op: str, dtype: torch.dtype | None) -> Tensor:
    """Cast values the way the dense op would (ints sum in int64, bools reduce as 0/1)."""
    if dtype is not None:
        return values.to(dtype)
    if op in ("all", "any"):
        return values.bool().to(torch.uint8)
    if op == "mean" and not (values.is_floating_point() or values.is_complex()):
        raise RuntimeError(
            "mean(): could not infer output dtype. Input dtype must be either a floating point or complex dtype. "
            f"Got: {str(values.dtype).removeprefix('torch.').capitalize()}"
        )
    if op in ("sum", "prod") and not (values.is_floating_point() or values.is_complex()):
        return values.to(torch.int64)
    return values


def _identity(op: str, dtype: torch.dtype) -> float | int:
    """Value that does not change the reduction (the fill of empty slots and padding)."""
    if op in ("amax", "amin") and not (dtype.is_floating_point or dtype.is_complex):
        info = torch.iinfo(dtype)
        return info.min if op == "amax" else info.max
    return _IDENTITY[op]


def _finish(result: Tensor, op: str) -> Tensor:
    return result.bool() if op in ("all", "any") else result


def _reduce_dims(tensor: Tensor, op: str, dims: list[int], keepdim: bool) -> Tensor:
    """Dense reduction of ``tensor`` over ``dims`` (``prod`` only takes one dim at a time)."""
    if not dims:
        return tensor
    if op in ("sum", "mean"):
        return tensor.sum(dims, keepdim=keepdim)
    if op in ("amax", "all"):
        return tensor.amin(dims, keepdim=keepdim) if op == "all" else tensor.amax(dims, keepdim=keepdim)
    if op in ("amin", "any"):
        return tensor.amax(dims, keepdim=keepdim) if op == "any" else tensor.amin(dims, keepdim=keepdim)
    for dim in sorted(dims, reverse=True):
        tensor = tensor.prod(dim, keepdim=keepdim)
    return tensor


def _scatter_rows(rows: Tensor, index: Tensor, size: int, op: str) -> Tensor:
    """Reduce ``rows`` into ``size`` slots by ``index``; empty slots hold the identity."""
    out = rows.new_full((size, *rows.shape[1:]), _identity(op, rows.dtype))
    expanded = index.view(-1, *(1,) * (rows.dim() - 1)).expand_as(rows)
    return out.scatter_reduce(0, expanded, rows, reduce=_SCATTER[op], include_self=False)


def _counts(sizes: list[int], like: Tensor) -> Tensor:
    counts = torch.tensor(sizes, dtype=like.dtype if like.is_floating_point() else torch.float32)
    return counts.to(like.device, non_blocking=True).view(-1, *(1,) * (like.dim() - 1))


def _global(nt: NestedTensor, op: str, keepdim: bool, dtype: torch.dtype | None) -> Tensor:
    values = _prepare(nt._values, op, dtype)
    result = values.mean() if op == "mean" else _finish(_reduce_dims(values.reshape(-1), op, [0], False), op)
    return result.reshape((1,) * nt.dim()) if keepdim else result


def _per_element(nt: NestedTensor, op: str, keepdim: bool, dtype: torch.dtype | None) -> Tensor:
    layout = nt._layout
    values = _prepare(nt._values, op, dtype)
    rows = values.reshape(values.shape[0], -1) if values.dim() > 1 else values.unsqueeze(1)
    rows = _reduce_dims(rows, op, [1], False)
    result = _scatter_rows(rows, layout.row_batch_index(rows.device), layout.batch_size, op)
    if op == "mean":
        result = result / _counts([prod(shape) for shape in layout.element_shapes], result).squeeze(-1)
    result = _finish(result, op)
    return result.unsqueeze(batch_dim(nt)) if keepdim else result


def _over_padding(nt: NestedTensor, op: str, dims: list[int], keepdim: bool, dtype: torch.dtype | None) -> Tensor:
    layout, batch = nt._layout, batch_dim(nt)
    leading = [0 if d == batch else 1 + element_dim(nt, d) for d in dims]
    values = _prepare(nt._values, op, dtype)
    padded = to_padded(layout, values, _identity(op, values.dtype))
    result = _reduce_dims(padded, op, leading, keepdim)
    if op == "mean":
        count = layout.valid_mask(padded.device).sum(leading, keepdim=keepdim)
        result = result / count
    result = _finish(result, op)
    return result.movedim(0, 1) if keepdim and batch == 1 else result


def _reduced_layout(layout: NestedLayout, dims: set[int], keepdim: bool) -> tuple[NestedLayout, list[int]]:
    """Layout after reducing element ``dims``, and the order of the remaining dims (for rank-0 ragged)."""
    shapes = [tuple(1 if d in dims else s for d, s in enumerate(shape)) for shape in layout.element_shapes]
    static_sizes = tuple(1 if d in dims else s for d, s in zip(layout.static_dims, layout.static_sizes))
    if keepdim:
        return NestedLayout(tuple(shapes), layout.permutation, layout.ragged_rank, static_sizes), []
    renumber = {d: i for i, d in enumerate(d for d in range(layout.rank) if d not in dims)}
    shapes = tuple(tuple(s for d, s in enumerate(shape) if d not in dims) for shape in shapes)
    ragged = [renumber[d] for d in layout.ragged_dims if d not in dims]
    static = [renumber[d] for d in layout.static_dims if d not in dims]
    kept_sizes = tuple(s for d, s in zip(layout.static_dims, static_sizes) if d not in dims)
    return NestedLayout(shapes, (*ragged, *static), len(ragged), kept_sizes), static


def _target_rows(layout: NestedLayout, reduced: NestedLayout, dims: set[int], device: torch.device) -> Tensor:
    """Row of ``reduced`` that each row of ``layout`` folds into (row-major over the kept ragged dims)."""
    batch, *coordinates = layout.row_coordinates(device)
    target = layout.to_device(torch.tensor(reduced.starts[:-1], dtype=torch.long), device)[batch]
    sizes = layout.sizes_on(device)[batch]
    stride = torch.ones_like(batch)
    for dim, coordinate in reversed(list(zip(layout.ragged_dims, coordinates))):
        if dim not in dims:
            target = target + coordinate * stride
            stride = stride * sizes[:, dim]
    return target


def _inside_elements(nt: NestedTensor, op: str, dims: set[int], keepdim: bool, dtype: torch.dtype | None) -> Tensor:
    layout = nt._layout
    values = _prepare(nt._values, op, dtype)
    values = _reduce_dims(values, op, [layout.values_dim(d) for d in layout.static_dims if d in dims], True)
    reduced, static_order = _reduced_layout(layout, dims, keepdim)
    if any(d in dims for d in layout.ragged_dims):
        values = _scatter_rows(values, _target_rows(layout, reduced, dims, values.device), reduced.num_rows, op)
    if op == "mean":
        counts = _counts([prod(shape[d] for d in dims) for shape in layout.element_shapes], values)
        values = values / counts[reduced.row_batch_index(values.device)]
    values = _finish(values, op).reshape(values.shape[0], *reduced.static_sizes)
    if not reduced.ragged_rank:  # every element is one row: results share a shape
        return values.permute(0, *(1 + static_order.index(d) for d in range(reduced.rank)))
    if len(set(reduced.element_shapes)) == 1:
        return to_padded(reduced, values, 0)
    return nt._rewrap(values, reduced)


def reduce(nt: NestedTensor, op: str, dim=None, keepdim: bool = False, dtype: torch.dtype | None = None) -> Tensor:
    r"""
    Reduce ``nt`` with ``op`` over ``dim`` following the semantics in this module's docstring.

    Examples:
        >>> nt = NestedTensor([[1.0, 2.0, 3.0], [4.0, 5.0]])
        >>> reduce(nt, "mean"), reduce(nt, "mean", dim=0), reduce(nt, "amax", dim=1)
        (tensor(3.), tensor([2.0000, 4.5000]), tensor([3., 5.]))
    """
    dims = dims_argument(dim)
    ndim = nt.dim()
    if dims is not None:
        dims = sorted({normalize_dim(d, ndim) for d in dims})
    batch = batch_dim(nt)
    if dims is None:
        return _global(nt, op, keepdim, dtype)
    if dims == [batch]:
        return _per_element(nt, op, keepdim, dtype)
    if len(dims) == ndim:
        return _global(nt, op, keepdim, dtype)
    if batch in dims:
        return _over_padding(nt, op, dims, keepdim, dtype)
    return _inside_elements(nt, op, {element_dim(nt, d) for d in dims}, keepdim, dtype)


def _arguments(args: tuple, kwargs: dict) -> tuple:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    return dim, keepdim, kwargs.get("dtype")


@implements_aten(aten.sum.default, aten.sum.dim_IntList)
def sum_(func, args, kwargs) -> Tensor:
    r"""
    Sum over real values (see the module docstring for what each ``dim`` means).

    Examples:
        >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
        >>> nested_tensor.sum()
        tensor(15)
        >>> nested_tensor.sum(dim=0)  # when dim=0, sum across batch dimension
        tensor([6, 9])
        >>> nested_tensor.sum(dim=1)
        tensor([6, 9])
        >>> nested_tensor.sum(dim=[0, 1])
        tensor(15)
        >>> nested_tensor.sum(dim=0, keepdim=True)
        tensor([[6, 9]])
        >>> nested_tensor.sum(dtype=torch.float32)
        tensor(15.)
    """
    return reduce(args[0], "sum", *_arguments(args, kwargs))


@implements_aten(aten.mean.default, aten.mean.dim)
def mean(func, args, kwargs) -> Tensor:
    """Mean over real values; an element's mean divides by its own size."""
    return reduce(args[0], "mean", *_arguments(args, kwargs))


@implements_aten(aten.prod.default, aten.prod.dim_int)
def prod_(func, args, kwargs) -> Tensor:
    """Product over real values."""
    return reduce(args[0], "prod", *_arguments(args, kwargs))


@implements_aten(aten.amax.default, aten.amin.default, aten.max.default, aten.min.default)
def extreme(func, args, kwargs) -> Tensor:
    """``amax``/``amin`` over dims, and the global ``max()``/``min()``."""
    op = "amax" if func in (aten.amax.default, aten.max.default) else "amin"
    dim, keepdim, _ = _arguments(args, kwargs)
    return reduce(args[0], op, dim, keepdim)


@implements_aten(aten.all.default, aten.all.dim, aten.all.dims)
def all_(func, args, kwargs) -> Tensor:
    r"""
    Whether every real value is true.

    Examples:
        >>> nested_tensor = NestedTensor([torch.ones(2, 4, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool)])
        >>> nested_tensor.all()
        tensor(True)
        >>> nested_tensor.all(dim=0)
        tensor([True, True])
        >>> nested_tensor.all(dim=0, keepdim=True)
        tensor([[True, True]])
        >>> nested_tensor.all(dim=1)
        NestedTensor([
            [True, True, True, True],
            [True, True, True, True, True]
        ])
        >>> nested_tensor.all(dim=1, keepdim=True)
        NestedTensor([
            [[True, True, True, True]],
            [[True, True, True, True, True]]
        ])
        >>> nested_tensor.batch_first = False
        >>> nested_tensor.all(dim=1)
        tensor([True, True])
        >>> nested_tensor.all(dim=0)
        NestedTensor([
            [True, True, True, True],
            [True, True, True, True, True]
        ])
        >>> nested_tensor.all(dim=-2)
        tensor([True, True])
    """
    dim, keepdim, _ = _arguments(args, kwargs)
    return reduce(args[0], "all", dim, keepdim)


@implements_aten(aten.any.default, aten.any.dim, aten.any.dims)
def any_(func, args, kwargs) -> Tensor:
    r"""
    Whether some real value is true.

    Examples:
        >>> nested_tensor = NestedTensor([torch.zeros(2, dtype=torch.bool), torch.ones(3, dtype=torch.bool)])
        >>> nested_tensor.any()
        tensor(True)
        >>> nested_tensor.any(dim=0)
        tensor([False,  True])
    """
    dim, keepdim, _ = _arguments(args, kwargs)
    return reduce(args[0], "any", dim, keepdim)


def _comparable(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor] | None:
    """Packed values of two NestedTensors with the same elements, or padded tensors for a dense operand."""
    if isinstance(first, NestedTensor) and isinstance(second, NestedTensor):
        if first._layout.element_shapes != second._layout.element_shapes:
            return None
        if same_layout(first, second):
            return first._values, second._values
        return first._values, first._layout.pack(second.unbind())
    first = first.tensor if isinstance(first, NestedTensor) else first
    second = second.tensor if isinstance(second, NestedTensor) else second
    return (first, second) if first.shape == second.shape else None


@implements_aten(aten.equal.default)
def equal(func, args, kwargs) -> bool:
    """``torch.equal``: same element shapes and values (a dense operand is compared with ``.tensor``)."""
    pair = _comparable(args[0], args[1])
    return pair is not None and torch.equal(*pair)


@implements_aten(aten.allclose.default)
def allclose(func, args, kwargs) -> bool:
    """``torch.allclose`` over real values (a dense operand is compared with ``.tensor``)."""
    pair = _comparable(args[0], args[1])
    return pair is not None and torch.allclose(*pair, *args[2:], **kwargs)
