"""danling.runners.utils: run mode, time strings, git identity, ranks and main-process guards."""

from __future__ import annotations

import subprocess
from datetime import datetime

import pytest

from danling.runners.utils import (
    RunnerMode,
    base62,
    get_git_diff,
    get_git_hash,
    get_local_rank,
    get_rank,
    get_time_str,
    get_world_size,
    is_local_main_process,
    is_main_process,
    on_local_main_process,
    on_main_process,
)


def test_runner_mode_values():
    assert [mode.value for mode in RunnerMode] == ["train", "evaluate", "infer"]
    assert RunnerMode("infer") is RunnerMode.infer and RunnerMode.train == "train"
    with pytest.raises(ValueError):
        RunnerMode("predict")


def test_base62_digits_and_round_trip():
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    for number in (0, 1, 61, 62, 3843, 3844, 10**12):
        encoded, decoded = base62(number), 0
        for digit in encoded:
            decoded = decoded * 62 + alphabet.index(digit)
        assert decoded == number
    with pytest.raises(ValueError, match="non-negative"):
        base62(-1)


def test_time_str_encodes_week_weekday_and_clock():
    moment = datetime(2026, 11, 25, 20, 4, 14, 999_999)  # ISO week 48, Wednesday (3)
    assert get_time_str(moment) == base62(48) + "3" + base62(20) + base62(4) + base62(14) + base62(999_999)
    assert get_time_str() != "" and get_time_str().isalnum()


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repository(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "test@example.com")
    _git(tmp_path, "config", "user.name", "test")
    (tmp_path / "train.py").write_text("print('v1')\n")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "commit", "-q", "-m", "v1")
    return tmp_path


def test_git_hash_clean_dirty_and_outside(repository, tmp_path_factory):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repository, capture_output=True, text=True).stdout
    assert get_git_hash(str(repository)) == head.strip()[:8]
    assert get_git_diff(str(repository)) == ""
    (repository / "untracked.txt").write_text("ignored")
    assert get_git_hash(str(repository)) == head.strip()[:8]
    (repository / "train.py").write_text("print('v2')\n")
    dirty = get_git_hash(str(repository))
    assert dirty.startswith(head.strip()[:8] + "-d") and len(dirty) == 8 + 2 + 10
    assert "+print('v2')" in get_git_diff(str(repository))
    (repository / "train.py").write_text("print('v3')\n")
    assert get_git_hash(str(repository)) != dirty  # different uncommitted code, different id
    outside = tmp_path_factory.mktemp("not-a-repo")
    assert get_git_hash(str(outside)) is None and get_git_diff(str(outside)) is None


def test_ranks_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (get_rank(), get_local_rank(), get_world_size()) == (3, 1, 4)
    assert not is_main_process() and not is_local_main_process()
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    assert (get_rank(), get_local_rank(), get_world_size()) == (0, 0, 1)
    assert is_main_process() and is_local_main_process()


def test_main_process_guards(monkeypatch):
    calls = []

    class Writer:
        @on_main_process
        def write(self, value):
            calls.append(("main", value))
            return value

        @on_local_main_process
        def cache(self, value):
            calls.append(("local", value))
            return value

    writer = Writer()
    assert writer.write(1) == 1 and writer.cache(2) == 2
    monkeypatch.setenv("RANK", "1")
    assert writer.write(3) is None and writer.cache(4) == 4
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert writer.cache(5) is None
    assert calls == [("main", 1), ("local", 2), ("local", 4)]
    assert Writer.write.__name__ == "write"
