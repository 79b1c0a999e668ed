"""Copies, conversions and new tensors: ``to``/``half``/``cuda`` (via ``_to_copy``), ``clone``, ``detach``, ``*_like``.

All of them keep the layout and work on the packed values, so they cost what the same op costs on
one dense tensor of the real data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._packed import apply_packed, packed_like
from ._registry import implements, implements_aten

aten = torch.ops.aten


@implements_aten(aten._to_copy.default, aten.clone.default, aten.detach.default, aten.alias.default, compile_safe=True)
def copy_values(func, args, kwargs) -> NestedTensor:
    r"""
    Dtype/device conversions, ``clone``, ``detach`` and ``alias``: the same op on the packed values.

    Offsets and shapes stay on the CPU whatever the device of the values.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> nt.double().dtype, nt.clone()._values.data_ptr() != nt._values.data_ptr()
        (torch.float64, True)
    """
    nt = args[0]
    kwargs = dict(kwargs)
    if func is aten.clone.default and kwargs.get("memory_format") not in (None, torch.preserve_format):
        kwargs.pop("memory_format")
    return apply_packed(func, nt, *args[1:], **kwargs)


@implements_aten(
    aten.empty_like.default,
    aten.zeros_like.default,
    aten.ones_like.default,
    aten.full_like.default,
    aten.rand_like.default,
    aten.randn_like.default,
    aten.randint_like.default,
    aten.randint_like.low_dtype,
    compile_safe=True,
)
def like(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.zeros_like(nt)`` and friends: a NestedTensor of the same element shapes.

    Examples:
        >>> torch.full_like(NestedTensor([[1, 2, 3], [4, 5]]), 7)
        NestedTensor([
            [7, 7, 7],
            [7, 7]
        ])
    """
    kwargs = {k: v for k, v in kwargs.items() if k != "memory_format"}
    return apply_packed(func, args[0], *args[1:], **kwargs)


@implements_aten(aten.new_empty.default, aten.new_zeros.default, aten.new_ones.default, aten.new_full.default)
def new_dense(func, args, kwargs) -> Tensor:
    r"""
    ``nt.new_zeros(size)`` and friends: a dense tensor of ``size`` with ``nt``'s dtype and device.

    Examples:
        >>> NestedTensor([[1, 2, 3], [4, 5]]).new_ones((2,))
        tensor([1, 1])
    """
    return func(args[0]._values, *args[1:], **kwargs)


@implements(Tensor.contiguous, compile_safe=True)
def contiguous(input: NestedTensor, memory_format: torch.memory_format = torch.contiguous_format) -> NestedTensor:
    """Make the packed values contiguous (returns ``input`` when they already are)."""
    if input._values.is_contiguous():
        return input
    return packed_like(input, input._values.contiguous())


@implements(Tensor.is_contiguous, compile_safe=True)
def is_contiguous(input: NestedTensor, memory_format: torch.memory_format = torch.contiguous_format) -> bool:
    """Whether the packed values are contiguous."""
    return input._values.is_contiguous()


@implements(Tensor.element_size, compile_safe=True)
def element_size(input: NestedTensor) -> int:
    return input._values.element_size()


@implements(Tensor.data.__get__)  # type: ignore[attr-defined]
def data(input: NestedTensor) -> NestedTensor:
    """``nt.data``: the packed values detached from autograd, same layout."""
    return packed_like(input, input._values.data)
