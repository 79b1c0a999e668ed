"""Host copies of a checkpoint payload for asynchronous writes: ``snapshot`` and ``StagingPool``.

An asynchronous save must copy every tensor before it returns: training goes on and updates
parameters and optimizer state in place while the writer thread serialises the copy.  That copy
is most of what an asynchronous save costs its caller, and most of the copy is the kernel
handing out fresh pages: copying 13.5 MB into new tensors took 3.6 ms here, into tensors that
were used before 0.45 ms.  ``StagingPool`` keeps the host buffers of the last written snapshot
and hands them to the next one, so from the second save on the copy is a plain ``memcpy``.
The price is host memory for one copy of the checkpoint's tensors, held between saves.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch

#: Values that never change in place, so a sequence made only of them is copied with one call.
_IMMUTABLE = frozenset({int, float, bool, complex, str, bytes, type(None)})


class StagingPool:
    r"""
    Reusable host tensors for snapshots, keyed by shape and dtype.

    ``take(tensor)`` returns a copy of ``tensor`` in host memory, in a buffer of a previous
    snapshot when one of that shape and dtype is free; ``release(buffers)`` hands the buffers
    of a snapshot that has been written back.  Only the buffers of the last released snapshot
    are kept, so the pool holds at most one checkpoint's tensors.  ``take`` runs on the thread
    that saves, ``release`` on the writer thread.

    Examples:
        >>> pool = StagingPool()
        >>> first = pool.take(torch.ones(3))
        >>> pool.release([first])
        >>> second = pool.take(torch.zeros(3))
        >>> second is first, second
        (True, tensor([0., 0., 0.]))
    """

    def __init__(self) -> None:
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host copy of ``tensor`` (detached, contiguous), in a recycled buffer where one fits."""
        key = (tuple(tensor.shape), tensor.dtype)
        with self._lock:
            free = self._free.get(key)
            buffer = free.pop() if free else None
        if buffer is None:
            buffer = torch.empty(key[0], dtype=tensor.dtype)
        # From an accelerator into pageable memory the copy returns once the data is on the host.
        return buffer.copy_(tensor.detach())

    def release(self, buffers: Iterable[torch.Tensor]) -> None:
        """Make ``buffers`` (from ``take``, no longer read by anyone) available to the next snapshot."""
        free: dict[tuple, list[torch.Tensor]] = {}
        for buffer in buffers:
            free.setdefault((tuple(buffer.shape), buffer.dtype), []).append(buffer)
        with self._lock:
            self._free = free


def _stageable(tensor: torch.Tensor) -> bool:
    # Plain dense tensors (parameters included) fit a recycled buffer; subclasses, sparse and
    # quantized tensors are copied the general way.
    return (type(tensor) is torch.Tensor or type(tensor) is torch.nn.Parameter) and (
        tensor.layout == torch.strided and not tensor.is_quantized
    )


def snapshot(tree: Any, pool: StagingPool | None = None, staged: list[torch.Tensor] | None = None) -> Any:
    r"""
    Copy every tensor in ``tree`` to host memory, rebuilding dicts, lists and tuples around them.

    Other values are kept as they are (numbers and strings cannot change in place); a tuple or
    list of such values is copied with one call.  A tensor that appears under several names
    (tied weights) is copied once and stays shared.  With ``pool``, copies go into its recycled
    buffers and the buffers used are appended to ``staged`` (release them once written).  A
    copy from an accelerator blocks until the data is on the host.

    Examples:
        >>> weight = torch.zeros(2)
        >>> copied = snapshot({"model": {"weight": weight, "tied": weight}, "rng": (3, (1, 2), None)})
        >>> weight += 1
        >>> copied["model"]["weight"], copied["model"]["tied"] is copied["model"]["weight"]
        (tensor([0., 0.]), True)
    """
    return _Snapshot(pool, staged).copy(tree)


class _Snapshot:
    """One snapshot in progress: remembers tensors already copied (by identity) so sharing survives."""

    def __init__(self, pool: StagingPool | None, staged: list[torch.Tensor] | None) -> None:
        self.pool = pool
        self.staged = staged if staged is not None else []
        self.copies: dict[int, torch.Tensor] = {}

    def copy(self, tree: Any) -> Any:
        if isinstance(tree, torch.Tensor):
            return self.tensor(tree)
        if isinstance(tree, Mapping):
            return self.mapping(tree)
        if isinstance(tree, (list, tuple)):
            if _IMMUTABLE.issuperset(map(type, tree)):  # e.g. Python's RNG state: 625 integers
                return list(tree) if isinstance(tree, list) else tree
            values = [self.copy(value) for value in tree]
            if isinstance(tree, list):
                return values
            return type(tree)(*values) if hasattr(tree, "_fields") else tuple(values)
        return tree

    def tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        copied = self.copies.get(id(tensor))
        if copied is None:
            if self.pool is not None and _stageable(tensor):
                copied = self.pool.take(tensor)
                self.staged.append(copied)
            else:
                copied = tensor.detach().to("cpu", copy=True)
            self.copies[id(tensor)] = copied
        return copied

    def mapping(self, tree: Mapping) -> dict:
        copied = type(tree)() if isinstance(tree, OrderedDict) else {}
        for key, value in tree.items():
            copied[key] = self.copy(value)
        if hasattr(tree, "_metadata"):  # module state dicts carry version metadata used when loading
            copied._metadata = tree._metadata  # type: ignore[attr-defined]
        return copied
