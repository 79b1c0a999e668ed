r"""
``softmax``, ``log_softmax`` and ``softmin`` along any dim of a NestedTensor.

- Along a static element dim (the features of ``(L_i, D)`` sequences): the dense op on the packed
  values, one call.
- Along a ragged element dim (attention scores ``(L_i, L_i)`` over keys, a ``(L_i,)`` sequence): the
  normaliser covers each element's real values only. The largest value of every slice is taken out
  (one ``scatter_reduce``), the exponentials summed per slice (one ``index_add``) and sent back to
  the rows; no padding, no loop over elements.
- Along the batch dim: at every position of the padded tensor, over the elements that have a value
  there.

Each is served at the torch level (``F.softmax``, ``torch.softmax``, ``Tensor.softmax``, their ``log``
forms, ``F.softmin``), the hot path, and at the aten level (``_softmax``, ``_log_softmax``) for calls
that arrive from C++ or from decompositions. Gradients come from autograd on the packed values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._packed import batch_dim, normalize_dim
from ._registry import continue_to_aten, implements, implements_aten
from ._segments import plan_across_batch, plan_reduction

aten = torch.ops.aten


def nested_softmax(input: NestedTensor, dim: int, log: bool = False, dtype: torch.dtype | None = None) -> NestedTensor:
    r"""
    ``softmax`` (``log=True``: ``log_softmax``) of ``input`` along ``dim``, normalised over real values only.

    Examples:
        >>> nt = NestedTensor([[1.0, 1.0, 1.0], [2.0, 2.0]])
        >>> nested_softmax(nt, dim=1)
        NestedTensor([
            [0.3333, 0.3333, 0.3333],
            [0.5000, 0.5000]
        ])
        >>> nested_softmax(nt, dim=0)  # across the elements at every position
        NestedTensor([
            [0.2689, 0.2689, 1.0000],
            [0.7311, 0.7311]
        ])
    """
    values = input._values if dtype is None else input._values.to(dtype)
    logical, batch = normalize_dim(dim, input.dim()), batch_dim(input)
    if logical != batch:
        values_dim = input._layout.values_dim(logical - 1 if logical > batch else logical)
        if values_dim is not None:  # a static dim: the dense op on the values
            return input._rewrap((torch.log_softmax if log else torch.softmax)(values, values_dim))
    plan = plan_across_batch(input) if logical == batch else plan_reduction(input, [logical])
    peak = plan.reduce(values.detach(), "amax")
    shifted = values - plan.expand(torch.where(peak.isinf(), 0, peak))  # all -inf: no shift (torch gives NaN too)
    exponentials = shifted.exp()
    total = plan.expand(plan.reduce(exponentials, "sum"))
    return input._rewrap(shifted - total.log() if log else exponentials / total)


def _softmax_dim(name: str, input: Tensor, dim: int | None, stacklevel: int) -> int:
    """The dim a legacy call without ``dim`` picks, as ``torch.nn.functional`` decides (with its warning)."""
    return F._get_softmax_dim(name, input.dim(), stacklevel + 1) if dim is None else dim


def _functional(func: Callable, log: bool, negate: bool = False) -> Callable:
    """Handler of ``F.softmax``-like functions: ``(input, dim=None, _stacklevel=3, dtype=None)``."""

    def handler(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None):
        if not isinstance(input, NestedTensor):
            return continue_to_aten(func, (input, dim, _stacklevel, dtype), {})
        dim = _softmax_dim(func.__name__, input, dim, _stacklevel)
        return nested_softmax(-input if negate else input, dim, log, dtype)

    handler.__name__ = handler.__qualname__ = func.__name__
    handler.__doc__ = f"``F.{func.__name__}`` on a NestedTensor (see ``nested_softmax``)."
    return handler


def _method(func: Callable, log: bool) -> Callable:
    """Handler of ``torch.softmax``/``Tensor.softmax``-like calls: ``(input, dim, dtype=None)``."""

    def handler(input: Tensor, dim: int, dtype: torch.dtype | None = None, **kwargs):
        if not isinstance(input, NestedTensor) or kwargs:
            return continue_to_aten(func, (input, dim, dtype), kwargs)
        return nested_softmax(input, dim, log, dtype)

    handler.__name__ = handler.__qualname__ = getattr(func, "__name__", "softmax")
    handler.__doc__ = "``softmax`` on a NestedTensor (see ``nested_softmax``)."
    return handler


implements(F.softmax, compile_safe=True)(_functional(F.softmax, log=False))
implements(F.log_softmax, compile_safe=True)(_functional(F.log_softmax, log=True))
implements(F.softmin, compile_safe=True)(_functional(F.softmin, log=False, negate=True))
for _func, _log in ((torch.softmax, False), (Tensor.softmax, False), (torch.special.softmax, False)):
    implements(_func, compile_safe=True)(_method(_func, _log))
for _func in (torch.log_softmax, Tensor.log_softmax, torch.special.log_softmax):
    implements(_func, compile_safe=True)(_method(_func, log=True))


@implements_aten(aten._softmax.default, aten._log_softmax.default, compile_safe=True)
def softmax_aten(func, args, kwargs) -> NestedTensor:
    r"""
    ``aten._softmax``/``aten._log_softmax`` (``half_to_float`` gives float32 results for float16 input).

    Examples:
        >>> nt = NestedTensor([[0.0, 0.0], [5.0]])
        >>> torch.ops.aten._log_softmax(nt, 1, False).tolist()
        [[-0.6931471824645996, -0.6931471824645996], [0.0]]
    """
    input, dim, half_to_float = args[0], args[1], args[2]
    dtype = torch.float32 if half_to_float and input.dtype == torch.float16 else None
    return nested_softmax(input, dim, func is aten._log_softmax.default, dtype)


__all__ = ["nested_softmax", "softmax_aten"]
