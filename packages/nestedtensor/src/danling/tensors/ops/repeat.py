r"""
``repeat_interleave`` of NestedTensors: along an element dim, along the batch, or without a dim.

Dims are NestedTensor dims. Every element is repeated as ``torch.repeat_interleave`` would repeat it
alone:

- along a static dim, one ``repeat_interleave`` of the packed values;
- along a ragged dim, one gather of rows (row ``c`` of the result reads row ``c // repeats``, or
  the row that ``repeats`` per position maps it to);
- without a dim, every element is flattened (row-major) and each of its values repeated, as torch
  flattens a tensor: the elements of the result are 1-D. A dense ``repeats`` then has one count per
  real value (``nt.numel()`` of them, in element order);
- along the batch dim, the elements themselves are repeated.

``repeats`` is an int, a one-element tensor, a 1-D tensor with one count per position along the dim
(which every element must then share), or a NestedTensor of per-element counts; the last has no
batch-wide formulation and runs element by element (a documented slow path). ``output_size`` is a
hint of torch's for one tensor; elements differ in size, so it is not used.
"""

from __future__ import annotations

from math import prod
from typing import Any

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._packed import batch_dim, element_dim, from_elements, is_nested, normalize_dim, split_elements
from ._registry import check_slow_path, continue_to_aten, implements
from ._rows import gather_rows, row_major_values
from .indexing import select_elements


def _mismatch(count: int, size: int, dim: int, element: int | None = None) -> RuntimeError:
    where = "" if element is None else f" (element {element})"
    return RuntimeError(
        f"repeats must have the same size as input along dim, but got repeats.size(0) = {count} and "
        f"input.size({dim}) = {size}{where}"
    )


def _counts(repeats: Any) -> int | Tensor:
    """An int for one count (an int or a one-element tensor), else the 1-D tensor of counts."""
    if isinstance(repeats, Tensor):
        if repeats.dim() > 1:
            raise RuntimeError(f"repeat_interleave only accept 1D vector as repeat, got shape {tuple(repeats.shape)}")
        if repeats.is_floating_point() or repeats.is_complex():
            raise RuntimeError(f"repeats has to be Long or Int tensor, got {repeats.dtype}")
        return int(repeats.reshape(())) if repeats.numel() == 1 else repeats
    if not isinstance(repeats, int) or isinstance(repeats, bool):
        raise TypeError(f"repeat_interleave: repeats must be an int or a tensor of ints, got {repeats!r}")
    return repeats


def _check_counts(counts: int | Tensor) -> None:
    negative = counts < 0 if isinstance(counts, int) else bool((counts < 0).any())
    if negative:
        raise RuntimeError("repeats can not be negative")


def _flattened(nt: NestedTensor) -> NestedTensor:
    """Every element flattened in row-major order: 1-D elements of ``numel`` values each."""
    shapes = [(prod(shape),) for shape in nt._layout.element_shapes]
    return nt._rewrap(row_major_values(nt), NestedLayout.from_shapes(shapes, (0,), 1))


def _along_ragged(nt: NestedTensor, target: int, counts: int | Tensor, dim: int) -> NestedTensor:
    """Repeat every element along ragged element dim ``target``: one gather of rows."""
    layout = nt._layout
    sizes = [shape[target] for shape in layout.element_shapes]
    if isinstance(counts, int):
        new_sizes = [size * counts for size in sizes]
        key: tuple = ("repeat_interleave", target, counts)
    else:
        wrong = next((i for i, size in enumerate(sizes) if size != counts.numel()), None)
        if wrong is not None:
            raise _mismatch(counts.numel(), sizes[wrong], dim, wrong)
        new_sizes = [int(counts.sum())] * len(sizes)
        key = ("repeat_interleave", target, tuple(counts.tolist()))
    shapes = tuple((*s[:target], n, *s[target + 1 :]) for s, n in zip(layout.element_shapes, new_sizes))
    new_layout = NestedLayout(shapes, layout.permutation, layout.ragged_rank, layout.static_sizes)
    level = layout.ragged_dims.index(target)

    def source(batch: Tensor, coordinates: list[Tensor]) -> list[Tensor]:
        position = coordinates[level]
        if isinstance(counts, int):
            origin = torch.div(position, max(counts, 1), rounding_mode="floor")
        else:
            ends = counts.to(position.device, torch.long).cumsum(0)
            origin = torch.searchsorted(ends, position, right=True)
        return [origin if j == level else c for j, c in enumerate(coordinates)]

    return nt._rewrap(gather_rows(nt, new_layout, key, source), new_layout)


