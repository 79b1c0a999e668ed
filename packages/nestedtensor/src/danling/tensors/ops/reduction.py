r"""
Reductions: ``sum``, ``mean``, ``prod``, ``all``, ``any``, ``amax``/``amin``, ``max``/``min``, ``argmax``/``argmin``,
``aminmax``, ``std``/``var`` (and ``*_mean``), ``norm``, ``logsumexp``, ``nansum``/``nanmean``, ``count_nonzero``,
plus ``equal`` and ``allclose``.

Semantics, with dims in NestedTensor coordinates (negative dims count from the end of ``nt.shape``):

- no dim (or every dim): one value over the real data, padding never counts;
- the batch dim alone: one full reduction per element, shape ``(B,)`` (``keepdim`` unsqueezes the
  batch dim: ``(1, B)``, or ``(B, 1)`` when ``batch_first=False``);
- element dims only: the reduction inside every element; a dense tensor when every result has the
  same shape, a NestedTensor otherwise;
- the batch dim with some element dims: the reduction of the padded tensor over those dims with
  padding left out (``mean`` divides by the number of real values at each position).

``argmax``/``argmin`` and ``max``/``min`` with a dim give the index along that dim (the first one
among ties, NaN counting as the largest like in torch); along the batch dim, the index into the
flattened element; with no dim (``argmax`` only), the index into the flattened padded tensor,
so ``torch.unravel_index(i, nt.shape)`` finds it. Empty elements reduce to the op's identity
(``0`` for ``sum``, ``-inf`` for ``amax``, NaN for ``mean``).

Every case is vectorised (``_segments.py``): static dims reduce on the packed values directly,
ragged dims through one ``index_add``/``scatter_reduce`` of the rows into their slots, so gradients
reach the source tensors through ordinary autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from math import inf, prod
from typing import Any

import torch
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._packed import align_dense, batch_dim, dims_argument, normalize_dim, same_layout
from ._registry import check_padding, implements_aten
from ._segments import ReductionPlan, flat_index, identity, plan_reduction, reduce_static

aten = torch.ops.aten
_LAST = torch.iinfo(torch.int64).max


# ---------------------------------------------------------------------------- arguments and dims


def _arg(args: tuple, kwargs: dict, position: int, name: str, default: Any = None) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _dims(nt: NestedTensor, dim: Any) -> list[int] | None:
    """Sorted logical dims to reduce, or ``None`` for all of them."""
    dims = dims_argument(dim)
    if dims is None:
        return None
    ndim = nt.dim()
    dims = sorted({normalize_dim(d, ndim) for d in dims})
    return None if len(dims) == ndim else dims


def _global_shape(result: Tensor, nt: NestedTensor, keepdim: bool) -> Tensor:
    return result.reshape((1,) * nt.dim()) if keepdim else result


def _prepare(values: Tensor, op: str, dtype: torch.dtype | None) -> Tensor:
    """Cast the values the way the dense op would (integers sum in int64, booleans reduce as 0/1)."""
    if dtype is not None:
        return values.to(dtype)
    if op in ("all", "any"):
        return values.bool().to(torch.uint8)
    floating = values.is_floating_point() or values.is_complex()
    if op in ("mean", "nanmean") and not floating:
        raise RuntimeError(
            f"{op}(): could not infer output dtype. Input dtype must be either a floating point or complex dtype. "
            f"Got: {str(values.dtype).removeprefix('torch.').capitalize()}"
        )
    if op in ("sum", "prod", "nansum") and not floating:
        return values.to(torch.int64)
    return values


# ---------------------------------------------------------------------------- sum, mean, prod, extremes, all, any

_SEGMENT_OP = {"sum": "sum", "nansum": "sum", "mean": "sum", "prod": "prod", "amax": "amax", "amin": "amin"}
_SEGMENT_OP.update({"all": "amin", "any": "amax", "count_nonzero": "sum"})


def reduce(nt: NestedTensor, op: str, dim: Any = None, keepdim: bool = False, dtype: torch.dtype | None = None):
    r"""
    Reduce ``nt`` with ``op`` over ``dim`` following the semantics in this module's docstring.

    ``op`` is one of ``sum``, ``mean``, ``prod``, ``amax``, ``amin``, ``all``, ``any``, ``nansum``,
    ``count_nonzero``.

    Examples:
        >>> nt = NestedTensor([[1.0, 2.0, 3.0], [4.0, 5.0]])
        >>> reduce(nt, "mean"), reduce(nt, "mean", dim=0), reduce(nt, "amax", dim=1)
        (tensor(3.), tensor([2.0000, 4.5000]), tensor([3., 5.]))
    """
    values = _prepare(nt._values, op, dtype)
    if op == "nansum" and values.is_floating_point():
        values = torch.where(values.isnan(), 0, values)
    elif op == "count_nonzero":
        values = (values != 0).to(torch.int64)
    dims = _dims(nt, dim)
    if dims is None:
        result = values.mean() if op == "mean" else _everything(values, _SEGMENT_OP[op])
    else:
        plan = plan_reduction(nt, dims)
        result = plan.reduce(values, _SEGMENT_OP[op])
        if op == "mean":
            result = result / plan.count(result)
        result = plan.finish(result, keepdim, nt)
    if op in ("all", "any"):
        result = result.bool()
    return _global_shape(result, nt, keepdim) if dims is None else result


def _everything(values: Tensor, op: str) -> Tensor:
    """``op`` over all ``values`` (the identity when there are none)."""
    if values.numel() == 0:
        return values.new_full((), identity(op, values.dtype))
    return reduce_static(values.reshape(-1), op, (0,)).reshape(())


def _call(op: str, args: tuple, kwargs: dict, dtype_argument: bool = True) -> Tensor:
    dtype = kwargs.get("dtype") if dtype_argument else None
    if len(args) == 1 and "dim" not in kwargs:  # the ``.default`` overloads: over everything
        return reduce(args[0], op, None, False, dtype)
    return reduce(args[0], op, _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "keepdim", False), dtype)


def _simple(op: str, dtype_argument: bool = True) -> Callable:
    def handler(func, args, kwargs):
        return _call(op, args, kwargs, dtype_argument)

    handler.__name__ = handler.__qualname__ = op
    handler.__doc__ = f"``{op}`` over real values (see the module docstring for what each ``dim`` means)."
    return handler


@implements_aten(aten.sum.default, aten.sum.dim_IntList, compile_safe=True)
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
    return _call("sum", args, kwargs)


@implements_aten(aten.all.default, aten.all.dim, aten.all.dims, compile_safe=True)
def all_(func, args, kwargs) -> Tensor:
    r"""
    Whether every real value is true.

    Padding never counts.  Reducing the batch dimension gives one answer per element; a result
    whose elements all have the same shape comes back dense, a ragged one as a NestedTensor.

    Examples:
        >>> masks = NestedTensor([torch.tensor([[True, False, True], [True, True, True]]), torch.ones(1, 3, dtype=torch.bool)])
        >>> masks.all()
        tensor(False)
        >>> masks.all(dim=0)
        tensor([False,  True])
        >>> masks.all(dim=0, keepdim=True)
        tensor([[False,  True]])
        >>> masks.all(dim=1)  # over each element's rows: three columns each, so dense
        tensor([[ True, False,  True],
                [ True,  True,  True]])
        >>> masks.all(dim=2)  # over each row: two rows, then one
        NestedTensor([
            [False,  True],
            [True]
        ])
        >>> masks.batch_first = False  # the batch dimension is now 1
        >>> masks.all(dim=1)
        tensor([False,  True])
    """
    return _call("all", args, kwargs, dtype_argument=False)


@implements_aten(aten.any.default, aten.any.dim, aten.any.dims, compile_safe=True)
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
    return _call("any", args, kwargs, dtype_argument=False)


mean = implements_aten(aten.mean.default, aten.mean.dim, compile_safe=True)(_simple("mean"))
prod_ = implements_aten(aten.prod.default, aten.prod.dim_int, compile_safe=True)(_simple("prod"))
nansum = implements_aten(aten.nansum.default, compile_safe=True)(_simple("nansum"))
amax = implements_aten(aten.amax.default, aten.max.default, compile_safe=True)(_simple("amax", False))
amin = implements_aten(aten.amin.default, aten.min.default, compile_safe=True)(_simple("amin", False))


@implements_aten(aten.count_nonzero.default, aten.count_nonzero.dim_IntList, compile_safe=True)
def count_nonzero(func, args, kwargs) -> Tensor:
    r"""
    Number of non-zero real values.

    Examples:
        >>> torch.count_nonzero(NestedTensor([[1, 0, 3], [0, 5]]), dim=1)
        tensor([2, 1])
    """
    return reduce(args[0], "count_nonzero", _arg(args, kwargs, 1, "dim"))


# ---------------------------------------------------------------------------- two-pass reductions


def _moments(nt: NestedTensor, dim: Any, correction: float, keepdim: bool) -> tuple[Tensor, Tensor]:
    """``(var, mean)`` over ``dim`` with Bessel's ``correction``, two passes for accuracy."""
    values = nt._values
    dims = _dims(nt, dim)
    if dims is None:
        flat = values.reshape(-1)
        var, mean = torch.var_mean(flat, 0, correction=correction)
        return _global_shape(var, nt, keepdim), _global_shape(mean, nt, keepdim)
    plan = plan_reduction(nt, dims)
    total = plan.reduce(values, "sum")
    count = plan.count(total)
    mean = total / count
    deviation = values - plan.expand(mean)
    squares = plan.reduce(deviation * deviation.conj() if deviation.is_complex() else deviation.square(), "sum")
    var = squares / (count - correction).clamp(min=0)
    return plan.finish(var, keepdim, nt), plan.finish(mean, keepdim, nt)


