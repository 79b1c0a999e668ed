r"""Read the arguments of an aten call by name, with the schema's defaults filled in."""

from __future__ import annotations

import functools
from typing import Any

import torch


def bind(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    r"""
    Every argument of ``func`` by schema name: given ones, then defaults (``__torch_dispatch__`` drops them).

    Examples:
        >>> bind(torch.ops.aten.sort.default, (torch.zeros(2), 0), {})["descending"]
        False
        >>> bind(torch.ops.aten.sort.stable, (torch.zeros(2),), {"stable": True})["dim"]
        -1
    """
    bound: dict[str, Any] = {}
    for position, (name, kwarg_only, has_default, default) in enumerate(_arguments(func)):
        if position < len(args) and not kwarg_only:
            bound[name] = args[position]
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif has_default:
            bound[name] = default
    return bound


@functools.cache
def _arguments(func: torch._ops.OpOverload) -> tuple[tuple[str, bool, bool, Any], ...]:
    """``(name, kwarg_only, has_default, default)`` of every schema argument (reading the schema is slow)."""
    return tuple(
        (argument.name, argument.kwarg_only, argument.has_default_value(), argument.default_value)
        for argument in func._schema.arguments
    )


__all__ = ["bind"]