def _per_element(nt: NestedTensor, repeats: NestedTensor, target: int | None) -> NestedTensor:
    """Each element with its own counts: one ``repeat_interleave`` per element (a documented slow path)."""
    if len(repeats) != len(nt):
        raise ValueError(
            f"repeat_interleave: a NestedTensor of repeats needs one entry per element, got {len(repeats)} "
            f"for {len(nt)} elements"
        )
    check_slow_path("repeat_interleave with per-element repeats")
    pieces = zip(split_elements(nt), repeats._layout.unpack(repeats._values))
    return from_elements([element.repeat_interleave(counts, dim=target) for element, counts in pieces], like=nt)


def repeat_elements(nt: NestedTensor, repeats: Any, dim: int | None = None) -> NestedTensor:
    r"""
    ``torch.repeat_interleave(nt, repeats, dim)`` as described in this module's docstring.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> repeat_elements(nt, 2, dim=1)
        NestedTensor([
            [1, 1, 2, 2, 3, 3],
            [4, 4, 5, 5]
        ])
        >>> repeat_elements(nt, 2, dim=0).tolist()
        [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5]]
    """
    if dim is None:
        flat = _flattened(nt)
        if is_nested(repeats):
            return _per_element(flat, repeats, 0)
        counts = _per_value(nt, repeats)
        _check_counts(counts)
        return _along_ragged(flat, 0, counts, 0) if isinstance(counts, int) else _repeat_values(flat, counts)
    logical = normalize_dim(dim, nt.dim())
    if is_nested(repeats):
        if logical == batch_dim(nt):
            raise ValueError("repeat_interleave along the batch dim takes an int or a 1-D tensor of repeats")
        return _per_element(nt, repeats, element_dim(nt, dim))
    counts = _counts(repeats)
    _check_counts(counts)
    if logical == batch_dim(nt):
        if not isinstance(counts, int) and counts.numel() != len(nt):
            raise _mismatch(counts.numel(), len(nt), dim)
        order = torch.arange(len(nt)).repeat_interleave(counts if isinstance(counts, int) else counts.cpu())
        return select_elements(nt, order.tolist())
    layout, target = nt._layout, element_dim(nt, dim)
    if target in layout.ragged_dims:
        return _along_ragged(nt, target, counts, dim)
    along = layout.values_dim(target)
    size = nt._values.shape[along]
    if not isinstance(counts, int) and counts.numel() != size:
        raise _mismatch(counts.numel(), size, dim)
    values = nt._values.repeat_interleave(counts, dim=along)
    return nt._rewrap(values, layout.with_static_sizes(values.shape[1:]))


def _per_value(nt: NestedTensor, repeats: Any) -> Any:
    """Dense repeats without a dim: one count per real value, as torch counts the flattened input."""
    counts = _counts(repeats)
    if isinstance(counts, Tensor) and counts.numel() != nt.numel():
        raise RuntimeError(
            f"repeats must have the same size as input along dim, but got repeats.size(0) = {counts.numel()} and "
            f"input.numel() = {nt.numel()} (the real values of the NestedTensor, flattened)"
        )
    return counts


def _repeat_values(flat: NestedTensor, counts: Tensor) -> NestedTensor:
    """A flattened NestedTensor with one count per value: one ``repeat_interleave`` of its values."""
    layout = flat._layout
    counts = counts.to(torch.long)
    sizes = torch.zeros(len(flat), dtype=torch.long).index_add_(
        0, layout.row_batch_index(counts.device).cpu(), counts.cpu()
    )
    values = flat._values.repeat_interleave(counts.to(flat._values.device))
    return flat._rewrap(values, NestedLayout.from_shapes([(size,) for size in sizes.tolist()], (0,), 1))


@implements(torch.repeat_interleave, Tensor.repeat_interleave)
def repeat_interleave(input: Any, repeats: Any = None, dim: int | None = None, *, output_size: int | None = None):
    r"""
    ``torch.repeat_interleave`` of a NestedTensor (see the module docstring).

    Examples:
        >>> torch.repeat_interleave(NestedTensor([[1, 2], [3]]), 2)
        NestedTensor([
            [1, 1, 2, 2],
            [3, 3]
        ])
    """
    if not is_nested(input) or repeats is None:  # the one-argument form, or a nested ``repeats`` only
        arguments = (input,) if repeats is None else (input, repeats, dim)
        return continue_to_aten(torch.repeat_interleave, arguments, {"output_size": output_size})
    return repeat_elements(input, repeats, dim)


__all__ = ["repeat_elements", "repeat_interleave"]
