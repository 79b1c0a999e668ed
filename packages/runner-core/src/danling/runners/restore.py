"""How a checkpoint is read and applied: sources, excluded entries, component rules, plain data.

``read_checkpoint`` accepts a mapping, a ``model.safetensors`` export, or a name or path that the
run's checkpoint manager resolves (``"latest"``, ``"best"``, files, run or checkpoint directories).
``apply_exclusions`` drops the entries ``checkpoint.exclude_from_loading`` names, and
``load_component`` applies one entry with the rule every runner follows: a component the runner
has must be in the checkpoint.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from chanfig import to_dict

from .checkpoints import FileCheckpointManager, find_checkpoint_format, load_checkpoint, load_model_state

#: ``checkpoint.exclude_from_loading`` spellings of component names.
COMPONENT_ALIASES = {"data_loader": "dataloaders", "dataloader": "dataloaders", "lr_scheduler": "scheduler"}
#: Entries that hold model weights; excluding any of them skips loading the model.
MODEL_KEYS = ("model", "model_parts", "module")


def read_checkpoint(checkpoint: Any, manager: Any = None, *, template: Any = None) -> Mapping[str, Any]:
    r"""
    A checkpoint as a mapping: ``checkpoint`` itself, or loaded from the name or path it gives.

    A ``.safetensors`` file is a model export and reads as ``{"model": weights}``.  Other names
    and paths go to ``manager.load`` (``"latest"``, ``"best"``, history names, directories; the
    manager's storage format decides), or, without a manager, to the format that recognises the
    path (``find_checkpoint_format``).  ``template`` (a function returning the current state) is
    handed to formats that load in place.

    Examples:
        >>> read_checkpoint({"model": {}})
        {'model': {}}
        >>> read_checkpoint(3)
        Traceback (most recent call last):
        ValueError: invalid checkpoint input: expected a mapping or path, got int: 3
    """
    if isinstance(checkpoint, Mapping):
        return checkpoint
    if not isinstance(checkpoint, (str, bytes, os.PathLike)):
        raise ValueError(
            f"invalid checkpoint input: expected a mapping or path, got {type(checkpoint).__name__}: {checkpoint!r}"
        )
    path = os.fsdecode(checkpoint)
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model export {path!r} does not exist")
        return {"model": load_model_state(path)}
    if manager is None:
        manager_class = find_checkpoint_format(path)
        if manager_class is not FileCheckpointManager:
            raise ValueError(
                f"checkpoint {path!r} is in the {manager_class.__name__} format: load it through a runner "
                f"(whose checkpoint manager reads it), or with {manager_class.__name__}"
            )
        return load_checkpoint(path)
    return manager.load(path, template=template)


def exclusion_paths(entries: str | Sequence[str | Sequence[str]] | None) -> tuple[tuple[str, ...], ...]:
    r"""
    ``checkpoint.exclude_from_loading`` as paths: each entry split on ``.``, its first part's alias resolved.

    An entry that is already a sequence of parts is taken as split.

    Examples:
        >>> exclusion_paths(["lr_scheduler", "state.train", "", ("data_loader",)])
        (('scheduler',), ('state', 'train'), ('dataloaders',))
        >>> exclusion_paths("optimizer"), exclusion_paths(None)
        ((('optimizer',),), ())
    """
    entries = [entries] if isinstance(entries, str) else list(entries or [])
    paths = []
    for entry in entries:
        parts = str(entry).split(".") if isinstance(entry, str) else [str(part) for part in entry]
        parts = [part for part in parts if part]
        if parts:
            paths.append((COMPONENT_ALIASES.get(parts[0], parts[0]), *parts[1:]))
    return tuple(paths)


def apply_exclusions(
    payload: Mapping[str, Any], entries: str | Sequence[str | Sequence[str]] | None
) -> tuple[dict[str, Any], set[str]]:
    r"""
    ``payload`` without the entries ``entries`` names, and the set of excluded top-level components.

    A top-level name (``"optimizer"``, ``"dataloader"`` ...) skips that component; a dotted
    name (``"state.train"``, or the path ``("state", "train")``) drops the nested key.  The
    input is never modified.

    Examples:
        >>> payload = {"state": {"train": {"global_step": 4}, "rng": {}}, "optimizer": {}}
        >>> kept, excluded = apply_exclusions(payload, ["lr_scheduler", "state.train"])
        >>> kept["state"], sorted(excluded), "train" in payload["state"]
        ({'rng': {}}, ['scheduler'], True)
    """
    payload, excluded = dict(payload), set()
    for parts in exclusion_paths(entries):
        if len(parts) == 1:
            excluded.add(parts[0])
            continue
        node = payload
        for part in parts[:-1]:  # copy the path down to the dropped key, never the caller's data
            if not isinstance(node.get(part), Mapping):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            node.pop(parts[-1], None)
    if "runner" in excluded:
        warnings.warn(
            "`checkpoint.exclude_from_loading` contains 'runner'; semantic runner config validation will be "
            "skipped for this load.",
            RuntimeWarning,
            stacklevel=3,
        )
    return payload, excluded


def load_component(target: Any, component: str, label: str, state: Any) -> None:
    r"""
    ``target.load_state_dict(state)``; nothing without a ``target``; an error when ``state`` is missing.

    Examples:
        >>> load_component(object(), "optimizer", "optimizer state", None)
        Traceback (most recent call last):
        ValueError: cannot restore optimizer: checkpoint has no optimizer state
        Use `load_pretrained` for model-only checkpoints instead of `load_checkpoint`
    """
    if target is None:
        return
    if state is None:
        raise ValueError(
            f"cannot restore {component}: checkpoint has no {label}\n"
            "Use `load_pretrained` for model-only checkpoints instead of `load_checkpoint`"
        )
    target.load_state_dict(state)


def plain_data(value: Any) -> Any:
    r"""
    ``value`` as plain dicts, lists and tuples (how a config is stored in a checkpoint).

    The result equals ``config.dict()``; walking dicts directly is several times faster, which
    matters because every checkpoint, asynchronous ones included, converts the config.

    Examples:
        >>> from danling.runners import RunnerConfig
        >>> config = RunnerConfig(epochs=2, optim={"betas": (0.9, 0.99)})
        >>> plain_data(config) == config.dict(), type(plain_data(config)["optim"])
        (True, <class 'dict'>)
    """
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, dict):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_data(item) for item in value)
    if value is None or isinstance(value, (str, int, float)):
        return value
    return to_dict(value)  # chanfig variables, sets, dataclasses ...