def _correction(args: tuple, kwargs: dict) -> float:
    correction = kwargs.get("correction")
    return 1.0 if correction is None else float(correction)


@implements_aten(aten.var.correction, aten.var_mean.correction, compile_safe=True)
def var(func, args, kwargs) -> Tensor | tuple[Tensor, Tensor]:
    r"""
    ``var`` and ``var_mean`` over real values (``std``/``std_mean`` are the square roots).

    Examples:
        >>> nt = NestedTensor([[1.0, 2.0, 3.0], [4.0, 6.0]])
        >>> nt.var(dim=1), torch.var_mean(nt, dim=0, correction=0)
        (tensor([1., 2.]), (tensor([0.6667, 1.0000]), tensor([2., 5.])))
    """
    variance, mean = _moments(
        args[0], _arg(args, kwargs, 1, "dim"), _correction(args, kwargs), kwargs.get("keepdim", False)
    )
    return (variance, mean) if func is aten.var_mean.correction else variance


@implements_aten(aten.std.correction, aten.std_mean.correction, compile_safe=True)
def std(func, args, kwargs) -> Tensor | tuple[Tensor, Tensor]:
    """``std`` and ``std_mean``: square roots of ``var``."""
    variance, mean = _moments(
        args[0], _arg(args, kwargs, 1, "dim"), _correction(args, kwargs), kwargs.get("keepdim", False)
    )
    return (variance.sqrt(), mean) if func is aten.std_mean.correction else variance.sqrt()


