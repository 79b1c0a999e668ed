"""Move batches to a device: ``to_device``."""

from __future__ import annotations

from typing import Any

import torch
from chanfig import FlatDict


def to_device(data: Any, device: torch.device | str) -> Any:
    r"""
    Move every tensor in ``data`` to ``device``, keeping the structure.

    - tensors (``NestedTensor`` and other subclasses included) and objects with a ``.to``
      method (modules, ...) are moved with ``.to(device)``;
    - ``chanfig.FlatDict`` (``Config``, ``NestedDict``, ...) is moved **in place**, nested
      containers included, and returned;
    - a plain ``dict`` becomes a ``FlatDict`` of moved values, so ``batch.input`` and
      ``batch["input"]`` both work;
    - lists stay lists, tuples stay tuples and named tuples keep their type;
    - anything else (``str``, numbers, ``None``) is returned unchanged.

    Copies to an accelerator are issued with ``non_blocking=True`` (asynchronous from pinned
    memory, and later kernels on the same stream see the data); copies to the CPU block, so the
    result is ready to read.

    Examples:
        >>> batch = to_device({"input": torch.ones(2), "ids": [torch.zeros(1)], "name": "a"}, "cpu")
        >>> type(batch).__name__, batch.input.device.type, batch["name"]
        ('FlatDict', 'cpu', 'a')
    """
    if not isinstance(device, torch.device):
        device = torch.device(device)
    return _move(data, device, device.type != "cpu")


def _move(data: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=non_blocking)
    if isinstance(data, FlatDict):
        for key, value in data.items():
            data[key] = _move(value, device, non_blocking)
        return data
    if isinstance(data, list):
        return [_move(item, device, non_blocking) for item in data]
    if isinstance(data, tuple):
        items = [_move(item, device, non_blocking) for item in data]
        return type(data)(*items) if hasattr(data, "_fields") else tuple(items)
    if isinstance(data, dict):
        return FlatDict({key: _move(value, device, non_blocking) for key, value in data.items()})
    if hasattr(data, "to"):
        return data.to(device)
    return data
