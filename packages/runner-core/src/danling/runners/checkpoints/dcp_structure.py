"""What DCP's flattening of a payload loses, and how a template gets the entries it lacks.

``torch.distributed.checkpoint`` flattens a nested payload into entries named by dotted paths:
every mapping key becomes a string and a mapping without entries vanishes.  An optimizer's state
is keyed by parameter ids (ints) and is an empty dict before the first step, so both matter.
``record_structure`` lists the dicts concerned (saved as one more entry, ``MANIFEST``);
``restore_structure`` puts them back after a load.  ``add_missing_entries`` gives an in-place
load's template a placeholder for each checkpoint entry it lacks, so that DCP reads it too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

#: Payload entry holding what DCP's flattening loses (empty dicts, non-string keys).
MANIFEST = "_danling_structure"

__all__ = ["MANIFEST", "add_missing_entries", "map_tensors", "record_structure", "restore_structure"]


def map_tensors(tree: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(tree, torch.Tensor):
        return function(tree)
    if isinstance(tree, Mapping):
        return {key: map_tensors(value, function) for key, value in tree.items()}
    if isinstance(tree, list):
        return [map_tensors(value, function) for value in tree]
    return tree


def _terminal(value: Any) -> bool:
    """Whether DCP's flattening stores ``value`` as one entry: anything but a mapping or a list holding those or tensors."""
    if isinstance(value, Mapping):
        return False
    if not isinstance(value, list):
        return True
    return not any(isinstance(entry, (Mapping, torch.Tensor)) or not _terminal(entry) for entry in value)


def record_structure(tree: Any, path: tuple = ()) -> list[tuple[tuple, list]]:
    r"""
    ``(path, non-string keys)`` of each dict in ``tree`` that is empty or has keys that are not strings.

    Paths hold the original keys, outermost first, so parents come before their children.

    Examples:
        >>> record_structure({"optimizer": {"state": {}, "param_groups": [{"params": [0, 1]}]}, "ids": {3: "a"}})
        [(('optimizer', 'state'), []), (('ids',), [3])]
    """
    found: list[tuple[tuple, list]] = []
    if isinstance(tree, Mapping):
        odd = [key for key in tree if not isinstance(key, str)]
        if path and (odd or not tree):
            found.append((path, odd))
        for key, value in tree.items():
            found.extend(record_structure(value, (*path, key)))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            found.extend(record_structure(value, (*path, index)))
    return found


def _node(tree: dict, path: tuple) -> Any:
    """The container at ``path`` in ``tree``, creating missing dicts and lists on the way.

    A dict key and its string form are one key (DCP names every key by its string): a step with an
    original, non-string key renames the string entry to it; a step by string finds an original key.
    """
    node: Any = tree
    for index, part in enumerate(path):
        default: Any = [] if index + 1 < len(path) and isinstance(path[index + 1], int) else {}
        if isinstance(node, list):
            node.extend([None] * (part + 1 - len(node)))
            if node[part] is None:
                node[part] = default
            node = node[part]
            continue
        if part not in node:
            existing = next((key for key in node if str(key) == str(part)), None)
            if existing is not None and isinstance(part, str):
                part = existing
            elif existing is not None:
                node[part] = node.pop(existing)
        node = node.setdefault(part, default)
    return node


def restore_structure(state: dict[str, Any], keys: set[str] | None = None) -> dict[str, Any]:
    """Put back the empty dicts and non-string keys the manifest lists (those under ``keys``), drop the manifest."""
    for path, odd in state.pop(MANIFEST, None) or ():
        if keys is not None and path[0] not in keys:
            continue
        node = _node(state, path)
        for key in odd:
            if str(key) in node:
                node[key] = node.pop(str(key))  # the loaded value wins over a template's stale one
    return state


def _leaf_paths(tree: Any, path: tuple = ()) -> set[tuple]:
    """Paths of ``tree``'s entries as DCP's flattening names them (every mapping key a string)."""
    if _terminal(tree) or isinstance(tree, torch.Tensor):
        return {path}
    if isinstance(tree, Mapping):
        items: Any = ((str(key), value) for key, value in tree.items())
    else:
        items = enumerate(tree)
    return set().union(*(_leaf_paths(value, (*path, key)) for key, value in items))


def _set_path(tree: dict, path: tuple, value: Any) -> None:
    parent = _node(tree, path[:-1])
    last = path[-1]
    if isinstance(parent, list):
        parent.extend([None] * (last + 1 - len(parent)))
    else:
        last = next((key for key in parent if str(key) == last), last)
    parent[last] = value


def add_missing_entries(state: dict[str, Any], metadata: Metadata) -> None:
    """Give ``state`` a placeholder for every entry of the checkpoint it lacks, so that ``dcp.load`` reads it too.

    A template holds what exists now; an optimizer that has not stepped has no moments yet, and a
    component may have been added to the run since.  Missing tensors are read whole.
    """
    present = _leaf_paths(state)
    for key, item in metadata.state_dict_metadata.items():
        path = tuple((metadata.planner_data or {}).get(key, (key,)))
        if path in present:
            continue
        if isinstance(item, TensorStorageMetadata):
            _set_path(state, path, torch.empty(item.size, dtype=item.properties.dtype))
        else:
            _set_path(state, path, None)
