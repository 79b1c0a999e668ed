"""Turn the constructor's inputs (tensors, nested lists, numbers, ``torch.nested`` tensors) into packed values."""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce

import torch
from torch import Tensor

from ._layout import NestedLayout


def _plain(tensor: Tensor) -> Tensor:
    """Drop Python-only subclasses (PNTensor, Parameter) so packed values are plain tensors."""
    if type(tensor) is Tensor or type(tensor).__torch_dispatch__ is not Tensor.__torch_dispatch__:
        return tensor
    return tensor.as_subclass(Tensor)


def unpack_arguments(tensors: tuple) -> tuple:
    """``NestedTensor([a, b])`` and ``NestedTensor(a, b)`` mean the same; a lone tensor is a batch of one."""
    if len(tensors) == 1 and not isinstance(tensors[0], Tensor):
        if not isinstance(tensors[0], Iterable):
            raise ValueError(f"tensors must be an Iterable, but got {type(tensors[0])}.")
        return tuple(tensors[0])
    return tensors


def coerce_elements(
    items: tuple,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    r"""
    Convert every item to a tensor, check they share device and rank, and promote them to one dtype.

    Raises:
        ValueError: If items live on different devices or have different ranks.

    Examples:
        >>> [t.dtype for t in coerce_elements(([1, 2], torch.tensor([0.5])))]
        [torch.float32, torch.float32]
    """
    elements = []
    for item in items:
        if isinstance(item, Tensor):
            tensor = _plain(item)
            if device is not None or dtype is not None:
                tensor = tensor.to(device=device, dtype=dtype)
        else:
            tensor = torch.tensor(item, dtype=dtype, device=device)
        if elements:
            first = elements[0]
            if tensor.device != first.device:
                raise ValueError(
                    f"All tensors in NestedTensor must be on the same device, but got {first.device} and {tensor.device}"
                )
            if tensor.dim() != first.dim():
                raise ValueError(
                    f"All tensors must have the same number of dimensions, got ndim {first.dim()} and {tensor.dim()}. "
                    "If using a DataLoader with drop_last=False, squeeze the last batch before constructing NestedTensor."
                )
        elements.append(tensor)
    if dtype is None and elements:
        common = reduce(torch.promote_types, {t.dtype for t in elements})
        elements = [t if t.dtype == common else t.to(common) for t in elements]
    return elements


def pack_inputs(
    tensors: tuple, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> tuple[Tensor, NestedLayout]:
    """Packed values and layout for the positional arguments of ``NestedTensor(...)``."""
    tensors = unpack_arguments(tensors)
    if len(tensors) == 1 and isinstance(tensors[0], Tensor) and tensors[0].is_nested:
        return _from_torch_nested(tensors[0])
    elements = coerce_elements(tensors, dtype=dtype, device=device)
    layout = NestedLayout.from_shapes([t.shape for t in elements])
    if not elements:
        return torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device), layout
    return layout.pack(elements), layout


def check_bool(name: str, value: object) -> bool:
    """Validate a boolean setting (``batch_first``, ``mask_value``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_padding_value(value: object) -> float:
    """Validate ``padding_value`` and store it as a float."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"padding_value must be float-convertible, got {type(value).__name__}") from None


def set_requires_grad(values: Tensor, requires_grad: bool | None) -> Tensor:
    """``True`` keeps a graph to the sources (or starts a leaf); ``False`` detaches; ``None`` follows the sources."""
    if requires_grad is True and not values.requires_grad:
        values.requires_grad_(True)
    elif requires_grad is False and values.requires_grad:
        values = values.detach()
    return values


def _from_torch_nested(nested: Tensor) -> tuple[Tensor, NestedLayout]:
    """Reuse the buffer of a jagged ``torch.nested`` tensor; other layouts are unbound and packed."""
    if nested.layout == torch.jagged and nested._lengths is None and nested._ragged_idx == 1:
        values = nested.values()
        lengths = nested.offsets().diff().tolist()
        layout = NestedLayout.from_shapes([(n, *values.shape[1:]) for n in lengths])
        if layout.is_identity and layout.ragged_rank == 1:
            return values, layout
    elements = list(nested.unbind())
    layout = NestedLayout.from_shapes([t.shape for t in elements])
    return layout.pack(elements), layout
