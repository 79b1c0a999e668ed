"""The slow path that makes every op work on a NestedTensor: run it on each element, pack the results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..nested_tensor import NestedTensor
from ._packed import element_dim, from_elements
from ._registry import check_slow_path

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


def _combine(results: list, like: NestedTensor) -> Any:
    first = results[0]
    if all(isinstance(r, Tensor) for r in results):
        return from_elements(results, like)
    if isinstance(first, (tuple, list)) and all(
        isinstance(r, (tuple, list)) and len(r) == len(first) and all(isinstance(x, Tensor) for x in r) for r in results
    ):
        return tuple(from_elements([r[k] for r in results], like) for k in range(len(first)))
    return list(results)


def per_element_fallback(func: Callable, args: tuple, kwargs: dict) -> Any:
    r"""
    Run ``func`` once per element and pack the results.

    NestedTensor operands are replaced by their ``i``-th element (all must have the same batch size);
    other operands are passed unchanged. For aten overloads, dim arguments are translated to element
    coordinates (a dim naming the batch raises ``ValueError``). In-place and ``out=`` ops write
    through element views and return the mutated NestedTensor. Tensor results become a NestedTensor,
    tuples of tensors a tuple of NestedTensors, anything else a list.

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
    reference = nested[0]
    batch = len(reference)
    for other in nested[1:]:
        if len(other) != batch:
            raise ValueError(f"NestedTensor batch length mismatch between operands of {func}: {batch} vs {len(other)}")
    if isinstance(func, torch._ops.OpOverload):
        args, kwargs = translate_dim_arguments(func, reference, args, kwargs)
    mutated = _mutated_argument(func, args, kwargs)
    views = _element_views(nested, writable=mutated is not None)
    results = [
        func(*(_element_of(a, i, views) for a in args), **{k: _element_of(v, i, views) for k, v in kwargs.items()})
        for i in range(batch)
    ]
    if mutated is not None:
        return mutated
    if not results:
        return type(reference)(
            [],
            dtype=reference.dtype,
            device=reference.device,
            batch_first=reference._batch_first,
            padding_value=reference._padding_value,
            mask_value=reference._mask_value,
        )
    return _combine(results, reference)
