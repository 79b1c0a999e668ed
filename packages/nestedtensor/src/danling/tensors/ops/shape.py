"""Shape ops: permute, transpose, unsqueeze, view, reshape, flatten, unbind.

Dims are given in NestedTensor coordinates (the batch dim included) and act inside every element;
the batch dim itself cannot move. Permuting element dims never copies: the packed values stay as
they are and only the layout's packing order changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import Tensor

from .._layout import NestedLayout, inverse_permutation
from ..nested_tensor import NestedTensor
from ._packed import batch_dim, element_dim, from_elements, normalize_dim
from ._registry import check_slow_path, implements, implements_aten
from ._rows import gather_rows

aten = torch.ops.aten


def permute_elements(nt: NestedTensor, order: Sequence[int]) -> NestedTensor:
    r"""
    Permute the dims of every element by ``order`` (element coordinates) without copying.

    Examples:
        >>> nt = NestedTensor([torch.zeros(3, 4), torch.zeros(2, 4)])
        >>> permute_elements(nt, (1, 0)).shape
        torch.Size([2, 4, 3])
    """
    layout = nt._layout
    order = tuple(order)
    if order == tuple(range(layout.rank)):
        return nt
    inverse = inverse_permutation(order)
    shapes = tuple(tuple(shape[d] for d in order) for shape in layout.element_shapes)
    permutation = tuple(inverse[d] for d in layout.permutation)
    return nt._rewrap(nt._values, NestedLayout(shapes, permutation, layout.ragged_rank, layout.static_sizes))


@implements_aten(aten.permute.default)
def permute(func, args, kwargs) -> NestedTensor:
    r"""
    Permute element dims; ``dims`` lists every dim of the NestedTensor and must keep the batch dim in place.

    Examples:
        >>> nested_tensor = NestedTensor([torch.randn(3, 4, 5), torch.randn(2, 4, 5)])
        >>> permuted = nested_tensor.permute(0, 3, 1, 2)
        >>> permuted.shape
        torch.Size([2, 5, 3, 4])
    """
    nt, dims = args[0], kwargs.get("dims", args[1] if len(args) > 1 else None)
    ndim = nt.dim()
    dims = [normalize_dim(d, ndim) for d in dims]
    batch = batch_dim(nt)
    if sorted(dims) != list(range(ndim)):
        raise RuntimeError(f"permute(): dims {dims} are not a permutation of {ndim} dims")
    if dims[batch] != batch:
        raise ValueError("Permuting the batch dimension is not supported for NestedTensor.")
    order = [element_dim(nt, d) for position, d in enumerate(dims) if position != batch]
    return permute_elements(nt, order)


@implements_aten(aten.transpose.int)
def transpose(func, args, kwargs) -> NestedTensor:
    r"""
    Swap two element dims; swapping dims 0 and 1 moves the batch dim by flipping ``batch_first``.

    The flip keeps every element as it is (``(B, L, E)`` becomes ``(L, B, E)``, no copy), which is
    what ``nn.MultiheadAttention(batch_first=True)`` does to its inputs. Other swaps involving the
    batch dim raise.

    Examples:
        >>> nested_tensor = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)])
        >>> # NestedTensor shape is [2, 3, 4], underlying tensors are [3, 4] and [2, 4]
        >>> transposed = nested_tensor.transpose(1, 2)  # transpose dims 1 and 2
        >>> transposed.shape  # batch dimension is still first
        torch.Size([2, 4, 3])
        >>> nested_tensor.transpose(0, 1).shape, nested_tensor.transpose(0, 1).batch_first
        (torch.Size([3, 2, 4]), False)
    """
    nt, dim0, dim1 = args
    batch = batch_dim(nt)
    dims = {normalize_dim(dim0, nt.dim()), normalize_dim(dim1, nt.dim())}
    if dims == {0, 1}:
        return type(nt)._from_packed(
            nt._values,
            nt._layout,
            batch_first=not nt._batch_first,
            padding_value=nt._padding_value,
            mask_value=nt._mask_value,
        )
    if batch in dims:
        raise ValueError("Cannot swap the batch dimension for NestedTensor.")
    first, second = element_dim(nt, dim0), element_dim(nt, dim1)
    order = list(range(nt._layout.rank))
    order[first], order[second] = second, first
    return permute_elements(nt, order)


@implements_aten(aten.unsqueeze.default)
def unsqueeze(func, args, kwargs) -> NestedTensor:
    r"""
    Insert a size-1 dim inside every element; ``dim`` counts the batch dim.

    Examples:
        >>> nested_tensor = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
        >>> # Original shape: [2, 3] (batch_size=2, max_seq_len=3)
        >>> unsqueezed = nested_tensor.unsqueeze(1)
        >>> unsqueezed.shape
        torch.Size([2, 1, 3])
        >>> # Now each underlying tensor has shape [1, seq_len] instead of [seq_len]

        >>> nested_tensor_2d = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)])
        >>> # Original shape: [2, 3, 4] (batch_size=2, max_len1=3, max_len2=4)
        >>> unsqueezed_2d = nested_tensor_2d.unsqueeze(2)
        >>> unsqueezed_2d.shape
        torch.Size([2, 3, 1, 4])
        >>> # Now each underlying tensor has shape [len1, 1, len2] instead of [len1, len2]
    """
    nt, dim = args
    dim = normalize_dim(dim, nt.dim() + 1)
    batch = batch_dim(nt)
    if dim == batch:
        raise ValueError("Cannot unsqueeze at the batch dimension of a NestedTensor.")
    return unsqueeze_elements(nt, dim - 1 if dim > batch else dim)


def unsqueeze_elements(nt: NestedTensor, new: int) -> NestedTensor:
    """Insert a size-1 dim at element dim ``new`` of every element; a view of the values (a new static dim)."""
    layout = nt._layout
    shapes = tuple((*shape[:new], 1, *shape[new:]) for shape in layout.element_shapes)
    if not layout.permutation:
        return nt._rewrap(nt._values, NestedLayout.from_shapes(shapes) if shapes else NestedLayout((), (0,), 1))
    shift = [d + (d >= new) for d in range(layout.rank)]
    permutation = (*(shift[d] for d in layout.permutation), new)
    new_layout = NestedLayout(shapes, permutation, layout.ragged_rank, (*layout.static_sizes, 1))
    return nt._rewrap(nt._values.unsqueeze(-1), new_layout)


def _unwrap_shape(shape: tuple) -> list[int]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return [int(s) for s in shape[0]]
    return [int(s) for s in shape]


def _strip_batch(nt: NestedTensor, shape: list[int]) -> list[int]:
    """Drop the batch dim from a target shape when the caller included it."""
    batch_size, position = len(nt), 0 if nt._batch_first else 1
    max_sizes = nt._layout.max_sizes
    if len(shape) <= position:
        return shape
    included = shape[position] == batch_size and len(shape) != nt.dim()
    if not included and len(shape) == nt.dim() and shape[position] in (-1, batch_size):
        rest = shape[:position] + shape[position + 1 :]
        included = any(size == -1 or size == limit for size, limit in zip(rest, max_sizes))
    return shape[:position] + shape[position + 1 :] if included else shape


def _element_target(target: list[int], element: tuple[int, ...], max_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Resolve one element's target shape: sizes equal to a max size mean that element's own size."""
    resolved, used = list(target), set()
    for i, size in enumerate(target):
        if size == -1:
            continue
        if i < len(max_sizes) and size == max_sizes[i] and i not in used:
            resolved[i] = element[i]
            used.add(i)
            continue
        candidates = [j for j, limit in enumerate(max_sizes) if limit == size and j not in used]
        if len(candidates) == 1:
            resolved[i] = element[candidates[0]]
            used.add(candidates[0])
    numel = prod(element)
    if resolved.count(-1) == 1:
        known = prod(s for s in resolved if s != -1)
        if known and numel % known == 0:
            resolved[resolved.index(-1)] = numel // known
    if -1 in resolved or prod(resolved) != numel:
        raise RuntimeError(f"shape '{target}' is invalid for input of size {numel}")
    return tuple(resolved)


