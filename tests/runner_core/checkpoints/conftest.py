"""Fixtures of the checkpoint tests."""

from __future__ import annotations

import errno
import os

import pytest


@pytest.fixture
def no_symlinks(monkeypatch):
    """A file system that refuses symbolic links (FAT, Windows without the privilege); ``monkeypatch.undo()`` ends it."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", refuse)
