"""Which ``CheckpointManager`` handles a storage format, by name (``checkpoint.backend``) or by path.

``file`` (``FileCheckpointManager``) and ``dcp`` (``DCPCheckpointManager``, imported when first
asked for) are built in; a backend distribution registers its own format with
``register_checkpoint_manager`` when its module is imported.  ``find_checkpoint_format`` picks the
manager class that recognises a path, so ``Runner.read_config(path)`` and
``Runner.from_checkpoint(path)`` work before any runner or manager exists.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "checkpoint_manager_class",
    "find_checkpoint_format",
    "register_checkpoint_manager",
    "registered_checkpoint_backends",
]

#: name -> manager class, or "module:attribute" until first use (keeps torch.distributed.checkpoint unimported)
_MANAGERS: dict[str, Any] = {
    "file": "danling.runners.checkpoints.file:FileCheckpointManager",
    "dcp": "danling.runners.checkpoints.dcp:DCPCheckpointManager",
}


def register_checkpoint_manager(name: str, manager_class: type) -> None:
    """Make ``manager_class`` the manager of ``checkpoint.backend == name`` (lower-cased)."""
    _MANAGERS[name.strip().lower()] = manager_class


def registered_checkpoint_backends() -> tuple[str, ...]:
    """The names ``checkpoint.backend`` accepts besides ``"auto"``, sorted."""
    return tuple(sorted(_MANAGERS))


def checkpoint_manager_class(name: str) -> type:
    r"""
    The manager class registered for ``name``.

    Examples:
        >>> checkpoint_manager_class("file").__name__
        'FileCheckpointManager'
        >>> checkpoint_manager_class("tape")
        Traceback (most recent call last):
        ValueError: unknown checkpoint backend 'tape': registered backends are dcp, ...file...
    """
    key = str(name).strip().lower()
    if key not in _MANAGERS:
        raise ValueError(f"unknown checkpoint backend {name!r}: registered backends are {', '.join(sorted(_MANAGERS))}")
    entry = _MANAGERS[key]
    if isinstance(entry, str):
        module, attribute = entry.split(":")
        entry = _MANAGERS[key] = getattr(import_module(module), attribute)
    return entry


def find_checkpoint_format(path: str) -> type:
    """The manager class whose format ``path`` is in; files (``.pth``, ``.safetensors``) when none claims it."""
    for name in sorted(_MANAGERS, key=lambda key: key == "file"):  # the file format last: it accepts any file
        try:
            manager_class = checkpoint_manager_class(name)
        except ImportError:
            continue
        if manager_class.recognizes(path):
            return manager_class
    return checkpoint_manager_class("file")