def view_shapes(nt: NestedTensor, shape: tuple) -> list[tuple[int, ...]]:
    r"""
    Target shape of every element for ``nt.view(*shape)``.

    ``shape`` may include the batch dim; a size equal to a dim's max size stands for each element's
    own size along it, and one ``-1`` is inferred per element.

    Examples:
        >>> nt = NestedTensor([torch.zeros(3, 4), torch.zeros(2, 4)])
        >>> view_shapes(nt, (2, 3, 2, 2))
        [(3, 2, 2), (2, 2, 2)]
        >>> view_shapes(nt, (-1,))
        [(12,), (8,)]
    """
    target = _strip_batch(nt, _unwrap_shape(shape))
    max_sizes = nt._layout.max_sizes
    return [_element_target(target, element, max_sizes) for element in nt._layout.element_shapes]


def reshape_elements(nt: NestedTensor, shapes: list[tuple[int, ...]], copy: bool = True) -> NestedTensor:
    """Give every element a new shape (same numel); no copy when elements are stored contiguously."""
    layout = nt._layout
    if not shapes:
        return nt
    new_layout = NestedLayout.from_shapes(shapes)
    if layout.is_identity and new_layout.is_identity:
        values = nt._values
        new_shape = (new_layout.num_rows, *new_layout.static_sizes) if new_layout.permutation else (len(shapes),)
        return nt._rewrap(values.reshape(new_shape) if copy else values.view(new_shape), new_layout)
    check_slow_path("reshape of elements stored in a permuted layout")
    elements = [t.reshape(s) if copy else t.view(s) for t, s in zip(layout.unpack(nt._values), shapes)]
    return from_elements(elements, like=nt)


