r"""
Elementwise ops: unary, binary and ternary ops, comparisons, ``where``, ``clamp``, ``masked_fill`` and
their in-place forms, each one call on the packed values.

Operands line up with the packed rows of the first NestedTensor operand (the *reference*) when they are:

- NestedTensors of the same layout;
- NestedTensors with the same rows whose static dims broadcast (a ``(L_i, 1)`` mask against
  ``(L_i, D)`` features): the values broadcast as they are;
- scalars and 0-d tensors;
- dense tensors that broadcast over static dims only (a bias over the features), viewed to
  broadcast against the values;
- dense tensors that broadcast against the padded shape ``nt.shape`` (``(B, 1, D)``: one row per
  element; ``(B, N, D)``: the padded layout), whose real positions are gathered.

NestedTensors whose rows differ but whose elements broadcast one by one run per element (a slow
path guarded by ``check_slow_path``); operands that cannot combine at all raise a ``ValueError``
naming the shapes. Type casts (``nt.float()``, ``nt.to(dtype)``) are ``_to_copy`` in ``creation.py``.

Two entry points share this logic:

- every aten op tagged ``pointwise`` (and the in-place forms of such ops, which torch leaves untagged)
  through one ``aten_rule``, so any pointwise op works, whoever calls it;
- the hottest calls (``nt + 1``, ``torch.relu``, ``F.gelu``, ...) at the torch level, which skips the
  trip through C++ and the dispatcher (about half the cost of a small op). A call these handlers cannot
  line up continues to the aten level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._fallback import per_element_fallback
from ._packed import align_dense, is_nested, rewrap_result, same_layout
from ._registry import aten_rule, continue_to_aten, implements, implements_aten

aten = torch.ops.aten


# ---------------------------------------------------------------------------- lining operands up


Operands = tuple[NestedTensor, list, dict, dict[int, NestedTensor]]
"""``(reference, args, kwargs, owners)``: the call's operands with NestedTensors replaced by their values;
``owners`` maps ``id(values)`` back to the NestedTensor (in-place and ``out=`` results return it)."""


def _same_rows(first: NestedTensor, second: NestedTensor) -> bool:
    """Whether the values of two NestedTensors have the same rows, and their static sizes broadcast."""
    a, b = first._layout, second._layout
    if a.permutation != b.permutation or a.ragged_rank != b.ragged_rank or a.packed_sizes != b.packed_sizes:
        return False
    if any(x != y and 1 not in (x, y) for x, y in zip(a.static_sizes, b.static_sizes)):
        return False
    ragged = a.ragged_dims
    return a.ragged_rank == 1 or all(
        all(s[d] == t[d] for d in ragged) for s, t in zip(a.element_shapes, b.element_shapes)
    )


def _align(reference: NestedTensor, tensor: Tensor) -> Tensor | None:
    """A dense operand lined up with the reference's rows (see the module docstring), else ``None``."""
    aligned = align_dense(reference, tensor)
    if aligned is not None:
        return aligned
    try:
        if torch.broadcast_shapes(tensor.shape, reference.shape) != reference.shape:
            return None
    except RuntimeError:
        return None
    return align_dense(reference, tensor.expand(reference.shape))  # gathers the real positions


def _convert(values: Any, reference: NestedTensor, owners: dict[int, NestedTensor]) -> list | None:
    """``values`` with NestedTensors replaced by their packed values and dense tensors aligned; ``None`` if misaligned."""
    layout = reference._layout
    converted = []
    for value in values:
        if isinstance(value, NestedTensor):
            if value._layout is not layout and not same_layout(value, reference) and not _same_rows(value, reference):
                return None
            owners[id(value._values)] = value
            converted.append(value._values)
        elif isinstance(value, Tensor) and value.dim():
            aligned = _align(reference, value)
            if aligned is None:
                return None
            converted.append(aligned)
        else:
            converted.append(value)
    return converted


def line_up(args: tuple, kwargs: dict) -> Operands | None:
    r"""
    Replace the operands of an elementwise call by tensors that line up with the packed rows.

    Returns ``None`` when some operand does not line up (see the module docstring).

    Examples:
        >>> nt = NestedTensor([[1.0, 2.0, 3.0], [4.0, 5.0]])
        >>> reference, args, kwargs, owners = line_up((nt, torch.tensor([[10.0], [20.0]])), {})
        >>> args[1]
        tensor([10., 10., 10., 20., 20.])
    """
    reference = next((a for a in args if isinstance(a, NestedTensor)), None)
    if reference is None:
        reference = next((v for v in kwargs.values() if isinstance(v, NestedTensor)), None)
        if reference is None:
            return None
    owners: dict[int, NestedTensor] = {}
    new_args = _convert(args, reference, owners)
    if new_args is None:
        return None
    if not kwargs:
        return reference, new_args, kwargs, owners
    new_values = _convert(kwargs.values(), reference, owners)
    if new_values is None:
        return None
    return reference, new_args, dict(zip(kwargs, new_values)), owners


