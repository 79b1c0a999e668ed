"""Guards that make slow paths observable: tests forbid them to prove an op runs on the packed buffer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_per_element_forbidden: ContextVar[bool] = ContextVar("danling_nested_forbid_per_element", default=False)
_padding_forbidden: ContextVar[bool] = ContextVar("danling_nested_forbid_padding", default=False)


@contextlib.contextmanager
def forbid_slow_paths(padding: bool = False) -> Iterator[None]:
    r"""
    Make per-element Python loops (and, with ``padding=True``, padded copies) raise inside this block.

    Examples:
        >>> from danling.tensors import NestedTensor
        >>> nt = NestedTensor([1.0, 2.0], [3.0])
        >>> with forbid_slow_paths():
        ...     doubled = nt * 2
        ...     first = nt.tolist()
        Traceback (most recent call last):
        ...
        RuntimeError: NestedTensor hot path unexpectedly ran per element: tolist
        >>> with forbid_slow_paths(padding=True):
        ...     padded = nt.tensor
        Traceback (most recent call last):
        ...
        RuntimeError: NestedTensor hot path unexpectedly materialized padding: padded view
    """
    per_element = _per_element_forbidden.set(True)
    padded = _padding_forbidden.set(padding or _padding_forbidden.get())
    try:
        yield
    finally:
        _padding_forbidden.reset(padded)
        _per_element_forbidden.reset(per_element)


def check_slow_path(detail: object) -> None:
    """Call at the top of every per-element path; raises inside ``forbid_slow_paths()``."""
    if _per_element_forbidden.get():
        raise RuntimeError(f"NestedTensor hot path unexpectedly ran per element: {detail}")


def check_padding(detail: object) -> None:
    """Call before materialising a padded tensor; raises inside ``forbid_slow_paths(padding=True)``."""
    if _padding_forbidden.get():
        raise RuntimeError(f"NestedTensor hot path unexpectedly materialized padding: {detail}")
