"""CheckpointLayout on real files: unique data names, atomic alias flips, references, fsync, fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from danling.runners.checkpoints.layout import CheckpointLayout, is_data_file


def _write(layout: CheckpointLayout, data: str, content: bytes) -> str:
    with layout.write(data) as file:
        file.write(content)
    return data


def test_data_names_are_unique_and_recognisable(tmp_path):
    layout = CheckpointLayout(str(tmp_path))
    assert layout.data_name("latest", "e000003", history="ckpt-e000003") == "ckpt-e000003.pth"
    names = {layout.data_name("latest", "s000000000120") for _ in range(3)}
    assert len(names) == 3
    for name in names:
        assert name.startswith(f"latest-s000000000120-{os.getpid()}-") and is_data_file(name)
    assert not any(is_data_file(alias) for alias in ("latest.pth", "best.pth", "seed.pth", "model.safetensors"))


def test_point_flips_a_relative_link_and_reports_the_superseded_file(tmp_path):
    layout = CheckpointLayout(str(tmp_path))
    first = _write(layout, layout.data_name("latest", "e000001"), b"one")
    assert layout.point("latest.pth", first) is None
    second = _write(layout, layout.data_name("latest", "e000002"), b"two")
    assert layout.point("latest.pth", second) == first
    assert layout.point("latest.pth", second) is None  # pointing again supersedes nothing
    assert os.readlink(tmp_path / "latest.pth") == second  # relative: a bare file name
    assert (tmp_path / "latest.pth").read_bytes() == b"two"
    assert layout.referenced() == {second}
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_only_unreferenced_data_files_outside_keep_are_removed(tmp_path):
    layout = CheckpointLayout(str(tmp_path))
    old, kept, named = (_write(layout, f"ckpt-e00000{i}.pth", b"x") for i in (1, 2, 3))
    layout.point("best.pth", named)
    (tmp_path / "notes.pth").write_bytes(b"a user's file")
    layout.point("ckpt-e000009.pth", kept)  # an alias named like a history entry
    candidates = [old, kept, named, "notes.pth", "best.pth", "ckpt-e000009.pth", None]
    assert layout.remove_unreferenced(candidates, keep={kept}) == [old]
    assert sorted(os.listdir(tmp_path)) == ["best.pth", kept, named, "ckpt-e000009.pth", "notes.pth"]


def test_orphans_of_dead_processes_are_removed_at_start(tmp_path):
    layout = CheckpointLayout(str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan = _write(layout, f"latest-e000002-{dead_pid}-0.pth", b"never named")
    referenced = _write(layout, f"latest-e000001-{dead_pid}-1.pth", b"named")
    layout.point("latest.pth", referenced)
    own = _write(layout, layout.data_name("latest", "e000003"), b"being written by this process")
    history = _write(layout, "ckpt-e000002.pth", b"a complete history entry")
    assert CheckpointLayout(str(tmp_path)).remove_orphans() == [orphan]
    assert sorted(os.listdir(tmp_path)) == sorted([referenced, own, history, "latest.pth"])


def test_fsync_flushes_data_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(descriptor):
        synced.append(os.fstat(descriptor).st_ino)
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", spy)
    quick = CheckpointLayout(str(tmp_path))
    quick.point("latest.pth", _write(quick, "ckpt-e000001.pth", b"fast"))
    quick.sync()
    assert synced == []
    durable = CheckpointLayout(str(tmp_path), fsync=True)
    data = _write(durable, "ckpt-e000002.pth", b"durable")
    assert synced == [os.stat(tmp_path / data).st_ino, os.stat(tmp_path).st_ino]  # file before rename, then dir
    durable.point("latest.pth", data)
    durable.sync()
    assert synced[-1] == os.stat(tmp_path).st_ino


def test_without_symlinks_aliases_are_hard_links_and_names_are_written_in_place(tmp_path, no_symlinks):
    layout = CheckpointLayout(str(tmp_path))
    assert not layout.symlinks
    assert layout.data_name("latest", "e000001") == "latest.pth"
    data = _write(layout, layout.data_name("latest", "e000001"), b"in place")
    assert layout.point("latest.pth", data) is None  # nothing to flip
    history = _write(layout, "ckpt-e000002.pth", b"history")
    layout.point("latest.pth", history)
    layout.point("best.pth", history)
    assert os.path.samefile(tmp_path / "latest.pth", tmp_path / history)
    assert not os.path.islink(tmp_path / "best.pth") and (tmp_path / "best.pth").read_bytes() == b"history"
    assert layout.remove_unreferenced([history]) == [history]  # hard links keep the data
    assert (tmp_path / "latest.pth").read_bytes() == b"history"


def test_a_failed_flip_keeps_the_alias_and_leaves_no_temporary(tmp_path):
    layout = CheckpointLayout(str(tmp_path))
    (tmp_path / "best.pth").mkdir()
    data = _write(layout, "ckpt-e000001.pth", b"x")
    with pytest.raises(OSError):
        layout.point("best.pth", data)
    assert sorted(os.listdir(tmp_path)) == ["best.pth", data] and (tmp_path / "best.pth").is_dir()
