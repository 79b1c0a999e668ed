r"""
Tensor methods about memory that C++ would answer from the wrapper's own (empty) storage.

A NestedTensor is a wrapper: its data lives in ``nt._values``. Methods that look at storage, data
pointers, pinning or sharing answer for the packed values; exports out of torch answer with the
data (``tolist`` per element, ``numpy`` the padded array, as ``nt.shape`` is the padded shape);
lazy conjugate/negative views are materialised on the values; and the few calls that cannot apply to a
batch of tensors (``set_``, DLPack, sparse and MKL-DNN layouts) raise a clear error instead of
crashing on the empty storage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._packed import apply_packed
from ._registry import _is_compiling, continue_to_aten, implements, implements_aten

aten = torch.ops.aten


@implements(Tensor.share_memory_)
def share_memory_(input: NestedTensor) -> NestedTensor:
    """Move the packed values to shared memory (what ``DataLoader`` workers and ``multiprocessing`` need)."""
    input._values.share_memory_()
    return input


@implements(Tensor.is_shared)
def is_shared(input: NestedTensor) -> bool:
    """Whether the packed values are in shared memory."""
    return input._values.is_shared()


@implements(Tensor.untyped_storage, compile_safe=True)
def untyped_storage(input: NestedTensor) -> Any:
    """
    Untyped storage of the packed values.

    While ``torch.compile`` traces, the wrapper's own (empty) storage: dynamo and AOTAutograd read it to
    build the fake wrapper and track aliasing of inputs, and the values' storage would not fit its sizes.
    """
    if _is_compiling():
        return continue_to_aten(Tensor.untyped_storage, (input,), {})
    return input._values.untyped_storage()


@implements(Tensor.storage, Tensor._typed_storage)
def typed_storage(input: NestedTensor) -> Any:
    """Typed storage of the packed values (the NestedTensor has none of its own)."""
    return input._values._typed_storage()


@implements(*(getattr(Tensor, name) for name in ("data_ptr", "const_data_ptr") if hasattr(Tensor, name)))
def data_ptr(input: NestedTensor) -> int:
    """Address of the first packed value."""
    return input._values.data_ptr()


@implements(Tensor.is_pinned)
def is_pinned(input: NestedTensor, device: Any = None) -> bool:
    """Whether the packed values are in pinned memory."""
    return input._values.is_pinned() if device is None else input._values.is_pinned(device)


@implements(torch.numel, Tensor.numel, Tensor.nelement)
def numel(input: NestedTensor) -> int:
    """Number of real values (padding is not data), as ``nt.numel()``."""
    return input._values.numel()


@implements(Tensor.nbytes.__get__)
def nbytes(input: NestedTensor) -> int:
    """Bytes of the packed values."""
    return input._values.nbytes


@implements(Tensor.tolist)
def tolist(input: NestedTensor) -> list:
    """``Tensor.tolist(nt)``: the elements as nested Python lists (as ``nt.tolist()``)."""
    return NestedTensor.tolist(input)


@implements(Tensor.__repr__)
def repr_(input: NestedTensor, *args: Any, **kwargs: Any) -> str:
    """``Tensor.__repr__(nt)``: the NestedTensor's own repr."""
    return NestedTensor.__repr__(input)


@implements(Tensor.numpy, Tensor.__array__)
def numpy(input: NestedTensor, *args: Any, **kwargs: Any) -> Any:
    r"""
    ``nt.numpy()``/``np.asarray(nt)``: the padded array (``padding_value`` where an element has no data).

    Examples:
        >>> NestedTensor([[1, 2, 3], [4, 5]]).numpy()
        array([[1, 2, 3],
               [4, 5, 0]])
    """
    padded = input.tensor.detach()
    if args and args[0] is not None:  # __array__(dtype)
        return padded.numpy().astype(args[0])
    return padded.numpy(**{k: v for k, v in kwargs.items() if k == "force"})


@implements(Tensor.__dlpack_device__)
def dlpack_device(input: NestedTensor) -> tuple:
    """Device of the packed values, in DLPack terms."""
    return input._values.__dlpack_device__()


@implements(Tensor.__dlpack__)
def dlpack(input: NestedTensor, *args: Any, **kwargs: Any) -> Any:
    """DLPack describes one strided array; a batch of arrays of different shapes has no such description."""
    raise TypeError(
        "A NestedTensor has no DLPack form (its elements have different shapes); export nt.concat (the packed "
        "values) or nt.tensor (padded) instead"
    )


@implements_aten(aten._conj.default, aten._neg_view.default)
def view_bit(func, args, kwargs) -> NestedTensor:
    r"""
    Lazy conjugate and negative views (``nt.conj()`` on complex data), materialised on the packed values.

    The wrapper cannot carry the view bit for its values (ops that decompose per element would see
    unresolved views), so the conjugate or negation is computed once.

    Examples:
        >>> nt = NestedTensor([torch.tensor([1 + 2j]), torch.tensor([3j, 4 + 1j])])
        >>> nt.conj().imag.tolist()
        [[-2.0], [-3.0, -1.0]]
    """
    return apply_packed(torch.conj_physical if func is aten._conj.default else torch.neg, args[0])


@implements_aten(aten.detach_.default)
def detach_(func, args, kwargs) -> NestedTensor:
    """Detach in place: the NestedTensor keeps its values, cut from the graph that produced them."""
    nt = args[0]
    nt._values = nt._values.detach()
    nt._padded_cache = None
    return nt


def _cannot_apply(reason: str) -> Any:
    def handler(func, args, kwargs):
        raise NotImplementedError(f"{func} cannot apply to a NestedTensor: {reason}")

    return handler


_WEIGHT_PACKING = [
    getattr(torch, name)
    for name in ("fbgemm_linear_quantize_weight", "fbgemm_pack_gemm_matrix_fp16")
    if hasattr(torch, name)
]


@implements(*_WEIGHT_PACKING)
def weight_packing(*args: Any, **kwargs: Any) -> Any:
    """FBGEMM packs one dense weight matrix (read straight from its storage); a batch of them has none."""
    raise NotImplementedError(
        "FBGEMM weight packing cannot apply to a NestedTensor: it packs one dense weight matrix; pack nt.tensor "
        "or each element instead"
    )


implements_aten(aten.set_)(_cannot_apply("it has no storage of its own; build a new NestedTensor instead"))
_LAYOUT_CONVERSIONS = [
    getattr(aten, name)
    for name in ("_to_sparse", "_to_sparse_csr", "_to_sparse_csc", "_to_sparse_bsr", "_to_sparse_bsc", "to_mkldnn")
    if hasattr(aten, name)
]
implements_aten(*_LAYOUT_CONVERSIONS)(
    _cannot_apply("a batch of tensors of different shapes has no sparse or MKL-DNN form; convert nt.tensor")
)


__all__ = [
    "data_ptr",
    "detach_",
    "dlpack",
    "dlpack_device",
    "is_pinned",
    "is_shared",
    "nbytes",
    "numel",
    "numpy",
    "repr_",
    "share_memory_",
    "tolist",
    "typed_storage",
    "untyped_storage",
    "view_bit",
    "weight_packing",
]
