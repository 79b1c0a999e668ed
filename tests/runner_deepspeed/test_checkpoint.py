"""DeepSpeedCheckpointManager's naming, pointers, retention and reading, on real files.

The engine here is a stand-in that writes and reads one file per tag the way DeepSpeed lays a
checkpoint out (``{dir}/{tag}/mp_rank_00_model_states.pt`` holding the client state): these tests
are about the manager's file logic.  Real engines save and restore in ``distributed/``.
"""

from __future__ import annotations

import os

import pytest
import torch

from danling.runners import RunnerConfig
from danling.runners.checkpoints import CheckpointNotFoundError, find_checkpoint_format, load_model_state
from danling.runners.deepspeed_runner import ENGINE_STATE, DeepSpeedCheckpointManager, resolve_tag_directory


class FileEngine:
    """Writes ``client_state`` where DeepSpeed writes its model-states file; a linear module for exports."""

    def __init__(self) -> None:
        self.module = torch.nn.Linear(2, 1)
        self.saved: list[str] = []
        self.loaded: list[tuple[str, bool]] = []

    def zero_optimization_stage(self) -> int:
        return 1

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert save_latest is False  # a DeepSpeed ``latest`` file would collide with our pointers
        os.makedirs(os.path.join(save_dir, tag))
        torch.save(client_state, os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"))
        self.saved.append(tag)

    def load_checkpoint(self, load_dir, tag, load_optimizer_states, load_lr_scheduler_states, load_module_only):
        self.loaded.append((tag, load_module_only))
        path = os.path.join(load_dir, tag, "mp_rank_00_model_states.pt")
        return path, torch.load(path, weights_only=True)


def manager(tmp_path, engine=None, **config):
    settings = {"keep_latest_k": 2, "last_save_model_only": True, **config}
    return DeepSpeedCheckpointManager(tmp_path / "checkpoints", settings, engine=engine or FileEngine(), interval=2)


def payload(step):
    return {"runner": {"seed": step, "optim": {"betas": (0.9, 0.99)}}, "state": {"step": step}, "model": ENGINE_STATE}


def test_each_save_gets_its_own_tag_and_pointers_name_it(tmp_path):
    checkpoints = manager(tmp_path)
    assert checkpoints.save(payload(2), progress=2, best=True)  # on the cadence: a history entry
    assert checkpoints.save(payload(3), progress=3, force=True)  # off it: a tag of its own
    assert checkpoints.engine.saved == ["ckpt-e000002", "latest-e000003"]
    assert checkpoints.pointers() == {"latest": "latest-e000003", "best": "ckpt-e000002"}
    assert (tmp_path / "checkpoints" / "latest.pointer").read_text() == "latest-e000003"  # the tag, no newline
    saved = torch.load(tmp_path / "checkpoints" / "latest-e000003" / "mp_rank_00_model_states.pt")
    assert "model" not in saved and saved["state"] == {"step": 3}  # the engine stores the model itself
    assert checkpoints.health.last_successful_aliases == ("latest.pointer",)
    # the same progress again: a new directory, never an overwrite of one a pointer may name
    checkpoints.save(payload(3), progress=3, force=True)
    assert checkpoints.pointers()["latest"] == "latest-e000003.1"
    assert not (tmp_path / "checkpoints" / "latest-e000003").exists()  # superseded and named by nothing


def test_retention_keeps_the_newest_history_and_whatever_a_pointer_names(tmp_path):
    checkpoints = manager(tmp_path)
    checkpoints.save(payload(2), progress=2, best=True)
    for step in (4, 6, 8):
        checkpoints.save(payload(step), progress=step)
    tags = sorted(entry for entry in os.listdir(tmp_path / "checkpoints") if entry.startswith("ckpt"))
    assert tags == ["ckpt-e000002", "ckpt-e000006", "ckpt-e000008"]  # e2 is best; e4 fell out of keep_latest_k=2
    assert list(checkpoints.history) == ["ckpt-e000006", "ckpt-e000008"]
    again = manager(tmp_path)  # a restarted run counts the history on disk
    assert list(again.history) == ["ckpt-e000002", "ckpt-e000006", "ckpt-e000008"]


def test_final_save_exports_the_model_and_the_config_reads_back(tmp_path):
    engine = FileEngine()
    checkpoints = manager(tmp_path, engine, export_dtype="bfloat16")
    checkpoints.save(payload(5), progress=5, last_step=True)
    export = load_model_state(tmp_path / "checkpoints" / "model.safetensors")
    assert export["weight"].dtype == torch.bfloat16
    assert torch.equal(export["weight"], engine.module.weight.detach().to(torch.bfloat16))
    assert checkpoints.health.last_successful_aliases == ("latest.pointer", "model.safetensors")
    config = DeepSpeedCheckpointManager.read_config(str(tmp_path / "checkpoints"))
    assert isinstance(config, RunnerConfig) and config.seed == 5
    assert config.optim.betas == (0.9, 0.99)  # stored as data, not YAML: a resume compares it exactly


@pytest.mark.parametrize(
    "source",
    ["latest", "latest-e000005", "checkpoints/latest.pointer", "checkpoints", ".", "checkpoints/latest-e000005"],
)
def test_every_way_of_naming_a_checkpoint_resolves(tmp_path, source):
    checkpoints = manager(tmp_path)
    checkpoints.save(payload(5), progress=5, force=True)
    target = os.path.join(checkpoints.directory, "latest-e000005")
    path = source if source in ("latest", "latest-e000005") else os.path.join(tmp_path, source)
    assert os.path.samefile(checkpoints.resolve(path), target)
    assert checkpoints.exists(path) and DeepSpeedCheckpointManager.recognizes(
        os.path.join(tmp_path, source) if source not in ("latest", "latest-e000005") else target
    )
    assert find_checkpoint_format(target) is DeepSpeedCheckpointManager


def test_load_returns_the_client_state_with_engine_components_marked(tmp_path):
    checkpoints = manager(tmp_path)
    checkpoints.save(payload(4), progress=4)
    loaded = checkpoints.load("latest")
    assert loaded["state"] == {"step": 4} and loaded["model"] == loaded["optimizer"] == ENGINE_STATE
    assert "optimizer" not in checkpoints.load("ckpt-e000004", module_only=True)
    assert checkpoints.engine.loaded == [("ckpt-e000004", False), ("ckpt-e000004", True)]


def test_missing_and_dangling_checkpoints_fail_loudly(tmp_path):
    checkpoints = manager(tmp_path)
    with pytest.raises(
        CheckpointNotFoundError, match=r"no DeepSpeed checkpoint at 'latest' \(looked for .*latest.pointer"
    ):
        checkpoints.resolve("latest")
    assert not checkpoints.exists("latest")
    checkpoints.save(payload(2), progress=2)
    (tmp_path / "checkpoints" / "ckpt-e000002" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"names .*ckpt-e000002.*which holds no DeepSpeed checkpoint"):
        checkpoints.load("latest")
    assert checkpoints.exists("latest")  # a dangling pointer counts: auto_resume must fail, not restart
    (tmp_path / "checkpoints" / "bad.pointer").write_text("../elsewhere")
    with pytest.raises(ValueError, match=r"expected a tag name, got '\.\./elsewhere'"):
        resolve_tag_directory("bad", checkpoints.directory)


def test_an_interrupted_save_is_cleaned_up_on_restart(tmp_path):
    checkpoints = manager(tmp_path)
    checkpoints.save(payload(2), progress=2)
    checkpoints.engine.save_checkpoint(checkpoints.directory, "ckpt-e000004", {"state": {}}, False)  # no runner.pt
    manager(tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["ckpt-e000002", "latest.pointer"]


def test_saves_are_synchronous_and_need_an_engine(tmp_path):
    checkpoints = DeepSpeedCheckpointManager(tmp_path, {"async_mode": "async"}, interval=1)
    assert checkpoints.async_mode == "disabled" and checkpoints.is_collective
    with pytest.warns(RuntimeWarning, match="the manager has no engine"):
        checkpoints.save(payload(1), progress=1)
    assert checkpoints.health.error_count == 1
    assert "the manager has no engine" in checkpoints.health.last_error
