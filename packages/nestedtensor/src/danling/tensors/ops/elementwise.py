"""Elementwise ops: every aten op tagged ``pointwise`` runs once on the packed values.

That covers arithmetic, comparisons (``nt > 2``, ``nt == other``), ``where``, activations and their
in-place forms (which write into the packed buffer, so cached padded views are rebuilt next time).
Operands line up with the packed rows when they are NestedTensors of the same layout, scalars,
0-d tensors, dense tensors of exactly ``nt.shape`` (the padded shape) or dense tensors that broadcast
along static dims only; anything else runs per element.
"""

from __future__ import annotations

import torch

from ..nested_tensor import NestedTensor
from ._fallback import per_element_fallback
from ._packed import align_dense, is_nested, rewrap_result, same_layout, unwrap_packed
from ._registry import aten_rule, implements_aten

aten = torch.ops.aten


@aten_rule(lambda op: torch.Tag.pointwise in op.tags)
def pointwise(func, args, kwargs):
    r"""
    Run a pointwise op on the packed values; operands that do not line up fall back to per element.

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
    unwrapped = unwrap_packed(args, kwargs)
    if unwrapped is None:
        return per_element_fallback(func, args, kwargs)
    reference, args, kwargs, owners = unwrapped
    return rewrap_result(func(*args, **kwargs), reference, owners)


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


@implements_aten(aten.fill_.Scalar, aten.fill_.Tensor, aten.zero_.default)
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
