"""Moving, adding and dropping the dims of every element: permute, transpose, ``T``/``mT``, unsqueeze, squeeze, expand, unbind.

Dims are given in NestedTensor coordinates (the batch dim included) and act inside every element;
the batch dim itself cannot move (``transpose(0, 1)`` flips ``batch_first`` instead). None of these
copies: permuting element dims only changes the layout's packing order, new and dropped dims of
size 1 are views of the packed values. In-place variants give the NestedTensor the new layout.
Regrouping dims (``view``, ``reshape``, ``flatten``) lives in ``reshape.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._layout import NestedLayout, inverse_permutation
from ..nested_tensor import NestedTensor
from ._packed import batch_dim, element_dim, normalize_dim
from ._registry import implements, implements_aten
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
    Insert a size-1 dim inside every element; ``dim`` counts the batch dim and must come after it.

    With ``batch_first=False`` (the batch at dim 1) dims 0 and 1 raise, as the batch dim does with
    ``batch_first=True``: a new leading dim would move the batch dim.

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
    nt, given = args
    dim = normalize_dim(given, nt.dim() + 1)
    batch = batch_dim(nt)
    if dim <= batch:  # a new dim there would move the batch dim (``batch_first=False`` keeps it at 1)
        raise ValueError(
            f"Cannot unsqueeze at the batch dimension of a NestedTensor or before it: dim {given} with the batch "
            f"at dim {batch}; new dims go after the batch dim"
        )
    return unsqueeze_elements(nt, dim - 1)


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


@implements_aten(aten.unbind.int, aten.unbind_copy.int)
def unbind_aten(func, args, kwargs) -> list:
    r"""
    ``aten.unbind`` (reached from decompositions): copies of the elements, or slices along a static dim.

    Along a static element dim every slice is a NestedTensor (a view of the values); ragged dims raise.

    Examples:
        >>> nt = NestedTensor([torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.tensor([[7, 8]])])
        >>> [piece.tolist() for piece in torch.ops.aten.unbind.int(nt, 2)]
        [[[1, 3, 5], [7]], [[2, 4, 6], [8]]]
    """
    nt, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if normalize_dim(dim, nt.dim()) == batch_dim(nt):
        return [element.clone() for element in nt._layout.unpack(nt._values)]
    layout, target = nt._layout, element_dim(nt, dim)
    if target in layout.ragged_dims:
        raise NotImplementedError(
            f"Cannot unbind dim {dim} of a NestedTensor: its size varies across elements (only the batch dim and "
            "static dims unbind)"
        )
    shapes = [tuple(s for d, s in enumerate(shape) if d != target) for shape in layout.element_shapes]
    renumber = [d - (d > target) for d in range(layout.rank)]
    permutation = tuple(renumber[d] for d in layout.permutation if d != target)
    static = tuple(s for d, s in zip(layout.static_dims, layout.static_sizes) if d != target)
    new_layout = NestedLayout(tuple(shapes), permutation, layout.ragged_rank, static)
    return [nt._rewrap(piece, new_layout) for piece in nt._values.unbind(layout.values_dim(target))]


def _transposed(nt: NestedTensor, name: str) -> NestedTensor:
    """``nt.T``/``mT``/``H``/``mH`` of every element (the batch dim stays)."""
    rank = nt._layout.rank
    if (name in ("H", "mH", "mT") and rank < 2) or (name == "H" and rank != 2):
        kind = "matrices (2-D tensors)" if name == "H" else "matrices or batches of matrices"
        raise RuntimeError(f"tensor.{name} is only supported on {kind}. Got {rank}-D elements.")
    order = list(range(rank))
    if name == "T":
        order.reverse()
    elif rank >= 2:
        order[-2], order[-1] = order[-1], order[-2]
    result = permute_elements(nt, order)
    return result.conj() if name in ("H", "mH") and result.is_complex() else result


def _register_transposes() -> None:
    for name in ("T", "mT", "H", "mH"):
        implements(getattr(Tensor, name).__get__)(lambda input, name=name: _transposed(input, name))


_register_transposes()


def _in_place(nt: NestedTensor, result: NestedTensor) -> NestedTensor:
    """Make ``nt`` the (shape-changed) ``result``, as in-place shape ops do."""
    nt._batch_first = result._batch_first
    nt._replace_packed(result._values, result._layout)
    return nt


@implements_aten(
    aten.transpose_.default,
    aten.t_.default,
    aten.squeeze_.default,
    aten.squeeze_.dim,
    aten.squeeze_.dims,
    aten.unsqueeze_.default,
    aten.swapdims_.default,
    aten.swapaxes_.default,
)
def shape_in_place(func, args, kwargs) -> NestedTensor:
    r"""
    In-place shape ops (``nt.transpose_(1, 2)``, ``nt.t_()``, ``nt.squeeze_()``...): the NestedTensor takes the new layout.

    ``t_`` transposes every element (of at most 2 dims), as it would each element alone.

    Examples:
        >>> nt = NestedTensor([torch.zeros(3, 4), torch.zeros(2, 4)])
        >>> nt.t_().shape
        torch.Size([2, 4, 3])
    """
    nt = args[0]
    if func is aten.t_.default:
        if nt._layout.rank > 2:
            raise RuntimeError(f"t_() expects elements with <= 2 dimensions, but they have {nt._layout.rank}")
        return _in_place(nt, _transposed(nt, "T"))
    out_of_place = {
        aten.transpose_.default: aten.transpose.int,
        aten.swapdims_.default: aten.transpose.int,
        aten.swapaxes_.default: aten.transpose.int,
        aten.squeeze_.default: aten.squeeze.default,
        aten.squeeze_.dim: aten.squeeze.dim,
        aten.squeeze_.dims: aten.squeeze.dims,
        aten.unsqueeze_.default: aten.unsqueeze.default,
    }[func]
    handler = {aten.transpose.int: transpose, aten.unsqueeze.default: unsqueeze}.get(out_of_place, squeeze)
    return _in_place(nt, handler(out_of_place, args, kwargs))
