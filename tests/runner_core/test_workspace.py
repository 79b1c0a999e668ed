"""RunnerWorkspace: directory layout, identity, logging and metadata files on disk."""

from __future__ import annotations

import builtins
import os
import subprocess

import pytest
import yaml

from danling.runners.config import RunnerConfig, config_id
from danling.runners.workspace import RunnerWorkspace


@pytest.fixture(autouse=True)
def restore_print():
    original = builtins.print
    yield
    builtins.print = original


@pytest.fixture
def outside_git(tmp_path, monkeypatch):
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def inside_git(tmp_path, monkeypatch):
    folder = tmp_path / "repo"
    folder.mkdir()
    for args in (("init", "-q"), ("config", "user.email", "t@e.st"), ("config", "user.name", "t")):
        subprocess.run(["git", *args], cwd=folder, check=True)
    (folder / "train.py").write_text("pass\n")
    subprocess.run(["git", "add", "."], cwd=folder, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=folder, check=True)
    monkeypatch.chdir(folder)
    return folder


def _config(root, **overrides):
    return RunnerConfig(
        {"workspace_root": str(root), "lineage": "lineage-a", "experiment": "experiment-a", **overrides}
    )


def test_layout_outside_git(tmp_path, outside_git):
    workspace = RunnerWorkspace(_config(tmp_path / "runs", epochs=2), timestamp="T1")
    assert workspace.code_id is None
    assert workspace.id == workspace.config_id == config_id(workspace.config)
    assert workspace.dir == os.path.join(str(tmp_path / "runs"), "lineage-a", workspace.id)
    assert workspace.log_file == os.path.join(workspace.dir, "logs", "T1.log")
    assert workspace.checkpoint_dir == os.path.join(workspace.dir, "checkpoints")
    assert os.path.isdir(workspace.checkpoint_dir) and os.path.isdir(os.path.dirname(workspace.log_file))
    assert workspace.name == "lineage-a-experiment-a"


def test_layout_inside_git_repeats_the_code_id(tmp_path, inside_git):
    workspace = RunnerWorkspace(_config(tmp_path / "runs"))
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout[:8]
    assert workspace.code_id == head
    assert workspace.id == f"{head}-{workspace.config_id}"
    assert workspace.dir == os.path.join(str(tmp_path / "runs"), f"lineage-a-{head}", f"{head}-{workspace.config_id}")


def test_defaults_and_overrides(tmp_path, outside_git):
    workspace = RunnerWorkspace({"workspace_root": str(tmp_path), "name": None})
    assert (workspace.lineage, workspace.experiment, workspace.name) == ("lin", "exp", "lin-exp")
    custom = RunnerWorkspace(
        _config(
            tmp_path,
            name="baseline",
            dir=str(tmp_path / "here"),
            log_file=str(tmp_path / "logs" / "run.log"),
            checkpoint_dir=str(tmp_path / "ckpt"),
        )
    )
    assert custom.name == "baseline" and custom.dir == str(tmp_path / "here")
    assert custom.log_file == str(tmp_path / "logs" / "run.log") and custom.checkpoint_dir == str(tmp_path / "ckpt")
    assert os.path.isdir(tmp_path / "logs") and os.path.isdir(tmp_path / "ckpt")
    assert RunnerWorkspace(_config(tmp_path, checkpoint={"dir_name": "ck"})).checkpoint_dir.endswith(os.sep + "ck")


def test_identity_is_fixed_at_first_use(tmp_path, outside_git):
    config = _config(tmp_path, epochs=2)
    workspace = RunnerWorkspace(config)
    run_dir = workspace.dir
    config.epochs = 5
    assert workspace.dir == run_dir and workspace.config_id == config_id(_config(tmp_path, epochs=2))


def test_non_semantic_settings_share_the_run_directory(tmp_path, outside_git):
    first = RunnerWorkspace(_config(tmp_path, epochs=2, log=False))
    second = RunnerWorkspace(_config(tmp_path, epochs=2, auto_resume=True, resume="x", heartbeat={"enabled": True}))
    assert first.dir == second.dir


def test_metadata_files(tmp_path, inside_git):
    config = _config(tmp_path / "runs", epochs=3, optim={"lr": 0.1})
    config.post_init_only = "finalized"
    workspace = RunnerWorkspace(config, timestamp="T9")
    (inside_git / "train.py").write_text("changed\n")
    written = workspace.save_metadata()
    metadata = os.path.join(workspace.dir, "metadata")
    names = {os.path.relpath(path, workspace.dir) for path in written}
    assert names == {
        "runner.yaml",
        os.path.join("metadata", "config.full.yaml"),
        os.path.join("metadata", "config.canonical.yaml"),
        os.path.join("metadata", "config.diff.yaml"),
        os.path.join("metadata", "git.yaml"),
        os.path.join("metadata", "git.diff"),
    }
    assert RunnerConfig.from_yaml(os.path.join(workspace.dir, "runner.yaml")) == config
    with open(os.path.join(metadata, "config.full.yaml")) as file:
        assert yaml.safe_load(file)["post_init_only"] == "finalized"
    with open(os.path.join(metadata, "config.diff.yaml")) as file:
        assert yaml.safe_load(file) == {"epochs": 3, "optim": {"lr": 0.1}, "post_init_only": "finalized"}
    with open(os.path.join(metadata, "git.yaml")) as file:
        assert yaml.safe_load(file) == {"commit": workspace.code_id, "id": workspace.id, "timestamp": "T9"}
    with open(os.path.join(metadata, "git.diff")) as file:
        assert "+changed" in file.read()


def test_metadata_outside_git_and_on_other_ranks(tmp_path, outside_git, monkeypatch):
    workspace = RunnerWorkspace(_config(tmp_path))
    assert not any(path.endswith("git.diff") for path in workspace.save_metadata())
    monkeypatch.setenv("RANK", "1")
    other = RunnerWorkspace(_config(tmp_path / "other"))
    assert other.save_metadata() == [] and other.init_logging() is None


def test_metadata_write_failure_warns(tmp_path, outside_git):
    workspace = RunnerWorkspace(_config(tmp_path, dir=str(tmp_path / "run")))
    os.makedirs(os.path.join(workspace.metadata_dir, "config.full.yaml"))  # a directory where a file goes
    with pytest.warns(RuntimeWarning, match="failed to write run metadata"):
        written = workspace.save_metadata()
    assert [os.path.basename(path) for path in written] == ["runner.yaml"]


def test_logging_writes_plain_file_and_routes_prints(tmp_path, outside_git, capsys):
    workspace = RunnerWorkspace(_config(tmp_path), timestamp="T2")
    workspace.init_print()
    logger = workspace.init_logging()
    assert workspace.init_logging() is logger and len(logger.handlers) == 2
    print("epoch", 1, "loss", 0.5)
    logger.warning("disk almost full")
    workspace.close()
    workspace.close()
    with open(workspace.log_file) as file:
        text = file.read()
    assert "[INFO] epoch 1 loss 0.5" in text and "[WARNING] disk almost full" in text and "\x1b[" not in text
    assert "epoch 1 loss 0.5" in capsys.readouterr().out
    assert workspace.logger is None and not logger.handlers and builtins.print is not workspace.print_router


def test_init_print_before_and_after_logging(tmp_path, outside_git):
    workspace = RunnerWorkspace(_config(tmp_path))
    router = workspace.init_print()
    assert builtins.print is router and router.logger is None
    workspace.init_logging()
    assert router.logger is workspace.logger
    assert workspace.init_print() is router
    assert workspace.init_print(process=1) is not router and not router.active
    workspace.close()
