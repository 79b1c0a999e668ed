"""atomic_write / atomic_path / atomic_link / remove_stale_temporaries on real files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from danling.utils import atomic_link, atomic_path, atomic_write, remove_stale_temporaries


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "latest.pth"
    target.write_bytes(b"old")
    with atomic_write(target) as file:
        torch.save({"step": 2}, file)
        assert target.read_bytes() == b"old"  # not visible until the block ends
    assert torch.load(target) == {"step": 2}
    assert os.listdir(tmp_path) == ["latest.pth"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "latest.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="serialisation failed"), atomic_write(target) as file:
        file.write(b"partial")
        raise RuntimeError("serialisation failed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["latest.pth"]


def test_atomic_path_for_path_based_writers(tmp_path):
    target = tmp_path / "model.bin"
    with atomic_path(target, fsync=False) as temporary:
        assert os.path.dirname(temporary) == str(tmp_path)
        with open(temporary, "wb") as file:
            file.write(b"weights")
    assert target.read_bytes() == b"weights" and os.listdir(tmp_path) == ["model.bin"]
    with pytest.raises(KeyError), atomic_path(target) as temporary:
        open(temporary, "wb").close()
        raise KeyError
    assert target.read_bytes() == b"weights" and os.listdir(tmp_path) == ["model.bin"]


def test_atomic_link_shares_content_and_survives_source_replacement(tmp_path):
    source, alias = tmp_path / "latest.pth", tmp_path / "best.pth"
    source.write_bytes(b"v1")
    atomic_link(source, alias)
    atomic_link(source, alias)  # relinking the same file leaves no temporary behind
    assert alias.read_bytes() == b"v1" and os.path.samefile(source, alias)
    with atomic_write(source) as file:
        file.write(b"v2")
    assert alias.read_bytes() == b"v1" and source.read_bytes() == b"v2"
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "latest.pth"]


def test_remove_stale_temporaries_keeps_live_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"latest.pth.tmp-{dead_pid}-1"
    live = tmp_path / f"latest.pth.tmp-{os.getpid()}-1"
    unrelated = tmp_path / "notes.tmp"
    for path in (stale, live, unrelated):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, unrelated.name])
