"""Model-only export in the safetensors format: ``save_model_state`` and ``load_model_state``.

A safetensors file holds named tensors and string metadata, nothing executable, so it is safe to
load from untrusted sources and fast to read (memory-mapped).  Tensors that are the same view of
the same memory (tied weights, such as an embedding shared with the output layer) are stored
once and restored as one tensor under every name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ...utils import PathStr, atomic_path

#: Metadata key listing names stored as aliases of another tensor.
ALIASES_KEY = "danling.aliases"


def _view_key(tensor: torch.Tensor) -> tuple:
    return (
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
    )


def save_model_state(
    state: Mapping[str, Any],
    path: PathStr,
    *,
    dtype: torch.dtype | str | None = None,
    metadata: Mapping[str, str] | None = None,
    fsync: bool = True,
) -> str:
    r"""
    Write a model's ``state_dict`` to ``path`` as safetensors, atomically; return the path.

    Args:
        state: ``{name: tensor}`` (``model.state_dict()``); tensors may live on any device.
        path: Target file, normally ``.../model.safetensors``.
        dtype: Cast floating-point tensors to this dtype (``torch.bfloat16`` or ``"bfloat16"``);
            integer buffers (step counters, indices) keep their dtype.
        metadata: Extra string metadata stored in the header.
        fsync: Flush the file to disk before it replaces an existing one.

    Raises:
        TypeError: an entry is not a tensor.

    Examples:
        >>> import os, tempfile
        >>> model = torch.nn.Linear(3, 2)
        >>> path = save_model_state(model.state_dict(), os.path.join(tempfile.mkdtemp(), "model.safetensors"))
        >>> restored = load_model_state(path)
        >>> torch.equal(restored["weight"], model.weight)
        True
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple, str] = {}
    seen_storages: set[int] = set()
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"cannot export {name!r} to safetensors: expected a tensor, got {type(value).__name__}")
        tensor = value.detach()
        if tensor.numel() and _view_key(tensor) in seen_views:
            aliases[name] = seen_views[_view_key(tensor)]
            continue
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if pointer is not None:
            seen_views[_view_key(tensor)] = name
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.to("cpu").contiguous()
        if pointer is not None and pointer in seen_storages:
            tensor = tensor.clone()  # safetensors rejects tensors sharing memory: copy other views of it
        tensors[name] = tensor
        if pointer is not None:
            seen_storages.add(pointer)
    header = {"format": "pt", **(metadata or {})}
    if aliases:
        header[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    with atomic_path(path, fsync=fsync) as temporary:
        save_file(tensors, temporary, metadata=header)
    return str(path)


def load_model_state(path: PathStr, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    r"""
    Read a safetensors file written by ``save_model_state`` (or any safetensors file) as ``{name: tensor}``.

    Tensors stored once for several names come back as the same tensor under each name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as file:
        for name in file.keys():  # noqa: SIM118 - safe_open is not a mapping
            state[name] = file.get_tensor(name)
        aliases = json.loads((file.metadata() or {}).get(ALIASES_KEY, "{}"))
    for alias, target in aliases.items():
        state[alias] = state[target]
    return state


def averaged_model_weights(state: Any) -> dict[str, torch.Tensor] | None:
    r"""
    The weights of the model inside an ``AveragedModel`` state dict (an EMA), without its counter.

    ``AveragedModel.state_dict()`` holds ``module.{name}`` entries and ``n_averaged``; the export
    holds ``{name}``, so it loads into the plain model.  ``None`` for anything else.

    Examples:
        >>> averaged_model_weights({"n_averaged": torch.tensor(3), "module.weight": torch.ones(1)})
        {'weight': tensor([1.])}
        >>> averaged_model_weights({"weight": torch.ones(1)}) is None
        True
    """
    if not isinstance(state, Mapping) or "n_averaged" not in state:
        return None
    prefix = "module."
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
