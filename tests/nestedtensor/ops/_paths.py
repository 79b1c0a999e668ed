"""Pin the path of ops that choose, by element size, between a batch-wide formulation and one call per element."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from danling.tensors.ops import _rows

from ..harness import check_op


@contextlib.contextmanager
def per_element_from(size: int) -> Iterator[None]:
    saved = _rows.PER_ELEMENT_MIN_SIZE
    _rows.PER_ELEMENT_MIN_SIZE = size
    try:
        yield
    finally:
        _rows.PER_ELEMENT_MIN_SIZE = saved


def batch_wide() -> contextlib.AbstractContextManager:
    """Every element counts as small: the vectorised path runs (and ``check_op(packed=True)`` proves it)."""
    return per_element_from(sys.maxsize)


def one_by_one() -> contextlib.AbstractContextManager:
    """Every element counts as large: the per-element path runs."""
    return per_element_from(0)


PATHS = {"batch_wide": (batch_wide, True), "one_by_one": (one_by_one, False)}
"""``name -> (context, packed)`` for parametrizing a test over both paths."""


def check_both_paths(op, operands, reference=None, **kwargs) -> None:
    """``check_op`` on the batch-wide path (proved packed unless ``packed=False``) and on the per-element path."""
    packed = kwargs.pop("packed", True)
    with batch_wide():
        check_op(op, operands, reference, packed=packed, **kwargs)
    with one_by_one():
        check_op(op, operands, reference, packed=False, **kwargs)
