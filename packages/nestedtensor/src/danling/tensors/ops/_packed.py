r"""
Helpers for op handlers: unwrap NestedTensors to packed values, rewrap results, translate dims.

Handlers compute on ``nt._values`` (shape ``(rows, *static sizes)``) and rewrap the result with
``packed_like``; everything here is vectorised, none of it loops over elements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor

from .._layout import NestedLayout, inverse_permutation
from .._padding import dense_to_values
from ..nested_tensor import NestedTensor


def is_nested(obj: object) -> bool:
    """Whether ``obj`` is a NestedTensor."""
    return isinstance(obj, NestedTensor)


def same_layout(first: NestedTensor, second: NestedTensor) -> bool:
    """Whether the packed values of two NestedTensors line up row by row."""
    return first._layout.same_as(second._layout)


def packed_like(nt: NestedTensor, values: Tensor, layout: NestedLayout | None = None) -> NestedTensor:
    r"""
    Wrap ``values`` with ``nt``'s layout (or ``layout``) and its ``batch_first``/padding/mask settings.

    ``values`` must have ``nt``'s row count; its trailing (static) dims may have new sizes.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> packed_like(nt, nt._values * 10)
        NestedTensor([
            [10, 20, 30],
            [40, 50]
        ])
    """
    if layout is None:
        layout, reference = nt._layout, nt._values
        if values.dim() != reference.dim() or values.shape[:1] != reference.shape[:1]:
            raise ValueError(
                f"Cannot rewrap values of shape {tuple(values.shape)} in a layout with "
                f"{layout.num_rows} rows and static sizes {layout.static_sizes}"
            )
        if tuple(values.shape[1:]) != layout.static_sizes and layout.permutation:
            layout = layout.with_static_sizes(values.shape[1:])
    return type(nt)._from_packed(
        values, layout, batch_first=nt._batch_first, padding_value=nt._padding_value, mask_value=nt._mask_value
    )


def apply_packed(func: Callable, nt: NestedTensor, *args: Any, **kwargs: Any) -> NestedTensor:
    r"""
    Apply ``func`` to the packed values of ``nt`` and rewrap the result with the same layout.

    Examples:
        >>> apply_packed(torch.neg, NestedTensor([[1, 2, 3], [4, 5]]))
        NestedTensor([
            [-1, -2, -3],
            [-4, -5]
        ])
    """
    return packed_like(nt, func(nt._values, *args, **kwargs))


def batch_dim(nt: NestedTensor) -> int:
    """Index of the batch dim in ``nt``'s logical shape."""
    return 0 if nt._batch_first or nt.dim() <= 1 else 1


def normalize_dim(dim: int, ndim: int) -> int:
    """Map a possibly negative ``dim`` into ``range(ndim)``, raising ``IndexError`` like torch does."""
    if not -ndim <= dim < ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {dim})")
    return dim + ndim if dim < 0 else dim


def element_dim(nt: NestedTensor, dim: int) -> int:
    r"""
    Translate a logical dim of ``nt`` to the matching dim of its elements.

    Raises:
        ValueError: If ``dim`` is the batch dim.

    Examples:
        >>> nt = NestedTensor([torch.zeros(3, 4), torch.zeros(2, 4)])
        >>> element_dim(nt, 2), element_dim(nt, -1)
        (1, 1)
    """
    dim = normalize_dim(dim, nt.dim())
    batch = batch_dim(nt)
    if dim == batch:
        raise ValueError("Cannot translate the batch dimension for NestedTensor.")
    return dim - 1 if dim > batch else dim


def from_elements(tensors: Sequence[Tensor], like: NestedTensor) -> NestedTensor:
    """Pack per-element results into a NestedTensor with ``like``'s settings."""
    return type(like)(
        list(tensors), batch_first=like._batch_first, padding_value=like._padding_value, mask_value=like._mask_value
    )


def split_elements(nt: NestedTensor) -> tuple[Tensor, ...]:
    r"""
    Views of every element cut from the values by one ``split``, for per-element paths that need gradients.

    Backward of the pieces is one concatenation, where ``unbind``'s ``narrow`` views cost one zero-filled
    buffer of the whole values per element; like every output of ``split``, the views must not be
    written in place while autograd records.

    Examples:
        >>> nt = NestedTensor([torch.zeros(2, 3), torch.zeros(4, 3)]).transpose(1, 2)
        >>> [tuple(element.shape) for element in split_elements(nt)]
        [(3, 2), (3, 4)]
    """
    layout = nt._layout
    if not layout.permutation:
        return tuple(nt._values.unbind(0))
    pieces = nt._values.split(layout.packed_sizes)
    if layout.ragged_rank == 1 and layout.is_identity:
        return pieces
    inverse = inverse_permutation(layout.permutation)
    return tuple(
        piece.reshape(*(shape[d] for d in layout.ragged_dims), *layout.static_sizes).permute(inverse)
        for piece, shape in zip(pieces, layout.element_shapes)
    )


