"""Context managers: ``debug`` drops into a post-mortem debugger on failure."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .decorators import Exceptions

try:  # ipdb gives a nicer prompt when installed
    import ipdb as pdb  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    import pdb


@contextmanager
def debug(enable: bool = True, error: Exceptions = Exception, exclude: Exceptions | None = None) -> Iterator[None]:
    r"""
    Open a post-mortem debugger when the block raises ``error`` (but not ``exclude``).

    The exception's ``repr`` is printed to ``stderr``, the debugger (``ipdb`` when installed,
    else ``pdb``) opens at the failing frame, and after it exits the exception is swallowed:
    execution continues after the ``with`` block.  Errors that do not match ``error``, and
    errors matching ``exclude``, propagate.  ``enable=False`` turns the context manager into a
    no-op so it can stay in code meant for production.

    Args:
        enable: Whether to catch errors at all.
        error: The exceptions that open the debugger.
        exclude: Exceptions that propagate even though they match ``error``.

    Examples:
        >>> with debug(enable=False):
        ...     value = 1 + 1
        >>> value
        2
    """
    if not enable:
        yield
        return
    try:
        yield
    except error as exc:
        if exclude is not None and isinstance(exc, exclude):
            raise
        print(repr(exc), file=sys.stderr)
        pdb.post_mortem(exc.__traceback__)
