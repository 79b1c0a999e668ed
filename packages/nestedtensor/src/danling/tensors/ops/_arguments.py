r"""Read the arguments of an aten call by name, with the schema's defaults filled in."""

from __future__ import annotations

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
    for position, argument in enumerate(func._schema.arguments):
        if position < len(args) and not argument.kwarg_only:
            bound[argument.name] = args[position]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
    return bound


__all__ = ["bind"]