@implements_aten(aten.view.default, aten._unsafe_view.default)
def view(func, args, kwargs) -> NestedTensor:
    r"""
    View every element with a new shape (see [`view_shapes`][danling.tensors.ops.shape.view_shapes]).

    Examples:
        >>> nested_tensor = NestedTensor([torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6], [7, 8]])])
        >>> viewed = nested_tensor.view(4)  # View each 2x2 tensor as 4
        >>> viewed.shape
        torch.Size([2, 4])
        >>> type(viewed).__name__
        'NestedTensor'
    """
    nt, size = args[0], args[1]
    return reshape_elements(nt, view_shapes(nt, tuple(size)), copy=func is not aten.view.default)


@implements(torch.reshape, Tensor.reshape)
def reshape(input: NestedTensor, *shape) -> NestedTensor:
    r"""
    Reshape every element (copying only when a view is impossible).

    Examples:
        >>> nested_tensor = NestedTensor([torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6], [7, 8]])])
        >>> reshaped = nested_tensor.reshape(4)
        >>> reshaped.shape
        torch.Size([2, 4])
    """
    return reshape_elements(input, view_shapes(input, shape), copy=True)


@implements(torch.flatten, Tensor.flatten)
def flatten(input: NestedTensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    r"""
    Flatten element dims ``start_dim..end_dim``; a range that includes the batch dim flattens ``.tensor``.

    Free (no copy) when the dims sit next to each other in the packing order, which holds for
    elements stored in row-major order and for runs of static or of ragged dims.

    Examples:
        >>> NestedTensor([torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)]).flatten(2).shape
        torch.Size([2, 3, 4])
    """
    start, end = normalize_dim(start_dim, input.dim()), normalize_dim(end_dim, input.dim())
    if start <= batch_dim(input) <= end:
        return torch.flatten(input.tensor, start, end)
    return flatten_elements(input, element_dim(input, start), element_dim(input, end))


def flatten_elements(nt: NestedTensor, first: int, last: int) -> NestedTensor:
    """Merge element dims ``first..last`` into one; no copy when they are consecutive in the packing order."""
    layout = nt._layout
    if last <= first:
        return nt
    run = tuple(range(first, last + 1))
    shapes = [(*s[:first], prod(s[first : last + 1]), *s[last + 1 :]) for s in layout.element_shapes]
    position = layout.permutation.index(first)
    if layout.permutation[position : position + len(run)] != run:
        return reshape_elements(nt, shapes, copy=True)
    ragged_in_run = sum(1 for d in run if d in layout.ragged_dims)
    values = nt._values
    if ragged_in_run == 0:
        values = values.flatten(layout.values_dim(first), layout.values_dim(last))
    elif ragged_in_run < len(run):  # the ragged tail of the rows and the leading static dims of values
        values = values.flatten(0, len(run) - ragged_in_run)
    ragged_rank = layout.ragged_rank - ragged_in_run + (1 if ragged_in_run else 0)
    merged = len(run) - 1
    permutation = tuple(d if d <= first else d - merged for d in layout.permutation if d not in run[1:])
    static = tuple(values.shape[1:])
    return nt._rewrap(values, NestedLayout(tuple(shapes), permutation, ragged_rank, static))


def _unflattened_sizes(sizes: list[int], size: int, dim: int) -> list[int]:
    """``sizes`` with its ``-1`` resolved against an element's ``size``, checked like ``torch.unflatten``."""
    known = prod(s for s in sizes if s != -1)
    resolved = list(sizes)
    if sizes.count(-1) == 1 and known and size % known == 0:
        resolved[sizes.index(-1)] = size // known
    if sizes.count(-1) > 1 or prod(resolved) != size or -1 in resolved:
        raise RuntimeError(
            f"unflatten: Provided sizes {sizes} don't multiply up to the size of dim {dim} ({size}) in the input tensor"
        )
    return resolved


@implements_aten(aten.unflatten.int)
def unflatten(func, args, kwargs) -> NestedTensor:
    r"""
    Split element dim ``dim`` into ``sizes``; a ``-1`` is resolved for every element on its own.

    Never copies: a ragged dim becomes several ragged dims over the same rows, a static dim is
    unflattened in the values.

    Examples:
        >>> nt = NestedTensor([torch.arange(6), torch.arange(4)])
        >>> nt.unflatten(1, (-1, 2))
        NestedTensor([
            [[0, 1],
             [2, 3],
             [4, 5]],
            [[0, 1],
             [2, 3]]
        ])
    """
    nt, dim, sizes = args[0], args[1], [int(s) for s in args[2]]
    if normalize_dim(dim, nt.dim()) == batch_dim(nt):
        raise ValueError("Cannot unflatten the batch dimension of a NestedTensor.")
    layout, target = nt._layout, element_dim(nt, dim)
    shapes = tuple(
        (*s[:target], *_unflattened_sizes(sizes, s[target], dim), *s[target + 1 :]) for s in layout.element_shapes
    )
    added = len(sizes) - 1
    new_dims = tuple(range(target, target + len(sizes)))
    permutation: list[int] = []
    for d in layout.permutation:
        permutation.extend(new_dims if d == target else (d if d < target else d + added,))
    values, ragged_rank = nt._values, layout.ragged_rank
    if target in layout.ragged_dims:
        ragged_rank += added
    else:
        values = values.unflatten(
            layout.values_dim(target), _unflattened_sizes(sizes, values.shape[layout.values_dim(target)], dim)
        )
    return nt._rewrap(values, NestedLayout(shapes, tuple(permutation), ragged_rank, tuple(values.shape[1:])))


def squeeze_elements(nt: NestedTensor, dims: Sequence[int]) -> NestedTensor:
    """Drop element ``dims`` (size 1 in every element) without copying."""
    layout = nt._layout
    dims = sorted(set(dims))
    if not dims:
        return nt
    shapes = tuple(tuple(s for d, s in enumerate(shape) if d not in dims) for shape in layout.element_shapes)
    values = nt._values
    static = [layout.values_dim(d) for d in dims if d not in layout.ragged_dims]
    if static:
        values = values.squeeze(tuple(static)) if len(static) > 1 else values.squeeze(static[0])
    ragged_rank = layout.ragged_rank - (len(dims) - len(static))
    permutation = tuple(d - sum(1 for gone in dims if gone < d) for d in layout.permutation if d not in dims)
    if not permutation:
        return nt._rewrap(values.reshape(len(nt)), NestedLayout(shapes, (), 0))
    if ragged_rank == 0:  # at least one dim must be ragged: the first static dim joins the rows
        values, ragged_rank = values.flatten(0, 1), 1
    return nt._rewrap(values, NestedLayout(shapes, permutation, ragged_rank, tuple(values.shape[1:])))


@implements_aten(aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims)
def squeeze(func, args, kwargs) -> NestedTensor:
    r"""
    Drop size-1 dims of every element, without copying.

    With no dim, the dims of size 1 in every element go (an element-by-element squeeze could leave
    elements of different ranks). The batch dim is never squeezed, even for a batch of one; naming it
    raises, and so does naming a dim that has size 1 in some elements only.

    Examples:
        >>> nt = NestedTensor([torch.zeros(3, 1, 4), torch.zeros(2, 1, 4)])
        >>> nt.squeeze().shape, nt.squeeze(2).shape, nt.squeeze(-1).shape
        (torch.Size([2, 3, 4]), torch.Size([2, 3, 4]), torch.Size([2, 3, 1, 4]))
    """
    nt, layout = args[0], args[0]._layout
    shapes = layout.element_shapes
    if func is aten.squeeze.default:
        dims = [d for d in range(layout.rank) if layout.max_sizes[d] == 1 and all(s[d] == 1 for s in shapes)]
        return squeeze_elements(nt, dims)
    given = args[1] if len(args) > 1 else kwargs["dim"]
    dims = []
    for dim in [given] if isinstance(given, int) else list(given):
        if normalize_dim(dim, nt.dim()) == batch_dim(nt):
            raise ValueError("Cannot squeeze the batch dimension of a NestedTensor.")
        target = element_dim(nt, dim)
        ones = sum(1 for s in shapes if s[target] == 1)
        if 0 < ones < len(shapes):
            raise ValueError(
                f"Cannot squeeze dim {dim}: it has size 1 in {ones} of {len(shapes)} elements only, "
                "which would leave elements of different ranks"
            )
        if ones or (not shapes and layout.max_sizes[target] == 1):
            dims.append(target)
    return squeeze_elements(nt, dims)


@implements_aten(aten.expand.default)
def expand(func, args, kwargs) -> NestedTensor:
    r"""
    Expand size-1 dims of every element; ``-1`` (or a dim's current padded size) keeps a dim as it is.

    Static dims expand as a view of the values. A ragged dim can expand only where every element has
    size 1 along it; its rows are repeated (a copy). The batch dim cannot expand.

    Examples:
        >>> nt = NestedTensor([torch.zeros(3, 1), torch.zeros(2, 1)])
        >>> nt.expand(-1, -1, 4).shape
        torch.Size([2, 3, 4])
    """
    nt, size = args[0], [int(s) for s in args[1]]
    layout = nt._layout
    if len(size) != nt.dim():
        raise ValueError(f"expand of a NestedTensor takes one size per dim ({nt.dim()}), got {size}")
    batch = batch_dim(nt)
    if size[batch] not in (-1, len(nt)):
        raise ValueError(f"Cannot expand the batch dimension of a NestedTensor (of size {len(nt)}) to {size[batch]}")
    targets = size[:batch] + size[batch + 1 :]
    static_sizes, ragged = list(layout.static_sizes), {}
    for d, target in enumerate(targets):
        current = layout.max_sizes[d]
        if target in (-1, current):
            continue
        if current != 1 or any(shape[d] != 1 for shape in layout.element_shapes):
            raise RuntimeError(
                f"The expanded size of the tensor ({target}) must match the existing size ({current}) "
                f"at non-singleton dimension {d + (d >= batch)}.  Target sizes: {size}"
            )
        if d in layout.ragged_dims:
            ragged[layout.ragged_dims.index(d)] = target
        else:
            static_sizes[layout.values_dim(d) - 1] = target
    if not ragged and static_sizes == list(layout.static_sizes):
        return nt
    values = nt._values.expand(nt._values.shape[0], *static_sizes)
    new_layout = layout.with_static_sizes(static_sizes)
    if ragged:
        shapes = [
            tuple(
                ragged.get(layout.ragged_dims.index(d), s) if d in layout.ragged_dims else s
                for d, s in enumerate(shape)
            )
            for shape in new_layout.element_shapes
        ]
        new_layout = NestedLayout(tuple(shapes), layout.permutation, layout.ragged_rank, tuple(static_sizes))
        repeated = nt._rewrap(values, layout.with_static_sizes(static_sizes))
        key = ("expand", tuple(sorted(ragged.items())), tuple(static_sizes))

        def source(batch: Tensor, coordinates: list[Tensor]) -> list[Tensor]:
            return [c.new_zeros(()).expand_as(c) if level in ragged else c for level, c in enumerate(coordinates)]

        values = gather_rows(repeated, new_layout, key, source)
    return nt._rewrap(values, new_layout)


@implements(torch.unbind)
def unbind(input: NestedTensor, dim: int = 0) -> tuple[Tensor, ...]:
    """``torch.unbind(nt)``: views of the elements (batch dim only)."""
    return input.unbind(dim)