@implements_aten(aten.logsumexp.default, compile_safe=True)
def logsumexp(func, args, kwargs) -> Tensor:
    r"""
    ``log(sum(exp(x)))`` over real values, stable: the largest value is taken out first.

    Examples:
        >>> nt = NestedTensor([[0.0, 0.0], [1.0]])
        >>> torch.logsumexp(nt, dim=1)
        tensor([0.6931, 1.0000])
    """
    nt, keepdim = args[0], _arg(args, kwargs, 2, "keepdim", False)
    values = nt._values if nt.is_floating_point() else nt._values.to(torch.get_default_dtype())
    dims = _dims(nt, _arg(args, kwargs, 1, "dim"))
    if dims is None:
        return _global_shape(torch.logsumexp(values.reshape(-1), 0), nt, keepdim)
    plan = plan_reduction(nt, dims)
    peak = plan.reduce(values.detach(), "amax")
    peak = torch.where(peak.isinf(), 0, peak)
    shifted = values - plan.expand(peak)
    total = plan.reduce(shifted.exp(), "sum")
    return plan.finish(total.log() + peak, keepdim, nt)


@implements_aten(
    aten.linalg_vector_norm.default,
    aten.norm.Scalar,
    aten.norm.ScalarOpt_dim,
    aten.norm.ScalarOpt_dim_dtype,
    aten.norm.ScalarOpt_dtype,
    compile_safe=True,
)
def vector_norm(func, args, kwargs) -> Tensor:
    r"""
    ``torch.linalg.vector_norm`` (and ``torch.norm`` of vectors) over real values, for any ``ord``.

    Examples:
        >>> nt = NestedTensor([[3.0, 4.0], [-5.0]])
        >>> torch.linalg.vector_norm(nt, dim=1), torch.norm(nt, p=float("inf"))
        (tensor([5., 5.]), tensor(5.))
    """
    nt = args[0]
    order = _arg(args, kwargs, 1, "p" if func is not aten.linalg_vector_norm.default else "ord", 2)
    order = 2 if order is None else order
    dim = _arg(args, kwargs, 2, "dim")
    keepdim, dtype = _arg(args, kwargs, 3, "keepdim", False), kwargs.get("dtype")
    absolute = (nt._values if dtype is None else nt._values.to(dtype)).abs()
    dims = _dims(nt, dim)
    plan = None if dims is None else plan_reduction(nt, dims)

    def over(values: Tensor, op: str) -> Tensor:
        if plan is None:
            return _global_shape(_everything(values, op), nt, keepdim)
        return plan.finish(plan.reduce(values, op), keepdim, nt)

    if order == inf:
        return over(absolute, "amax").clamp(min=0)  # no values: a norm of 0, not amax's -inf
    if order == -inf:
        return over(absolute, "amin")
    if order == 0:
        return over((absolute != 0).to(absolute.dtype), "sum")
    total = over(absolute if order == 1 else absolute.pow(order), "sum")
    if order == 1:
        return total
    positive = total > 0  # the root's gradient at 0 is infinite: keep it out of the graph there
    return torch.where(positive, torch.where(positive, total, 1).pow(1 / order), 0)