def align_dense(nt: NestedTensor, tensor: Tensor) -> Tensor | None:
    r"""
    Turn a dense operand of an elementwise op on ``nt`` into one that lines up with ``nt._values``.

    - 0-d tensors are returned as they are;
    - a tensor of exactly ``nt.shape`` (the padded shape) has its real positions gathered;
    - a tensor that broadcasts against every element through static dims only (a bias over the
      channels, a ``(1, 1, D)`` scale) is viewed to broadcast against the values.

    Returns ``None`` when neither applies (e.g. it varies along a ragged dim).
    """
    if tensor.dim() == 0:
        return tensor
    layout = nt._layout
    if tensor.shape == nt.shape:
        dense = tensor if nt._batch_first or tensor.dim() <= 1 else tensor.movedim(1, 0)
        return dense_to_values(layout, dense.to(nt._values.device))
    shape = list(tensor.shape)
    while len(shape) > layout.rank and shape[0] == 1:
        shape.pop(0)
    if len(shape) > layout.rank or not layout.permutation:
        return None
    shape = [1] * (layout.rank - len(shape)) + shape
    if any(shape[d] != 1 for d in layout.ragged_dims):
        return None
    if any(shape[d] not in (1, size) for d, size in zip(layout.static_dims, layout.static_sizes)):
        return None
    static = [shape[d] for d in layout.static_dims]
    element_view = tensor.reshape(shape).permute(layout.permutation)
    return element_view.reshape(1, *static)


def unwrap_packed(args: tuple, kwargs: dict) -> tuple[NestedTensor, tuple, dict, dict[int, NestedTensor]] | None:
    r"""
    Replace NestedTensors in ``args``/``kwargs`` by their values when all of them share one layout.

    Dense tensor operands go through [`align_dense`][danling.tensors.ops._packed.align_dense].

    Returns:
        ``(reference, args, kwargs, owners)`` where ``owners`` maps ``id(values)`` back to the
        NestedTensor it came from (to return the right object from in-place and ``out=`` ops), or
        ``None`` when the operands do not line up.
    """
    reference = next((a for a in (*args, *kwargs.values()) if isinstance(a, NestedTensor)), None)
    if reference is None:
        return None
    owners: dict[int, NestedTensor] = {}

    def convert(value: Any) -> Any:
        if isinstance(value, NestedTensor):
            if not same_layout(value, reference):
                raise _Misaligned
            owners[id(value._values)] = value
            return value._values
        if isinstance(value, Tensor):
            aligned = align_dense(reference, value)
            if aligned is None:
                raise _Misaligned
            return aligned
        return value

    try:
        new_args = tuple(convert(a) for a in args)
        new_kwargs = {k: convert(v) for k, v in kwargs.items()}
    except _Misaligned:
        return None
    return reference, new_args, new_kwargs, owners


class _Misaligned(Exception):
    """Raised inside ``unwrap_packed`` when an operand cannot line up with the packed values."""


def rewrap_result(result: Any, reference: NestedTensor, owners: dict[int, NestedTensor]) -> Any:
    """Rewrap what a handler computed on values: mutated inputs map back to their NestedTensor."""
    if isinstance(result, Tensor):
        owner = owners.get(id(result))
        return owner if owner is not None else packed_like(reference, result)
    if isinstance(result, (tuple, list)):
        return type(result)(rewrap_result(r, reference, owners) for r in result)
    return result


def dims_argument(dim: int | Sequence[int] | None) -> list[int] | None:
    """Normalise a ``dim`` argument (int, sequence, or ``None``/empty meaning all dims) to a list or ``None``."""
    if dim is None:
        return None
    if isinstance(dim, int):
        return [dim]
    dims = list(dim)
    return dims or None


__all__ = [
    "align_dense",
    "apply_packed",
    "batch_dim",
    "dims_argument",
    "element_dim",
    "from_elements",
    "is_nested",
    "normalize_dim",
    "packed_like",
    "rewrap_result",
    "same_layout",
    "split_elements",
    "unwrap_packed",
]
