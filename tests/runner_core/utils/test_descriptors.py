"""ensure_dir and friends create directories when read."""

from __future__ import annotations

import os

import pytest

from danling.utils import cached_ensure_dir, cached_ensure_parent_dir, ensure_dir, ensure_parent_dir


class Layout:
    def __init__(self, root):
        self.root = root
        self.reads = 0

    @ensure_dir
    def logs(self):
        self.reads += 1
        return os.path.join(self.root, "a", "logs")

    @logs.setter
    def logs(self, value):
        self.root = value

    @ensure_parent_dir
    def log_file(self):
        return os.path.join(self.root, "b", "run.log")

    @cached_ensure_dir
    def checkpoints(self):
        self.reads += 1
        return os.path.join(self.root, "c", "checkpoints")

    @cached_ensure_parent_dir
    def results(self):
        return os.path.join(self.root, "d", "results.json")


def test_ensure_dir_creates_on_every_read(tmp_path):
    layout = Layout(str(tmp_path))
    path = layout.logs
    assert path == os.path.join(str(tmp_path), "a", "logs") and os.path.isdir(path)
    os.rmdir(path)
    assert os.path.isdir(layout.logs)
    assert layout.reads == 2


def test_ensure_dir_setter_and_class_access(tmp_path):
    layout = Layout(str(tmp_path))
    layout.logs = str(tmp_path / "other")
    assert not os.path.exists(tmp_path / "other")  # setting creates nothing, reading does
    assert layout.logs == str(tmp_path / "other" / "a" / "logs") and os.path.isdir(layout.logs)
    assert isinstance(Layout.logs, ensure_dir)
    assert isinstance(Layout.checkpoints, cached_ensure_dir)


def test_ensure_parent_dir_creates_parent_only(tmp_path):
    layout = Layout(str(tmp_path))
    path = layout.log_file
    assert os.path.isdir(os.path.dirname(path)) and not os.path.exists(path)
    assert not os.path.exists(layout.results) and os.path.isdir(tmp_path / "d")


def test_cached_ensure_dir_computes_once(tmp_path):
    layout = Layout(str(tmp_path))
    first = layout.checkpoints
    os.rmdir(first)
    assert layout.checkpoints == first and layout.reads == 1
    assert not os.path.exists(first)  # cached: not recreated


def test_ensure_dir_raises_for_a_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "logs").write_text("not a directory")
    layout = Layout(str(tmp_path))
    with pytest.raises(FileExistsError):
        _ = layout.logs