# ---------------------------------------------------------------------------- indices of extremes


def _hits(values: Tensor, extreme: Tensor) -> Tensor:
    """Where ``values`` equal their slot's extreme (NaN matching NaN, as NaN wins ``max`` and ``min``)."""
    hits = values == extreme
    return hits | (values.isnan() & extreme.isnan()) if values.is_floating_point() else hits


def _first(plan: ReductionPlan, keys: Tensor, hits: Tensor) -> Tensor:
    """Per slot, the smallest key among the hits."""
    return plan.reduce(torch.where(hits, keys, _LAST), "amin")


def _check_not_empty(nt: NestedTensor, dim: int | None, op: str) -> None:
    layout = nt._layout
    batch = batch_dim(nt)
    for index, shape in enumerate(layout.element_shapes):
        size = prod(shape) if dim is None or dim == batch else shape[dim - 1 if dim > batch else dim]
        if size == 0:
            raise IndexError(
                f"{'max' if op == 'amax' else 'min'}(): element {index} of the NestedTensor has no values along "
                f"dim {dim}; there is nothing to index"
            )


def extreme_index(nt: NestedTensor, dim: int | None, op: str, keepdim: bool) -> tuple[Tensor, Tensor]:
    r"""
    ``(values, indices)`` of the largest (``op="amax"``) or smallest (``"amin"``) value along ``dim``.

    Values are gathered from the input, so gradients reach the chosen value only (as with ``torch.max``).

    Examples:
        >>> nt = NestedTensor([[1.0, 7.0, 7.0], [4.0, 2.0]])
        >>> extreme_index(nt, 1, "amax", keepdim=False)
        (tensor([7., 4.]), tensor([1, 0]))
    """
    values = nt._values
    logical = None if dim is None else normalize_dim(dim, nt.dim())
    _check_not_empty(nt, logical, op)
    positions = torch.arange(values.numel(), device=values.device).view(values.shape)
    if logical is None:  # the first hit in the padded order
        keys = flat_index(nt._layout, nt._values.device, padded=True)
        best = torch.where(_hits(values, _everything(values.detach(), op)), keys, _LAST).amin()
        position = torch.where(keys == best, positions, -1).amax()
        return values.reshape(-1)[position], _global_shape(best, nt, keepdim)
    layout, batch = nt._layout, batch_dim(nt)
    plan = plan_reduction(nt, [logical])
    element = logical - 1 if logical > batch else logical
    if logical != batch and layout.values_dim(element) is not None:  # a static dim: the dense op on the values
        found = (values.max if op == "amax" else values.min)(layout.values_dim(element), keepdim=True)
        return plan.finish(found.values, keepdim, nt), plan.finish(found.indices, keepdim, nt)
    hits = _hits(values, plan.expand(plan.reduce(values.detach(), op)))
    if logical == batch:  # the first hit in element order, then where it sits in the values
        flat = flat_index(nt._layout, nt._values.device, padded=False)
        index = _first(plan, flat, hits)
        position = plan.reduce(torch.where(hits & (flat == plan.expand(index)), positions, -1), "amax")
        return plan.finish(values.reshape(-1)[position], keepdim, nt), plan.finish(index, keepdim, nt)
    rows = torch.arange(values.shape[0], device=values.device).view(-1, *(1,) * (values.dim() - 1))
    best_row = _first(plan, rows.expand_as(values), hits)  # rows run along the ragged dim in order
    coordinate = layout.row_coordinates(values.device)[1 + layout.ragged_dims.index(element)][best_row]
    return plan.finish(values.gather(0, best_row), keepdim, nt), plan.finish(coordinate, keepdim, nt)


