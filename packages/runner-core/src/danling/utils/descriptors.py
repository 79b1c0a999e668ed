"""Properties that create the directory they return: ``ensure_dir`` and friends.

``ensure_dir`` runs ``os.makedirs(path, exist_ok=True)`` on every read; the ``cached_`` variants
compute the path and create the directory once per instance, then return the cached path.
``*_parent_dir`` create the parent of a file path instead.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any


def _make_dir(path: Any) -> None:
    os.makedirs(path, exist_ok=True)


def _make_parent_dir(path: Any) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


class ensure_dir(property):
    r"""
    A ``property`` whose value is a directory path, created (with parents) each time it is read.

    The value is returned as the getter returns it (not made absolute).  Reading it on the class
    returns the descriptor itself.  ``@x.setter`` works as for ``property``.

    Examples:
        >>> @ensure_dir
        ... def dir(self) -> str:
        ...     return os.path.join("path", "to", "dir")

        >>> import tempfile
        >>> class Run:
        ...     root = tempfile.mkdtemp()
        ...     @ensure_dir
        ...     def logs(self) -> str:
        ...         return os.path.join(self.root, "logs")
        >>> os.path.isdir(Run().logs)
        True
    """

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        path = super().__get__(instance, owner)
        _make_dir(path)
        return path


class ensure_parent_dir(property):
    r"""A ``property`` whose value is a file path; its parent directory is created on each read."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        path = super().__get__(instance, owner)
        _make_parent_dir(path)
        return path


class cached_ensure_dir(cached_property):
    r"""
    A ``functools.cached_property`` whose value is a directory, created on first read.

    Later reads return the cached path without touching the file system.

    Examples:
        >>> import tempfile
        >>> class Run:
        ...     root = tempfile.mkdtemp()
        ...     @cached_ensure_dir
        ...     def checkpoints(self) -> str:
        ...         return os.path.join(self.root, "checkpoints")
        >>> run = Run()
        >>> run.checkpoints == run.checkpoints and os.path.isdir(run.checkpoints)
        True
    """

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        path = super().__get__(instance, owner)  # later reads find the cached value first
        _make_dir(path)
        return path


class cached_ensure_parent_dir(cached_property):
    r"""A ``functools.cached_property`` whose value is a file path; its parent is created on first read."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        path = super().__get__(instance, owner)  # later reads find the cached value first
        _make_parent_dir(path)
        return path
