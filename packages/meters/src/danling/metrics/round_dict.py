"""``RoundDict``: the nested mapping every reduction of the meters returns.

It is a ``chanfig.NestedDict`` (attribute access, dotted keys, ``.dict()``) that nests plain
mappings on assignment and knows how to round and format its numbers.

    >>> import torch
    >>> scores = RoundDict({"acc": 0.123456, "task": {"f1": torch.tensor(0.98766)}})
    >>> scores.task.f1
    tensor(0.9877)
    >>> round(scores, 2).dict()
    {'acc': 0.12, 'task': {'f1': 0.99}}
    >>> f"{scores:.3f}"
    'acc: 0.123\\ttask.f1: 0.988'
"""

from __future__ import annotations

import math
from typing import Any

from chanfig import NestedDict
from torch import Tensor


def format_number(value: Any, spec: str) -> str:
    """Format a float, int or tensor with ``spec``; tensors with several elements print as ``str``."""
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return format(value.item(), spec)
        return str(value)
    return format(value, spec)


def round_number(value: Any, ndigits: int) -> Any:
    """Round a number or tensor; one-element tensors become Python numbers."""
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return round(value.item(), ndigits)
        return value.round(decimals=ndigits)
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if isinstance(value, (int, float)):
        return round(value, ndigits)
    return value


class RoundDict(NestedDict):
    """A nested mapping of metric results with ``round`` and ``format`` support.

    ``round(d, n)`` returns a rounded copy; ``d.round(n)`` rounds in place and returns ``d``.
    ``f"{d:.4f}"`` joins ``key: value`` pairs with tabs, using dotted keys for nested levels.
    """

    convert_mapping = True

    def round(self, ndigits: int = 4) -> RoundDict:
        """Round every leaf in place and return self."""
        for key, value in list(self.all_items()):
            self.set(key, round_number(value, ndigits))
        return self

    def __round__(self, ndigits: int = 4) -> RoundDict:
        rounded = RoundDict()
        for key, value in self.all_items():
            rounded.set(key, round_number(value, ndigits))
        return rounded

    def __format__(self, spec: str) -> str:
        return "\t".join(f"{key}: {format_number(value, spec)}" for key, value in self.all_items())
