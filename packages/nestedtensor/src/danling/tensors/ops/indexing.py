"""Indexing and assignment: ``nt[i]``, ``nt[a:b]``, ``nt[[...]]``, ``nt[mask]``, ``nt[:, ...]``, ``nt[...] = v``.

The first index always selects elements (whatever ``batch_first``); the rest of a tuple index applies
inside every element, in that element's own coordinates. Selections copy rows of the packed values
with one ``index_select`` (contiguous slices are views); only tuple indices that touch ragged dims
run per element.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._packed import from_elements
from ._registry import check_slow_path, implements

_INDEX_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _normalize_index(nt: NestedTensor, index: int) -> int:
    batch = len(nt)
    if not -batch <= index < batch:
        raise IndexError(f"index {index} is out of range for NestedTensor with {batch} elements")
    return index + batch if index < 0 else index


def _batch_selection(nt: NestedTensor, index: slice | list | Tensor) -> range | list[int]:
    """Element indices picked by a slice, a list (of ints or bools) or a 1-D tensor."""
    batch = len(nt)
    if isinstance(index, slice):
        return range(*index.indices(batch))
    if isinstance(index, Tensor):
        if index.dtype in (torch.bool, torch.uint8):
            index = index.bool().tolist()
        elif index.is_floating_point() or index.is_complex():
            raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
        else:
            index = index.tolist()
    if index and all(isinstance(i, bool) for i in index):
        if len(index) != batch:
            raise IndexError(f"Boolean index has length {len(index)} but batch size is {batch}")
        return [i for i, keep in enumerate(index) if keep]
    return [_normalize_index(nt, int(i)) for i in index]


def _rows(layout: NestedLayout, indices: list[int]) -> Tensor:
    """Rows of ``values`` holding the elements at ``indices``, in that order (CPU ``int64``)."""
    starts = torch.tensor([layout.starts[i] for i in indices], dtype=torch.long)
    sizes = torch.tensor([layout.packed_sizes[i] for i in indices], dtype=torch.long)
    total = int(sizes.sum())
    shift = starts - (sizes.cumsum(0) - sizes)
    return torch.repeat_interleave(shift, sizes, output_size=total) + torch.arange(total)


def select_elements(nt: NestedTensor, indices: range | list[int]) -> NestedTensor:
    r"""
    The elements at ``indices`` as a NestedTensor (a view for a contiguous range).

    Examples:
        >>> select_elements(NestedTensor([[1, 2], [3], [4, 5, 6]]), [2, 0])
        NestedTensor([
            [4, 5, 6],
            [1, 2]
        ])
    """
    layout, values = nt._layout, nt._values
    if isinstance(indices, range) and indices.step == 1:
        start = layout.starts[indices.start] if len(indices) else 0
        stop = layout.starts[indices.stop] if len(indices) else 0
        selected = values.narrow(0, start, stop - start)
    else:
        indices = list(indices)
        selected = values.index_select(0, layout.to_device(_rows(layout, indices), values.device))
    return nt._rewrap(selected, layout.select(list(indices)))


def _static_index(layout: NestedLayout, rest: tuple) -> tuple[tuple, NestedLayout] | None:
    """Index of ``values`` (and the new layout) for ints/slices that leave every ragged dim whole."""
    if len(rest) > layout.rank or not all(isinstance(i, (int, slice)) for i in rest):
        return None
    full = slice(None)
    if any(d in layout.ragged_dims and rest[d] != full for d in range(len(rest))):
        return None
    values_index = [full] * (1 + len(layout.static_dims))
    sizes = dict(zip(layout.static_dims, layout.static_sizes))
    dropped, resized = set(), {}
    for dim, item in enumerate(rest):
        if dim in layout.ragged_dims:
            continue
        values_index[layout.values_dim(dim)] = item
        if isinstance(item, int):
            if not -sizes[dim] <= item < sizes[dim]:
                raise IndexError(f"index {item} is out of bounds for dimension {dim} with size {sizes[dim]}")
            dropped.add(dim)
        else:
            resized[dim] = len(range(*item.indices(sizes[dim])))
    renumber = {d: i for i, d in enumerate(d for d in range(layout.rank) if d not in dropped)}
    shapes = tuple(
        tuple(resized.get(d, s) for d, s in enumerate(shape) if d not in dropped) for shape in layout.element_shapes
    )
    permutation = tuple(renumber[d] for d in layout.permutation if d not in dropped)
    static_sizes = tuple(resized.get(d, s) for d, s in zip(layout.static_dims, layout.static_sizes) if d not in dropped)
    return tuple(values_index), NestedLayout(shapes, permutation, layout.ragged_rank, static_sizes)


def _index_elements(nt: NestedTensor, rest: tuple) -> NestedTensor:
    """Apply ``rest`` inside every element: on the packed values when it only touches static dims."""
    static = _static_index(nt._layout, rest)
    if static is not None:
        values_index, layout = static
        return nt._rewrap(nt._values[values_index], layout)
    check_slow_path("tuple index on ragged dims")
    return from_elements([element[rest] for element in nt._layout.unpack(nt._values)], like=nt)


def _expand_ellipsis(nt: NestedTensor, index: tuple) -> tuple:
    if Ellipsis not in index:
        return index
    position = index.index(Ellipsis)
    fill = (slice(None),) * (nt.dim() - (len(index) - 1))
    return index[:position] + fill + index[position + 1 :]


def _masked_select(nt: NestedTensor, mask: NestedTensor) -> NestedTensor:
    """``nt[mask]`` for a boolean NestedTensor: every element keeps its selected values (1-D)."""
    if len(mask) != len(nt):
        raise ValueError(
            f"NestedTensor batch length mismatch between self and index: self={len(nt)}, index={len(mask)}"
        )
    layout = nt._layout
    if mask.dtype == torch.bool and layout.same_as(mask._layout) and layout.is_identity and layout.rank:
        rows = mask._values.reshape(mask._values.shape[0], -1).sum(1)
        counts = torch.zeros(len(nt), dtype=torch.long, device=rows.device)
        counts.index_add_(0, layout.row_batch_index(rows.device), rows)
        new_layout = NestedLayout.from_shapes([(n,) for n in counts.tolist()])
        return nt._rewrap(nt._values[mask._values], new_layout)
    check_slow_path("indexing with a NestedTensor of another layout")
    pairs = zip(layout.unpack(nt._values), mask._layout.unpack(mask._values))
    return from_elements([element[index] for element, index in pairs], like=nt)


def _plain_index(index: Any) -> Any:
    if isinstance(index, NestedTensor):
        return index.tensor
    if isinstance(index, tuple):
        return tuple(_plain_index(i) for i in index)
    return index


@implements(Tensor.__getitem__)
def getitem(self: Tensor, index: Any) -> Tensor:
    r"""
    ``nt[index]``; see the module docstring. A dense tensor indexed by NestedTensors uses their ``.tensor``.

    Raises:
        IndexError: For an out-of-range element or a boolean list of the wrong length.
        ValueError: For index types without a meaning here (``None``, floats, strings).
    """
    if not isinstance(self, NestedTensor):
        return self[_plain_index(index)]
    if isinstance(index, int):
        return self._layout.element(self._values, _normalize_index(self, index))
    if isinstance(index, NestedTensor):
        return _masked_select(self, index)
    if isinstance(index, Tensor) and index.dim() == 0 and index.dtype in _INDEX_DTYPES:
        return getitem(self, int(index))
    if isinstance(index, (slice, list)) or (isinstance(index, Tensor) and index.dim() == 1):
        return select_elements(self, _batch_selection(self, index))
    if isinstance(index, Tensor):
        return _masked_select(self, self.nested_like(index, strict=False))
    if isinstance(index, tuple):
        if not index:
            return self
        index = _expand_ellipsis(self, index)
        first, rest = index[0], index[1:]
        if isinstance(first, Tensor):
            return self.tensor[_plain_index(index)]
        if not rest:
            return getitem(self, first)
        if isinstance(first, int):
            return self._layout.element(self._values, _normalize_index(self, first))[rest]
        if isinstance(first, (slice, list)):
            return _index_elements(select_elements(self, _batch_selection(self, first)), rest)
        raise ValueError(f"Unsupported batch index type {type(first)}")
    raise ValueError(f"Unsupported index type {type(index)}")


def _as_element(nt: NestedTensor, value: Any, shape: tuple[int, ...] | None = None) -> Tensor:
    """``value`` as an element of ``nt`` (its dtype and device); lower-rank values broadcast to ``shape``."""
    value = torch.as_tensor(value, device=nt.device) if not isinstance(value, Tensor) else value
    value = value.to(device=nt.device, dtype=nt.dtype)
    if shape is not None and value.dim() < len(shape):
        value = value.expand(shape)
    if value.dim() != nt._layout.rank:
        raise ValueError(f"Assigned tensor ndim must match existing ndim {nt._layout.rank}, but got {value.dim()}")
    return value


def _replace_elements(nt: NestedTensor, replacements: dict[int, Tensor]) -> None:
    """Swap whole elements whose shapes change; the packed buffer is rebuilt around them."""
    layout = nt._layout
    shapes = list(layout.element_shapes)
    for i, value in replacements.items():
        shapes[i] = tuple(value.shape)
    new_layout = layout.with_element_shapes(shapes)
    if new_layout.permutation != layout.permutation or new_layout.ragged_rank != layout.ragged_rank:
        check_slow_path("assignment that changes the packing")
        elements = [replacements.get(i, e) for i, e in enumerate(layout.unpack(nt._values))]
        nt._replace_packed(new_layout.pack(elements), new_layout)
        return
    pieces, cursor, starts = [], 0, layout.starts
    for i in sorted(replacements):
        pieces.append(nt._values.narrow(0, starts[cursor], starts[i] - starts[cursor]))
        pieces.append(new_layout.select([i]).pack([replacements[i]]))
        cursor = i + 1
    pieces.append(nt._values.narrow(0, starts[cursor], starts[-1] - starts[cursor]))
    nt._replace_packed(torch.cat(pieces), new_layout)


def _assign_elements(nt: NestedTensor, indices: range | list[int], items: list[Tensor]) -> None:
    """Write ``items`` to the elements at ``indices``: in place when shapes match, else replace."""
    if len(items) != len(indices):
        raise ValueError(f"Size mismatch: tried to assign {len(items)} values to {len(indices)} indices")
    layout = nt._layout
    items = [_as_element(nt, item, layout.element_shapes[i]) for i, item in zip(indices, items)]
    if all(tuple(item.shape) == layout.element_shapes[i] for i, item in zip(indices, items)):
        if items:
            packed = layout.select(list(indices)).pack(items)
            rows = layout.to_device(_rows(layout, list(indices)), nt._values.device)
            nt._values.index_copy_(0, rows, packed)
        return
    _replace_elements(nt, dict(zip(indices, items)))


def _assign_inside(nt: NestedTensor, indices: range | list[int], rest: tuple, value: Any) -> None:
    """``nt[first, *rest] = value``: write inside the selected elements, through views of the values."""
    if isinstance(value, NestedTensor):
        if len(value) != len(indices):
            raise ValueError(f"Size mismatch: tried to assign {len(value)} values to {len(indices)} indices")
        values = list(value.unbind())
    else:
        static = _static_index(nt._layout, rest)
        if static is not None and list(indices) == list(range(len(nt))):
            nt._values[static[0]] = value
            return
        values = [value] * len(indices)
    check_slow_path("assignment inside elements")
    layout = nt._layout
    for i, item in zip(indices, values):
        layout.element(nt._values, i)[rest] = item


@implements(Tensor.__setitem__)
def setitem(self: Tensor, index: Any, value: Any) -> None:
    r"""
    ``nt[index] = value``: same index forms as reading.

    An int index replaces one element (its shape may change); slices and lists take a NestedTensor,
    a list, a stack of elements, or one value for all; a tuple writes inside the selected elements; a
    boolean NestedTensor of the same layout writes the selected values. Values are cast to the
    NestedTensor's dtype and device.

    Examples:
        >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
        >>> nested_tensor[0] = torch.tensor([6, 7, 8])
        >>> nested_tensor[0]
        tensor([6, 7, 8])
        >>> nested_tensor[1] = torch.tensor([9, 10, 11, 12])
        >>> nested_tensor.shape
        torch.Size([2, 4])
    """
    if not isinstance(self, NestedTensor):
        self[_plain_index(index)] = value.tensor if isinstance(value, NestedTensor) else value
        return
    if isinstance(index, Tensor) and not isinstance(index, NestedTensor) and index.dim() == 0:
        index = int(index)
    if isinstance(index, int):
        if isinstance(value, NestedTensor):
            if len(value) != 1:
                raise ValueError(
                    f"When setting with an integer index, value must have a single tensor, but got {len(value)}"
                )
            value = value[0]
        _assign_elements(self, [_normalize_index(self, index)], [value])
    elif isinstance(index, NestedTensor):
        if not (index.dtype == torch.bool and self._layout.same_as(index._layout)):
            raise ValueError("Assignment through a NestedTensor index needs a boolean mask of the same layout")
        self._values[index._values] = value
    elif isinstance(index, (slice, list)) or (isinstance(index, Tensor) and index.dim() == 1):
        indices = _batch_selection(self, index)
        if isinstance(value, NestedTensor):
            items = list(value.unbind())
        elif isinstance(value, Tensor) and value.dim() == self._layout.rank + 1:
            items = list(value.unbind(0))
        elif isinstance(value, (list, tuple)) and value and not isinstance(value[0], (int, float, bool)):
            items = list(value)
        else:
            items = [value] * len(indices)
        _assign_elements(self, indices, items)
    elif isinstance(index, tuple):
        if len(index) == 1:
            setitem(self, index[0], value)
        elif index:
            index = _expand_ellipsis(self, index)
            first, rest = index[0], index[1:]
            if isinstance(first, int):
                self._layout.element(self._values, _normalize_index(self, first))[rest] = value
            elif isinstance(first, (slice, list)):
                _assign_inside(self, _batch_selection(self, first), rest, value)
            else:
                raise ValueError(f"Unsupported first index type {type(first)}")
    else:
        raise ValueError(f"Unsupported index type {type(index)}")
