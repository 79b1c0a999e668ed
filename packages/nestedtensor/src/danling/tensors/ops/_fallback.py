"""The slow path that makes every op work on a NestedTensor: run it on each element, pack the results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._packed import element_dim, from_elements
from ._registry import check_slow_path, implements, implements_aten

aten = torch.ops.aten

DIM_ARGUMENTS = frozenset({"dim", "dims", "dim0", "dim1", "dim2", "start_dim", "end_dim", "source", "destination"})
"""Schema argument names whose ints are dims, translated from NestedTensor to element coordinates."""


def _nested_operands(values: Any, found: list[NestedTensor]) -> list[NestedTensor]:
    if isinstance(values, NestedTensor):
        found.append(values)
    elif isinstance(values, (list, tuple)):
        for value in values:
            _nested_operands(value, found)
    elif isinstance(values, dict):
        _nested_operands(list(values.values()), found)
    return found


def _element_of(value: Any, index: int, views: dict[int, Any]) -> Any:
    if isinstance(value, NestedTensor):
        return views[id(value)][index]
    if isinstance(value, (list, tuple)) and any(isinstance(v, NestedTensor) for v in value):
        return type(value)(_element_of(v, index, views) for v in value)
    return value


def _element_views(nested: list[NestedTensor], writable: bool) -> dict[int, Any]:
    """Element views of every operand: one ``split`` each, or in-place-writable ``narrow`` views."""
    if writable:
        return {id(nt): [nt._layout.element(nt._values, i) for i in range(len(nt))] for nt in nested}
    return {id(nt): nt._layout.unpack(nt._values) for nt in nested}


def _translate(value: Any, reference: NestedTensor, name: str, func: object) -> Any:
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return element_dim(reference, value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            return type(value)(element_dim(reference, v) for v in value)
    except ValueError:
        raise ValueError(
            f"{func} got {name}={value!r}, which includes the batch dimension; it cannot run per element "
            "on a NestedTensor"
        ) from None
    return value


def translate_dim_arguments(
    func: torch._ops.OpOverload, reference: NestedTensor, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    """Rewrite the dim arguments of an aten call (found by schema name) into element coordinates."""
    schema = func._schema.arguments
    args = tuple(
        _translate(a, reference, schema[i].name, func) if i < len(schema) and schema[i].name in DIM_ARGUMENTS else a
        for i, a in enumerate(args)
    )
    kwargs = {k: _translate(v, reference, k, func) if k in DIM_ARGUMENTS else v for k, v in kwargs.items()}
    return args, kwargs


def _mutated_argument(func: Callable, args: tuple, kwargs: dict) -> NestedTensor | None:
    schema = getattr(func, "_schema", None)
    if schema is None:
        name = getattr(func, "__name__", "")
        return args[0] if name.endswith("_") and not name.endswith("__") and args else None
    for position, argument in enumerate(schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            value = args[position] if position < len(args) else kwargs.get(argument.name)
            if isinstance(value, NestedTensor):
                return value
    return None


def _combine(results: list, like: NestedTensor, func: object) -> Any:
    """Pack per-element results: tensors into a NestedTensor, tuples of tensors into a tuple of them."""
    first = results[0]
    if all(isinstance(r, Tensor) for r in results):
        return from_elements(results, like)
    if isinstance(first, (tuple, list)) and all(
        isinstance(r, (tuple, list)) and len(r) == len(first) and all(isinstance(x, Tensor) for x in r) for r in results
    ):
        return tuple(from_elements([r[k] for r in results], like) for k in range(len(first)))
    if all(r is None for r in results):
        return None
    if all(not isinstance(r, (Tensor, tuple, list)) and r == first for r in results):
        return first  # one answer for every element (``is_pinned``, ``dense_dim``)
    raise ValueError(
        f"{func} gives per-element results that cannot form a batch: {_describe(results)}; run it on the elements "
        "of the NestedTensor (``nt.unbind()``) instead"
    )


def _describe(results: list) -> str:
    shown = [f"tuple of {len(r)}" if isinstance(r, (tuple, list)) else repr(r) for r in results[:3]]
    return ", ".join(shown) + (", ..." if len(results) > 3 else "")


def per_element_fallback(func: Callable, args: tuple, kwargs: dict) -> Any:
    r"""
    Run ``func`` once per element and pack the results.

    NestedTensor operands are replaced by their ``i``-th element (all must have the same batch size);
    other operands are passed unchanged. For aten overloads, dim arguments are translated to element
    coordinates (a dim naming the batch raises ``ValueError``). In-place and ``out=`` ops write
    through element views and return the mutated NestedTensor. Dim arguments left at their defaults
    keep their meaning inside every element (``torch.diagonal(nt)`` takes each element's diagonal).

    Tensor results become a NestedTensor, tuples of tensors a tuple of NestedTensors, ``None`` stays
    ``None`` and a value every element agrees on (``is_pinned``) is returned once; results that cannot
    form a batch (tuples of different lengths, different Python values) raise ``ValueError``.

    Examples:
        >>> nt = NestedTensor([[3.0, 1.0, 2.0], [5.0, 4.0]])
        >>> per_element_fallback(torch.ops.aten.cumsum.default, (nt, 1), {})
        NestedTensor([
            [3., 4., 6.],
            [5., 9.]
        ])
    """
    check_slow_path(func)
    nested = _nested_operands((args, kwargs), [])
    if isinstance(func, torch._ops.OpOverload):
        args, kwargs = translate_dim_arguments(func, nested[0], args, kwargs)
    return _map_elements(func, args, kwargs, nested)


def _map_elements(func: Callable, args: tuple, kwargs: dict, nested: list[NestedTensor]) -> Any:
    """Call ``func`` with the ``i``-th element of every NestedTensor operand, for every ``i``, and pack the results."""
    reference = nested[0]
    batch = len(reference)
    for other in nested[1:]:
        if len(other) != batch:
            raise ValueError(f"NestedTensor batch length mismatch between operands of {func}: {batch} vs {len(other)}")
    mutated = _mutated_argument(func, args, kwargs)
    views = _element_views(nested, writable=mutated is not None)
    results = [
        func(*(_element_of(a, i, views) for a in args), **{k: _element_of(v, i, views) for k, v in kwargs.items()})
        for i in range(batch)
    ]
    if mutated is not None:
        return mutated
    if not results:
        return _empty_result(func, reference)
    return _combine(results, reference, func)


def _empty_result(func: Callable, like: NestedTensor) -> Any:
    """What ``func`` returns for a batch of no elements: empty NestedTensors in the shape of its schema."""

    def empty() -> NestedTensor:
        return type(like)(
            [],
            dtype=like.dtype,
            device=like.device,
            batch_first=like._batch_first,
            padding_value=like._padding_value,
            mask_value=like._mask_value,
        )

    returns = func._schema.returns if isinstance(func, torch._ops.OpOverload) else None
    if returns is None:
        return empty()
    if not returns:
        return None
    if len(returns) > 1:
        return tuple(empty() for _ in returns)
    return [] if str(returns[0].type).startswith("List") or str(returns[0].type).endswith("[]") else empty()


def per_element_call(func: Callable, args: tuple, kwargs: dict, dims: dict[str, int]) -> Any:
    r"""
    Run a torch-level function once per element; ``dims`` maps its dim parameters to their positions.

    For Python-level functions whose defaults come from the input's shape (``torch.fft.irfft``'s
    output length, ``torch.linalg.vander``'s column count): on the NestedTensor they would read the
    padded shape, per element they read each element's own.

    Examples:
        >>> nt = NestedTensor([[1.0, 2.0, 4.0], [3.0, 5.0]])
        >>> per_element_call(torch.linalg.vander, (nt,), {}, {})[1]
        tensor([[1., 3.],
                [1., 5.]])
    """
    check_slow_path(func)
    nested = _nested_operands((args, kwargs), [])
    args, kwargs = list(args), dict(kwargs)
    for name, position in dims.items():
        if name in kwargs:
            kwargs[name] = _translate(kwargs[name], nested[0], name, func)
        elif 0 <= position < len(args):
            args[position] = _translate(args[position], nested[0], name, func)
    return _map_elements(func, tuple(args), kwargs, nested)


# ------------------------------------------------------------------ ops that must run per element

PER_ELEMENT_COMPOSITES = (
    aten.chain_matmul.default,
    aten.corrcoef.default,
    aten.cov.default,
    aten.diag.default,
    aten.diagflat.default,
    aten.nonzero_numpy.default,
    aten.norm_except_dim.default,
    aten.pdist.default,
)
"""Composite ops whose decomposition checks or reads the padded rank or sizes (``diag`` wants 1-D or
2-D input, ``cov`` at most 2-D): they run per element instead of decomposing."""

implements_aten(*PER_ELEMENT_COMPOSITES)(per_element_fallback)

_FFT_DIM = 2  # fft(input, n, dim, norm), fft2/fftn(input, s, dim, norm)
PER_ELEMENT_FUNCTIONS: dict[Callable, dict[str, int]] = {
    **{
        getattr(torch.fft, name): {"dim": _FFT_DIM}
        for name in (f"{kind}fft{rank}" for kind in ("", "i", "r", "ir", "h", "ih") for rank in ("", "2", "n"))
    },
    torch.fft.fftshift: {"dim": 1},
    torch.fft.ifftshift: {"dim": 1},
    torch.gradient: {"dim": -1},
    torch.linalg.vander: {},
    torch.lobpcg: {},
    torch.pca_lowrank: {},
    torch.svd_lowrank: {},
}
"""Torch-level functions run per element (with the positions of their dim parameters): their defaults
(FFT lengths, ``vander``'s columns, ``gradient``'s dims) or their Python bodies (``svd_lowrank``
builds dense operands from ``A.shape``) follow the input's shape, which must be each element's."""


def _register_per_element_function(func: Callable, dims: dict[str, int]) -> None:
    @implements(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        return per_element_call(func, args, kwargs, dims)


for _function, _dims in PER_ELEMENT_FUNCTIONS.items():
    _register_per_element_function(_function, _dims)
