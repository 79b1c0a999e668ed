"""Packing metadata of a NestedTensor: the shape of every element and where it lives in one buffer.

A batch of ``B`` elements of rank ``r`` is stored as a single tensor ``values`` of shape
``(rows, *static_sizes)``. Every element dim is either *static* (one size shared by all elements,
kept as a trailing dim of ``values``) or *ragged* (flattened into the rows). ``permutation`` lists
the ragged dims first and the static dims after them, so element ``i`` is

    values[offsets[i]:offsets[i + 1]].reshape(*ragged sizes of i, *static_sizes).permute(inverse)

A layout never changes once built: operations that keep element shapes (``nt + 1``, ``nt.float()``)
share it, which lets the padded index and the mask computed for one tensor serve all of them.
Index tensors derived from the layout are cached per device, so a CUDA tensor copies its (CPU)
metadata to the device once, without a synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from math import prod

import torch
from torch import Tensor

Shape = tuple[int, ...]


def canonical_permutation(shapes: Sequence[Shape]) -> tuple[tuple[int, ...], int]:
    r"""
    Choose how to pack elements of these shapes: dims whose size varies are ragged, the rest static.

    When no dim varies (all shapes equal), dim 0 is treated as ragged so that the buffer still has one
    row per position along it.

    Returns:
        ``(permutation, ragged_rank)``: ragged dims (ascending) followed by static dims (ascending).

    Examples:
        >>> canonical_permutation([(9, 9, 8, 7), (11, 11, 8, 6)])
        ((0, 1, 3, 2), 3)
        >>> canonical_permutation([(2, 2), (2, 2)])
        ((0, 1), 1)
    """
    if not shapes or not shapes[0]:
        return (), 0
    columns = list(zip(*shapes))
    ragged = [d for d, column in enumerate(columns) if min(column) != max(column)]
    if not ragged:
        ragged = [0]
    static = [d for d in range(len(columns)) if d not in ragged]
    return (*ragged, *static), len(ragged)


def inverse_permutation(permutation: Sequence[int]) -> tuple[int, ...]:
    """Return the permutation that undoes ``permutation``."""
    inverse = [0] * len(permutation)
    for position, dim in enumerate(permutation):
        inverse[dim] = position
    return tuple(inverse)


class NestedLayout:
    r"""
    Element shapes of a NestedTensor and how they are packed into its ``values`` buffer.

    Build one with [`from_shapes`][danling.tensors._layout.NestedLayout.from_shapes] (validated) or
    with the constructor (trusted: the caller guarantees that static dims have one size).

    Args:
        element_shapes: Shape of every element, all of the same rank.
        permutation: Ragged dims, then static dims, of the element coordinates.
        ragged_rank: How many leading entries of ``permutation`` are ragged.
        static_sizes: Sizes of the static dims; required only for an empty batch.

    Examples:
        >>> layout = NestedLayout.from_shapes([(3, 8), (5, 8)])
        >>> layout.packed_sizes, layout.static_sizes, layout.max_sizes
        ((3, 5), (8,), (5, 8))
        >>> layout.offsets
        tensor([0, 3, 8])
    """

    __slots__ = (
        "_device_cache",
        "_offsets",
        "_shape_tensor",
        "_starts",
        "element_shapes",
        "max_sizes",
        "packed_sizes",
        "permutation",
        "ragged_rank",
        "static_sizes",
    )

    def __init__(
        self,
        element_shapes: tuple[Shape, ...],
        permutation: tuple[int, ...],
        ragged_rank: int,
        static_sizes: Shape | None = None,
    ) -> None:
        self.element_shapes = element_shapes
        self.permutation = permutation
        self.ragged_rank = ragged_rank
        ragged, static = permutation[:ragged_rank], permutation[ragged_rank:]
        if element_shapes:
            first = element_shapes[0]
            self.static_sizes = tuple(first[d] for d in static)
            if ragged_rank == 1:
                dim = ragged[0]
                self.packed_sizes = tuple(shape[dim] for shape in element_shapes)
            else:
                self.packed_sizes = tuple(prod(shape[d] for d in ragged) for shape in element_shapes)
            self.max_sizes = tuple(map(max, zip(*element_shapes))) if first else ()
        else:
            self.static_sizes = tuple(static_sizes) if static_sizes is not None else (0,) * len(static)
            self.packed_sizes = ()
            sizes = dict(zip(static, self.static_sizes))
            self.max_sizes = tuple(sizes.get(d, 0) for d in range(len(permutation)))
        self._offsets: Tensor | None = None
        self._shape_tensor: Tensor | None = None
        self._starts: tuple[int, ...] | None = None
        self._device_cache: dict = {}

    @classmethod
    def from_shapes(
        cls,
        shapes: Sequence[Sequence[int]],
        permutation: Sequence[int] | None = None,
        ragged_rank: int | None = None,
    ) -> NestedLayout:
        r"""
        Build a validated layout; without ``permutation`` the canonical packing is chosen.

        Raises:
            ValueError: If element ranks differ, ``permutation`` is not a permutation of the element
                dims, or a dim listed as static does not have one size in every element.
        """
        element_shapes = tuple(tuple(int(s) for s in shape) for shape in shapes)
        ranks = {len(shape) for shape in element_shapes}
        if len(ranks) > 1:
            first, other = sorted(ranks)[:2]
            raise ValueError(
                f"All tensors must have the same number of dimensions, got ndim {first} and {other}. "
                "If using a DataLoader with drop_last=False, squeeze the last batch before constructing NestedTensor."
            )
        if any(size < 0 for shape in element_shapes for size in shape):
            raise ValueError(f"element_shapes must be non-negative, got {element_shapes}")
        if permutation is None:
            permutation, ragged_rank = canonical_permutation(element_shapes)
            return cls(element_shapes, permutation, ragged_rank)
        permutation = tuple(int(d) for d in permutation)
        rank = len(element_shapes[0]) if element_shapes else len(permutation)
        if sorted(permutation) != list(range(rank)):
            raise ValueError(f"Invalid permutation dims {permutation} for tensors with rank {rank}")
        if ragged_rank is None or not (min(rank, 1) <= ragged_rank <= rank):
            raise ValueError(f"ragged_rank must be between {min(rank, 1)} and {rank}, got {ragged_rank}")
        for dim in permutation[ragged_rank:]:
            if len({shape[dim] for shape in element_shapes}) > 1:
                raise ValueError(f"Dim {dim} is packed as static but its size varies across elements {element_shapes}")
        return cls(element_shapes, permutation, ragged_rank)

    @property
    def batch_size(self) -> int:
        return len(self.element_shapes)

    @property
    def rank(self) -> int:
        """Rank of every element (the NestedTensor has one more dim, the batch)."""
        return len(self.permutation)

    @property
    def ragged_dims(self) -> tuple[int, ...]:
        return self.permutation[: self.ragged_rank]

    @property
    def static_dims(self) -> tuple[int, ...]:
        return self.permutation[self.ragged_rank :]

    @property
    def num_rows(self) -> int:
        return sum(self.packed_sizes)

    @property
    def is_identity(self) -> bool:
        """Whether each element is stored contiguously in row-major order (``permutation`` is the identity)."""
        return self.permutation == tuple(range(len(self.permutation)))

    @property
    def starts(self) -> tuple[int, ...]:
        """First row of every element, plus the total row count at the end (Python ints)."""
        if self._starts is None:
            self._starts = tuple(accumulate(self.packed_sizes, initial=0))
        return self._starts

    @property
    def offsets(self) -> Tensor:
        """CPU ``int64`` tensor of shape ``(B + 1,)``: rows ``offsets[i]:offsets[i + 1]`` belong to element ``i``."""
        if self._offsets is None:
            self._offsets = torch.tensor(self.starts, dtype=torch.long)
        return self._offsets

    @property
    def shape_tensor(self) -> Tensor:
        """CPU ``int64`` tensor of shape ``(B, rank)`` holding every element's shape."""
        if self._shape_tensor is None:
            self._shape_tensor = torch.tensor(self.element_shapes, dtype=torch.long).reshape(
                len(self.element_shapes), self.rank
            )
        return self._shape_tensor

    def logical_shape(self, batch_first: bool = True) -> torch.Size:
        """The padded shape the NestedTensor reports: batch size inserted before (or after) the max sizes."""
        sizes = list(self.max_sizes)
        sizes.insert(0 if batch_first or not sizes else 1, len(self.element_shapes))
        return torch.Size(sizes)

    def values_dim(self, dim: int) -> int | None:
        """Dim of ``values`` that holds static element dim ``dim``, or ``None`` if ``dim`` is ragged."""
        position = self.permutation.index(dim)
        return None if position < self.ragged_rank else 1 + position - self.ragged_rank

    def same_as(self, other: NestedLayout) -> bool:
        """Whether ``values`` of both layouts line up row by row (same shapes and packing)."""
        return self is other or (
            self.permutation == other.permutation
            and self.ragged_rank == other.ragged_rank
            and self.element_shapes == other.element_shapes
            and self.static_sizes == other.static_sizes
        )

    # ------------------------------------------------------------------ packing

    def pack(self, tensors: Sequence[Tensor]) -> Tensor:
        """Concatenate ``tensors`` (shapes as in this layout) into one ``values`` buffer."""
        if not self.permutation:
            return torch.stack(list(tensors))
        if self.ragged_rank == 1 and self.is_identity:
            return torch.cat(list(tensors))
        permutation, static = self.permutation, self.static_sizes
        pieces = [t.permute(permutation).reshape(n, *static) for t, n in zip(tensors, self.packed_sizes)]
        return torch.cat(pieces)

    def element(self, values: Tensor, index: int) -> Tensor:
        """View of element ``index`` inside ``values`` (writable in place, also under autograd)."""
        if not self.permutation:
            return values[index]
        rows = values.narrow(0, self.starts[index], self.packed_sizes[index])
        return self._shape_rows(rows, self.element_shapes[index])

    def unpack(self, values: Tensor) -> tuple[Tensor, ...]:
        """
        Views of every element inside ``values``, cut by one ``split``.

        Their backward is one concatenation (a ``narrow`` per element would cost one zero-filled
        buffer of the whole values each); like ``unbind`` outputs, they must not be written in place
        while autograd records: use [`element`][danling.tensors._layout.NestedLayout.element] for that.
        """
        if not self.permutation:
            return tuple(values.unbind(0))
        pieces = values.split(self.packed_sizes)
        if self.ragged_rank == 1 and self.is_identity:
            return tuple(pieces)
        return tuple(self._shape_rows(piece, shape) for piece, shape in zip(pieces, self.element_shapes))

    def _shape_rows(self, rows: Tensor, shape: Shape) -> Tensor:
        if self.ragged_rank == 1 and self.is_identity:
            return rows
        ragged = [shape[d] for d in self.ragged_dims]
        return rows.reshape(*ragged, *rows.shape[1:]).permute(inverse_permutation(self.permutation))

    # ------------------------------------------------------------------ derived layouts

    def select(self, indices: Sequence[int]) -> NestedLayout:
        """Layout of the elements at ``indices`` (same packing)."""
        shapes = self.element_shapes
        return NestedLayout(tuple(shapes[i] for i in indices), self.permutation, self.ragged_rank, self.static_sizes)

    def with_static_sizes(self, static_sizes: Sequence[int]) -> NestedLayout:
        """Layout whose static dims take new sizes (e.g. after a linear layer on the last dim)."""
        static_sizes = tuple(static_sizes)
        if static_sizes == self.static_sizes:
            return self
        replace = dict(zip(self.static_dims, static_sizes))
        shapes = tuple(tuple(replace.get(d, s) for d, s in enumerate(shape)) for shape in self.element_shapes)
        return NestedLayout(shapes, self.permutation, self.ragged_rank, static_sizes)

    def with_element_shapes(self, shapes: Sequence[Shape]) -> NestedLayout:
        """Layout of new element shapes, keeping this packing when it still fits, else the canonical one."""
        shapes = tuple(tuple(shape) for shape in shapes)
        if shapes and len(shapes[0]) == self.rank:
            static = self.static_dims
            if all(len({shape[d] for shape in shapes}) == 1 for d in static):
                return NestedLayout(shapes, self.permutation, self.ragged_rank)
        return NestedLayout.from_shapes(shapes)

    # ------------------------------------------------------------------ index tensors (cached per device)

    def _cached(self, key: str, device: torch.device, build):
        """Memoise ``build(device)``; a cached tensor someone wrote to in place is rebuilt."""
        entry = self._device_cache.get((key, device))
        if entry is not None and (entry[1] is None or entry[0]._version == entry[1]):
            return entry[0]
        value = build(device)
        if isinstance(value, Tensor) and value.is_inference():
            return value  # inference tensors have no version counter to guard the cache with
        self._device_cache[(key, device)] = (value, value._version if isinstance(value, Tensor) else None)
        return value

    def to_device(self, tensor: Tensor, device: torch.device) -> Tensor:
        """Copy a CPU metadata tensor to ``device`` without waiting for it."""
        return tensor if device.type == "cpu" else tensor.to(device, non_blocking=True)

    def row_batch_index(self, device: torch.device) -> Tensor:
        """``(rows,)`` tensor: the element each row of ``values`` belongs to."""

        def build(device):
            sizes = self.to_device(torch.tensor(self.packed_sizes, dtype=torch.long), device)
            batch = torch.arange(len(self.packed_sizes), device=device)
            return torch.repeat_interleave(batch, sizes, output_size=self.num_rows)

        return self._cached("row_batch", device, build)

    def row_coordinates(self, device: torch.device) -> tuple[Tensor, ...]:
        """``(batch, c_0, ..., c_{k-1})`` per row: its element and its position along each ragged dim."""
        return self._cached("row_coordinates", device, self._build_row_coordinates)

    def _build_row_coordinates(self, device: torch.device) -> tuple[Tensor, ...]:
        batch = self.row_batch_index(device)
        local = torch.arange(self.num_rows, device=device) - self.to_device(self.offsets, device)[batch]
        if self.ragged_rank == 1:
            return batch, local
        sizes = self.to_device(self.shape_tensor[:, list(self.ragged_dims)], device)[batch]
        coordinates = []
        for level in reversed(range(self.ragged_rank)):
            coordinates.append(local % sizes[:, level])
            local = torch.div(local, sizes[:, level], rounding_mode="floor")
        return (batch, *reversed(coordinates))

    def padded_row_index(self, device: torch.device) -> Tensor:
        """``(rows,)`` tensor: where each row lands in the padded ``(B * prod(max ragged sizes), *static)`` buffer."""

        def build(device):
            batch, *coordinates = self.row_coordinates(device)
            index = batch
            for dim, coordinate in zip(self.ragged_dims, coordinates):
                index = index * self.max_sizes[dim] + coordinate
            return index

        return self._cached("padded_rows", device, build)

    def offsets_on(self, device: torch.device) -> Tensor:
        """``offsets`` on ``device``."""
        return self._cached("offsets", device, lambda device: self.to_device(self.offsets, device))

    def sizes_on(self, device: torch.device) -> Tensor:
        """``(B, rank)`` element shapes on ``device``."""
        return self._cached("sizes", device, lambda device: self.to_device(self.shape_tensor, device))

    def valid_mask(self, device: torch.device, rank: int | None = None) -> Tensor:
        """Boolean ``(B, *max_sizes[:rank])`` tensor, True where an element has data."""
        rank = self.rank if rank is None else rank
        key = f"valid_mask_{rank}"
        return self._cached(key, device, lambda device: self._build_valid_mask(device, rank))

    def _build_valid_mask(self, device: torch.device, rank: int) -> Tensor:
        batch = len(self.element_shapes)
        ragged = [d for d in self.ragged_dims if d < rank]
        if ragged == [0] and rank == 1:
            sizes = self.to_device(torch.tensor([shape[0] for shape in self.element_shapes]), device)
            return torch.arange(self.max_sizes[0], device=device) < sizes.unsqueeze(1)
        valid = torch.ones((), dtype=torch.bool, device=device).expand(batch, *self.max_sizes[:rank])
        for dim in ragged:
            sizes = self.to_device(torch.tensor([shape[dim] for shape in self.element_shapes]), device)
            view = [batch] + [1] * rank
            view[1 + dim] = self.max_sizes[dim]
            inside = torch.arange(self.max_sizes[dim], device=device) < sizes.unsqueeze(1)
            valid = valid & inside.view(view)
        return valid.contiguous()

    def __repr__(self) -> str:
        return (
            f"NestedLayout(batch_size={len(self.element_shapes)}, permutation={self.permutation}, "
            f"ragged_rank={self.ragged_rank}, static_sizes={self.static_sizes})"
        )