def _element_shapes(value: Any) -> list[tuple[int, ...]] | None:
    if isinstance(value, NestedTensor):
        return [tuple(shape) for shape in value._layout.element_shapes]
    return None


def check_broadcast(func: object, args: tuple, kwargs: dict) -> None:
    r"""
    Raise a ``ValueError`` naming the shapes when the operands cannot combine element by element.

    NestedTensor operands must have one batch size, and every element's shapes (with the dense
    operands' shapes) must broadcast.
    """
    operands = [*args, *kwargs.values()]
    nested = [v for v in operands if isinstance(v, NestedTensor)]
    for other in nested[1:]:
        if len(other) != len(nested[0]):
            raise ValueError(
                f"NestedTensor batch length mismatch between operands of {func}: {len(nested[0])} vs {len(other)}"
            )
    dense = [tuple(v.shape) for v in operands if isinstance(v, Tensor) and not isinstance(v, NestedTensor)]
    element_shapes = [_element_shapes(nt) for nt in nested]
    for index, shapes in enumerate(zip(*element_shapes)):
        try:
            torch.broadcast_shapes(*shapes, *dense)
        except RuntimeError:
            given = " and ".join(str(s) for s in (*shapes, *dense))
            raise ValueError(
                f"{func}: operands do not line up: shapes {given} (element {index}) do not broadcast; NestedTensor "
                "operands need element shapes that broadcast, dense operands a shape that broadcasts against the "
                "padded shape"
            ) from None


def run_packed(func: Callable, operands: Operands) -> Any:
    """Call ``func`` on lined-up operands and wrap the result in the reference's layout (mutated inputs map back)."""
    reference, args, kwargs, owners = operands
    result = func(*args, **kwargs)
    if type(result) is Tensor and id(result) not in owners and result.shape == reference._values.shape:
        return reference._rewrap(result)
    return rewrap_result(result, reference, owners)


# ---------------------------------------------------------------------------- aten level


def _is_pointwise(op: torch._ops.OpOverload) -> bool:
    """Ops tagged pointwise, and in-place forms whose out-of-place overload is (torch leaves some untagged)."""
    if torch.Tag.pointwise in op.tags:
        return True
    name = op._schema.name.split("::")[-1]
    if not name.endswith("_") or name.endswith("__"):
        return False
    functional = getattr(getattr(aten, name[:-1], None), op._overloadname, None)
    return functional is not None and torch.Tag.pointwise in functional.tags


@aten_rule(_is_pointwise, compile_safe=True)
def pointwise(func, args, kwargs):
    r"""
    Run a pointwise aten op on the packed values; see the module docstring for the operands accepted.

    Examples:
        >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
        >>> nested_tensor.where(nested_tensor > 2, torch.tensor([[6, 5, 4], [3, 2, 1]]))
        NestedTensor([
            [6, 5, 3],
            [4, 5]
        ])
        >>> nested_tensor.where(nested_tensor > 2, NestedTensor([[6, 5, 4], [3, 2]]))
        NestedTensor([
            [6, 5, 3],
            [4, 5]
        ])
        >>> nested_tensor.where(torch.tensor(True), NestedTensor([[6, 5, 4], [3, 2]]))
        NestedTensor([
            [1, 2, 3],
            [4, 5]
        ])
    """
    operands = line_up(args, kwargs)
    if operands is not None:
        return run_packed(func, operands)
    check_broadcast(func, args, kwargs)
    return per_element_fallback(func, args, kwargs)


implements_aten(aten.masked_fill, aten.masked_fill_, compile_safe=True)(pointwise)  # untagged, yet pointwise


@implements_aten(aten.copy_.default)
def copy_(func, args, kwargs) -> NestedTensor:
    r"""
    Copy ``src`` into the packed values of ``self`` in place (casting like ``Tensor.copy_``).

    ``src`` may be a NestedTensor with the same element shapes, a scalar, or a dense tensor that
    lines up with the values (see ``align_dense``).

    Examples:
        >>> nt = NestedTensor([[1.0, 2.0, 3.0], [4.0, 5.0]])
        >>> _ = nt.copy_(NestedTensor([[0, 0, 1], [0, 1]]))
        >>> nt.tensor
        tensor([[0., 0., 1.],
                [0., 1., 0.]])
    """
    target, source = args[0], args[1]
    non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
    if not is_nested(target):
        raise TypeError("Cannot copy a NestedTensor into a dense tensor in place; copy from its .tensor instead")
    if is_nested(source):
        if same_layout(target, source):
            values = source._values
        elif target._layout.element_shapes == source._layout.element_shapes:
            values = target._layout.pack(source.unbind())
        else:
            raise ValueError(
                f"copy_ needs the same element shapes, got {target._layout.element_shapes} and "
                f"{source._layout.element_shapes}"
            )
    else:
        values = align_dense(target, source)
        if values is None:
            raise ValueError(
                f"Cannot copy a tensor of shape {tuple(source.shape)} into a NestedTensor of shape {target.shape}"
            )
    target._values.copy_(values, non_blocking=non_blocking)
    return target