@implements_aten(aten.max.dim, aten.min.dim, compile_safe=True)
def extreme_along(func, args, kwargs) -> tuple[Tensor, Tensor]:
    r"""
    ``torch.max(nt, dim)``/``torch.min(nt, dim)``: values and indices, dense when every element agrees in shape.

    Examples:
        >>> torch.max(NestedTensor([[1, 9, 3], [4, 5]]), dim=1)
        torch.return_types.max(
        values=tensor([9, 5]),
        indices=tensor([1, 1]))
    """
    op = "amax" if func is aten.max.dim else "amin"
    return extreme_index(
        args[0], args[1] if len(args) > 1 else kwargs["dim"], op, _arg(args, kwargs, 2, "keepdim", False)
    )


@implements_aten(aten.argmax.default, aten.argmin.default, compile_safe=True)
def arg_extreme(func, args, kwargs) -> Tensor:
    r"""
    ``argmax``/``argmin``; with no dim, the index into the flattened padded tensor.

    Examples:
        >>> nt = NestedTensor([[1, 9, 3], [4, 5]])
        >>> nt.argmax(dim=1), nt.argmin(dim=0), nt.argmax()
        (tensor([1, 1]), tensor([0, 0]), tensor(1))
    """
    op = "amax" if func is aten.argmax.default else "amin"
    return extreme_index(args[0], _arg(args, kwargs, 1, "dim"), op, _arg(args, kwargs, 2, "keepdim", False))[1]


@implements_aten(aten.aminmax.default, compile_safe=True)
def aminmax(func, args, kwargs) -> tuple[Tensor, Tensor]:
    """``torch.aminmax``: ``(amin, amax)`` over real values."""
    dim, keepdim = kwargs.get("dim"), kwargs.get("keepdim", False)
    return reduce(args[0], "amin", dim, keepdim), reduce(args[0], "amax", dim, keepdim)


# ---------------------------------------------------------------------------- comparisons of whole tensors


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


def _allclose_dense(nested: NestedTensor, dense: Tensor, nested_first: bool, options: tuple, kwargs: dict) -> bool:
    """``torch.allclose`` of a NestedTensor and a dense tensor that broadcasts against it, real values only."""
    try:
        shape = torch.broadcast_shapes(nested.shape, dense.shape)
    except RuntimeError:  # the padded comparison below raises torch's own size error
        shape = None
    if shape == nested.shape and (nested._batch_first or dense.shape == nested.shape):
        aligned = align_dense(nested, dense)
        if aligned is not None:  # the real positions of the same shape, or a broadcast over static dims
            pair = (nested._values, aligned) if nested_first else (aligned, nested._values)
            return torch.allclose(*pair, *options, **kwargs)
    check_padding("allclose of a NestedTensor and a dense tensor broadcast along a ragged or the batch dim")
    padded = nested.tensor
    close = (
        torch.isclose(padded, dense, *options, **kwargs)
        if nested_first
        else torch.isclose(dense, padded, *options, **kwargs)
    )
    valid = nested._layout.valid_mask(padded.device)
    if not nested._batch_first and valid.dim() > 1:
        valid = valid.movedim(0, 1)
    return bool((close | ~valid).all())


@implements_aten(aten.allclose.default)
def allclose(func, args, kwargs) -> bool:
    r"""
    ``torch.allclose`` over real values.

    Two NestedTensors compare their elements (``False`` when element shapes differ). A dense operand
    broadcasts against the NestedTensor as it would against ``.tensor``, incompatible shapes raise
    torch's size error, and padding positions are never compared.

    Examples:
        >>> nt = NestedTensor([[1.0, 2.0, 3.0], [4.0, 5.0]])
        >>> torch.allclose(nt, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]]))
        True
        >>> torch.allclose(NestedTensor([[1.0, 1.0], [1.0]]), torch.tensor(1.0))
        True
    """
    first, second = args[0], args[1]
    if isinstance(first, NestedTensor) and isinstance(second, NestedTensor):
        pair = _comparable(first, second)
        return pair is not None and torch.allclose(*pair, *args[2:], **kwargs)
    if isinstance(first, NestedTensor):
        return _allclose_dense(first, second, True, args[2:], kwargs)
    return _allclose_dense(second, first, False, args[2:], kwargs)


__all__ = [
    "aminmax",
    "arg_extreme",
    "count_nonzero",
    "equal",
    "extreme_along",
    "extreme_index",
    "identity",
    "logsumexp",
    "reduce",
    "std",
    "var",
    "vector_norm",
]
