r"""
Cutting along a dim: ``narrow``, ``slice`` (``nt[:, 1:]`` inside composite ops), ``split``, ``chunk``, ``tensor_split``.

Dims are NestedTensor dims. Along the batch dim the pieces are groups of elements (views of the
values). Along an element dim the cut follows torch's rule for every element on its own (``narrow``
with a negative start counts from each element's end, ``chunk`` sizes its pieces by each element's
length): along static dims that is a view of the values, along ragged dims one gather of rows per
piece. Ops that give elements different numbers of pieces (``split(2)`` of lengths 4 and 5) raise,
since the pieces could not form batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._layout import NestedLayout
from ..nested_tensor import NestedTensor
from ._arguments import bind
from ._fallback import per_element_fallback
from ._packed import batch_dim, element_dim, is_nested, normalize_dim
from ._registry import implements_aten
from ._rows import gather_rows
from .indexing import select_elements

aten = torch.ops.aten

Cut = Callable[[int], tuple[int, int]]
"""Given a size along the dim, the ``(start, count)`` a piece takes (step between positions apart)."""


def cut(nt: NestedTensor, dim: int, piece: Cut, key: tuple, step: int = 1) -> NestedTensor:
    r"""
    The piece of ``nt`` along NestedTensor ``dim`` that ``piece`` picks from every element (or from the batch).

    ``key`` names the cut for the cached row index (op, arguments); ``piece`` must depend on nothing else.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> cut(nt, 1, lambda size: (size - 1, 1), ("last",))
        NestedTensor([
            [3],
            [5]
        ])
    """
    dim = normalize_dim(dim, nt.dim())
    if dim == batch_dim(nt):
        start, count = piece(len(nt))
        return select_elements(nt, range(start, start + count * step, step))
    layout, target = nt._layout, element_dim(nt, dim)
    if target not in layout.ragged_dims:
        start, count = piece(layout.static_sizes[layout.values_dim(target) - 1])
        index = [slice(None)] * nt._values.dim()
        index[layout.values_dim(target)] = slice(start, start + count * step, step)
        values = nt._values[tuple(index)]
        return nt._rewrap(values, layout.with_static_sizes(values.shape[1:]))
    pieces = [piece(shape[target]) for shape in layout.element_shapes]
    shapes = tuple((*s[:target], n, *s[target + 1 :]) for s, (_, n) in zip(layout.element_shapes, pieces))
    new_layout = NestedLayout(shapes, layout.permutation, layout.ragged_rank, layout.static_sizes)
    level = layout.ragged_dims.index(target)

    def source(batch: Tensor, coordinates: list[Tensor]) -> list[Tensor]:
        starts = torch.tensor([start for start, _ in pieces], dtype=torch.long)
        first = layout.to_device(starts, batch.device)[batch]
        return [first + c * step if j == level else c for j, c in enumerate(coordinates)]

    return nt._rewrap(gather_rows(nt, new_layout, (*key, dim, step), source), new_layout)


def _narrow_piece(start: int, length: int) -> Cut:
    def piece(size: int) -> tuple[int, int]:
        if not -size <= start <= size:
            raise IndexError(f"start out of range (expected to be in range of [{-size}, {size}], but got {start})")
        first = start + size if start < 0 else start
        if first + length > size:
            raise RuntimeError(f"start ({start}) + length ({length}) exceeds dimension size ({size}).")
        return first, length

    return piece


@implements_aten(aten.narrow.default, aten.narrow.Tensor, aten.narrow_copy.default)
def narrow(func, args, kwargs) -> NestedTensor:
    r"""
    ``nt.narrow(dim, start, length)`` on every element (a negative ``start`` counts from each element's end).

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> nt.narrow(1, -2, 2)
        NestedTensor([
            [2, 3],
            [4, 5]
        ])
    """
    bound = bind(func, args, kwargs)
    start = int(bound["start"])
    return cut(bound["self"], bound["dim"], _narrow_piece(start, bound["length"]), ("narrow", start, bound["length"]))


@implements_aten(aten.slice.Tensor)
def slice_(func, args, kwargs) -> NestedTensor:
    r"""
    ``aten.slice`` (what ``narrow`` and ``x[..., a:b]`` decompose to), in each element's own coordinates.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5]])
        >>> torch.ops.aten.slice.Tensor(nt, 1, 1)
        NestedTensor([
            [2, 3],
            [5]
        ])
    """
    bound = bind(func, args, kwargs)
    start, end, step = bound["start"], bound["end"], bound["step"]
    if step <= 0:
        raise ValueError(f"slice step must be positive, got {step}")

    def piece(size: int) -> tuple[int, int]:
        positions = range(*slice(start, end, step).indices(size))
        return (positions.start if len(positions) else 0), len(positions)

    return cut(bound["self"], bound["dim"], piece, ("slice", start, end), step=step)


def _pieces(nt: NestedTensor, dim: int, counts: list[int], op: str) -> int:
    """The number of pieces every element gives; raises when elements disagree."""
    if len(set(counts)) > 1:
        raise ValueError(
            f"{op} along dim {dim} cuts the elements of a NestedTensor into different numbers of pieces "
            f"({counts}), which cannot form batches"
        )
    return counts[0] if counts else 0


def _sizes_along(nt: NestedTensor, dim: int) -> list[int]:
    """Size along NestedTensor ``dim`` of every element (the batch size for the batch dim)."""
    dim = normalize_dim(dim, nt.dim())
    if dim == batch_dim(nt):
        return [len(nt)]
    target = element_dim(nt, dim)
    if target not in nt._layout.ragged_dims:
        return [nt._layout.static_sizes[nt._layout.values_dim(target) - 1]]
    return [shape[target] for shape in nt._layout.element_shapes]


@implements_aten(aten.split.Tensor, aten.unsafe_split.Tensor)
def split(func, args, kwargs) -> list[NestedTensor]:
    r"""
    ``nt.split(split_size, dim)``: pieces of ``split_size`` along ``dim`` (the batch dim splits the batch).

    Examples:
        >>> nt = NestedTensor([[1, 2, 3], [4, 5, 6, 7]])
        >>> [piece.tolist() for piece in nt.split(2, 1)]
        [[[1, 2], [4, 5]], [[3], [6, 7]]]
        >>> [len(piece) for piece in nt.split(1)]
        [1, 1]
    """
    bound = bind(func, args, kwargs)
    nt, size, dim = bound["self"], bound["split_size"], bound["dim"]
    if size <= 0:
        raise RuntimeError(f"split expects split_size be positive, but got split_size={size}")
    count = _pieces(nt, dim, [max(1, -(-n // size)) for n in _sizes_along(nt, dim)], "split")
    return [
        cut(nt, dim, lambda n, j=j: (j * size, max(0, min(size, n - j * size))), ("split", size, j))
        for j in range(count)
    ]


@implements_aten(aten.split_with_sizes.default, aten.unsafe_split_with_sizes.default)
def split_with_sizes(func, args, kwargs) -> list[NestedTensor]:
    r"""
    ``nt.split([a, b, ...], dim)``: the sizes must add up to the size of every element along ``dim``.

    Examples:
        >>> nt = NestedTensor([torch.arange(6).view(2, 3), torch.arange(3).view(1, 3)])
        >>> first, second = nt.split([1, 2], 2)
        >>> first.shape, second.shape
        (torch.Size([2, 2, 1]), torch.Size([2, 2, 2]))
    """
    bound = bind(func, args, kwargs)
    nt, sizes, dim = bound["self"], list(bound["split_sizes"]), bound["dim"]
    for total in set(_sizes_along(nt, dim)):
        if sum(sizes) != total:
            raise RuntimeError(
                f"split_with_sizes expects split_sizes to sum exactly to {total} (input tensor's size at dimension "
                f"{dim}), but got split_sizes={sizes}"
            )
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    return [cut(nt, dim, lambda n, s=s, k=k: (s, k), ("split_with_sizes", s, k)) for s, k in zip(starts, sizes)]


@implements_aten(aten.chunk.default)
def chunk(func, args, kwargs) -> list[NestedTensor]:
    r"""
    ``nt.chunk(chunks, dim)``: along an element dim, every element is chunked by its own length.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3, 4, 5], [6, 7, 8]])
        >>> [piece.tolist() for piece in nt.chunk(2, 1)]
        [[[1, 2, 3], [6, 7]], [[4, 5], [8]]]
    """
    bound = bind(func, args, kwargs)
    nt, chunks, dim = bound["self"], bound["chunks"], bound["dim"]
    if chunks <= 0:
        raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")

    def width(size: int) -> int:
        return -(-size // chunks)

    counts = [chunks if n == 0 else -(-n // width(n)) for n in _sizes_along(nt, dim)]
    count = _pieces(nt, dim, counts, "chunk")
    return [
        cut(
            nt,
            dim,
            lambda n, j=j: (min(n, j * width(n)), max(0, min(width(n), n - j * width(n)))),
            ("chunk", chunks, j),
        )
        for j in range(count)
    ]


@implements_aten(aten.tensor_split.sections, aten.tensor_split.indices)
def tensor_split(func, args, kwargs) -> list[NestedTensor]:
    r"""
    ``nt.tensor_split(sections or indices, dim)``: torch's rule applied to every element's own length.

    Examples:
        >>> nt = NestedTensor([[1, 2, 3, 4, 5], [6, 7, 8]])
        >>> [piece.tolist() for piece in nt.tensor_split(2, 1)]
        [[[1, 2, 3], [6, 7]], [[4, 5], [8]]]
        >>> [piece.tolist() for piece in nt.tensor_split([1, 4], 1)]
        [[[1], [6]], [[2, 3, 4], [7, 8]], [[5], []]]
    """
    bound = bind(func, args, kwargs)
    nt, dim = bound["self"], bound["dim"]
    if func is aten.tensor_split.sections:
        sections = bound["sections"]
        if sections <= 0:
            raise RuntimeError(f"number of sections must be larger than 0, got {sections}")

        def piece(size: int, j: int) -> tuple[int, int]:
            small, extra = divmod(size, sections)
            return j * small + min(j, extra), small + (1 if j < extra else 0)

        return [
            cut(nt, dim, lambda n, j=j: piece(n, j), ("tensor_split_sections", sections, j)) for j in range(sections)
        ]
    bounds = [0, *bound["indices"], None]

    def between(size: int, j: int) -> tuple[int, int]:
        start, stop, _ = slice(bounds[j], bounds[j + 1]).indices(size)
        return start, max(0, stop - start)

    return [
        cut(nt, dim, lambda n, j=j: between(n, j), ("tensor_split_indices", bounds[j], bounds[j + 1]))
        for j in range(len(bounds) - 1)
    ]


@implements_aten(aten.diff.default)
def diff(func, args, kwargs) -> NestedTensor:
    r"""
    ``torch.diff(nt, n, dim)``: differences of neighbours inside every element, two cuts and one subtraction.

    NestedTensor ``prepend``/``append`` are joined first; dense ones run element by element.

    Examples:
        >>> NestedTensor([[1, 4, 9, 16], [2, 3]]).diff()
        NestedTensor([
            [3, 5, 7],
            [1]
        ])
    """
    bound = bind(func, args, kwargs)
    nt, dim, prepend, append = bound["self"], bound["dim"], bound["prepend"], bound["append"]
    if normalize_dim(dim, nt.dim()) == batch_dim(nt):
        raise ValueError("Cannot diff along the batch dimension of a NestedTensor: its elements differ in shape")
    extra = [t for t in (prepend, append) if t is not None]
    if any(not is_nested(t) for t in extra):
        return per_element_fallback(func, args, kwargs)
    if extra:
        nt = torch.cat([t for t in (prepend, nt, append) if t is not None], dim)
    for _ in range(bound["n"]):
        later = cut(nt, dim, lambda size: (min(1, size), max(size - 1, 0)), ("diff", 1))
        earlier = cut(nt, dim, lambda size: (0, max(size - 1, 0)), ("diff", 0))
        nt = torch.logical_xor(later, earlier) if nt.dtype == torch.bool else later - earlier
    return nt


__all__ = ["chunk", "cut", "diff", "narrow", "slice_", "split", "split_with_sizes", "tensor_split"]