@implements_aten(aten.fill_.Scalar, aten.fill_.Tensor, aten.zero_.default, compile_safe=True)
def fill_(func, args, kwargs) -> NestedTensor:
    r"""
    Fill the packed values in place.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> nt.fill_(7).tolist()
        [[7, 7, 7], [7, 7]]
    """
    func(args[0]._values, *args[1:], **kwargs)
    return args[0]


# ---------------------------------------------------------------------------- torch level (hot calls)

_UNARY = (
    "abs", "neg", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "square",
    "reciprocal", "sin", "cos", "tan", "sinh", "cosh", "tanh", "asin", "acos", "atan", "sigmoid", "relu",
    "erf", "erfc", "floor", "ceil", "round", "trunc", "frac", "sign", "sgn", "isnan", "isinf", "isfinite",
    "logical_not", "bitwise_not", "nan_to_num", "clamp", "clamp_min", "clamp_max", "clip",
)  # fmt: skip
_BINARY = (
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "pow", "maximum", "minimum",
    "atan2", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "bitwise_and",
    "bitwise_or", "bitwise_xor", "lerp", "addcmul", "addcdiv", "masked_fill", "hypot", "logaddexp",
)  # fmt: skip
_DUNDERS = (
    "__eq__", "__ne__", "__rsub__", "__rdiv__", "__rtruediv__", "__rpow__", "__floordiv__", "__rfloordiv__",
    "__mod__", "__rmod__", "__invert__", "__and__", "__or__", "__xor__", "__iand__", "__ior__", "__ixor__",
)  # fmt: skip
_ACTIVATIONS = (
    F.relu, F.relu6, F.gelu, F.silu, F.mish, F.elu, F.selu, F.celu, F.leaky_relu, F.hardtanh, F.hardsigmoid,
    F.softplus, F.softsign, F.tanhshrink, F.hardshrink, F.softshrink, F.sigmoid, F.tanh,
)  # fmt: skip


def _torch_functions() -> list[Callable]:
    """The torch functions and ``Tensor`` methods (and their in-place forms) served at the torch level."""
    functions: list[Callable] = []
    for name in _UNARY + _BINARY:
        for owner in (torch, Tensor):
            for variant in (name, f"{name}_"):
                func = getattr(owner, variant, None)
                if func is not None and func not in functions:
                    functions.append(func)
    functions.extend(getattr(Tensor, name) for name in _DUNDERS if hasattr(Tensor, name))
    functions.extend(f for f in _ACTIVATIONS if f not in functions)
    return functions


_NUMBERS = frozenset({int, float, bool})


def _plain(args: tuple, kwargs: dict) -> bool:
    """Whether a call is ``op(nt)`` or ``op(nt, number)`` with non-tensor keywords: nothing to line up."""
    if len(args) == 2:
        if type(args[1]) not in _NUMBERS:
            return False
    elif len(args) != 1:
        return False
    return isinstance(args[0], NestedTensor) and (not kwargs or not any(isinstance(v, Tensor) for v in kwargs.values()))


def _torch_level(func: Callable, arity: int | None = None) -> Callable:
    """Handler of ``func`` on the packed values; calls it cannot line up (or of another arity) continue to aten."""

    def handler(*args: Any, **kwargs: Any) -> Any:
        if arity is None and _plain(args, kwargs):  # the hottest form: no lining up to do
            nt = args[0]
            values = nt._values
            result = func(values, *args[1:], **kwargs)
            if result is values:
                return nt
            return nt._rewrap(result) if type(result) is Tensor else rewrap_result(result, nt, {})
        operands = line_up(args, kwargs) if arity is None or len(args) + len(kwargs) == arity else None
        if operands is None:
            return continue_to_aten(func, args, kwargs)
        return run_packed(func, operands)

    name = getattr(func, "__name__", "pointwise")
    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = f"``{name}`` on the packed values; operands that do not line up continue to the aten level."
    return handler


for _func in _torch_functions():
    implements(_func, compile_safe=True)(_torch_level(_func))
# ``torch.where(condition)`` (one argument) gives indices, not an elementwise result: only three operands run here.
implements(torch.where, compile_safe=True)(_torch_level(torch.where, arity=3))
implements(Tensor.where, compile_safe=True)(_torch_level(Tensor.where, arity=3))


__all__ = ["Operands", "check_broadcast", "copy_", "fill_", "line_up", "pointwise", "run_packed"]
