"""A backend is the five hooks of BACKENDS.md: a toy one trains, saves, resumes and exports through ``Runner``."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from danling.runners import Runner, TorchRunner, registry
from tests.runner_core.toy_backend import Counted, CountingContainer, ToyCheckpointManager, ToyRunner
from tests.runner_core.toy_runners import classification_data


@pytest.fixture
def toy_stack(tmp_path, monkeypatch):
    """Install, for real, a distribution whose ``danling.runners`` entry point names ``ToyRunner`` as ``toy``."""
    site = tmp_path / "site"
    dist_info = site / "danling_toy_backend-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: danling-toy-backend\nVersion: 0.1.0\n")
    entry = f"toy = {ToyRunner.__module__}:ToyRunner"
    (dist_info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{entry}\n")
    monkeypatch.syspath_prepend(str(site))


class Classify(Runner):
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = classification_data(32)
        self.datasets.val = classification_data(16, seed=1)
        self.model = nn.Linear(4, 3)
        self.criterion = nn.CrossEntropyLoss()


def config(tmp_path, **overrides):
    values = {
        "stack": "toy",
        "log": False,
        "seed": 0,
        "workspace_root": str(tmp_path / "runs"),
        "optim": {"type": "adamw", "lr": 0.05},
        "dataloader": {"batch_size": 8},
        "checkpoint": {"async_mode": "disabled", "last_save_model_only": True},
    }
    values.update(overrides)
    return values


class StopsInThirdEpoch(Classify):
    """Interrupted after two epochs: evaluation of the third raises (an overridden pass is called)."""

    def evaluate_epoch(self, split="val"):
        if self.train_state.epoch == 2:
            raise KeyboardInterrupt
        return super().evaluate_epoch(split)


def test_toy_backend_trains_saves_resumes_and_exports(tmp_path, toy_stack):
    runner = StopsInThirdEpoch(config(tmp_path, epochs=4))
    assert isinstance(runner, ToyRunner) and runner.initialized
    assert isinstance(runner.model, Counted) and isinstance(runner.optimizer_container, CountingContainer)
    assert isinstance(runner.checkpoint_manager, ToyCheckpointManager) and runner.config.checkpoint.backend == "toy"
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    store = os.path.join(runner.workspace.dir, "toy-store")
    assert runner.model.calls == 3 * 4 + 2 * 2  # 4 training batches in each of 3 epochs, 2 evaluation in 2
    assert runner.optimizer_container.updates == runner.train_state.global_step == 12
    assert sorted(os.listdir(store)) == ["latest.toy"]  # the export comes with the final save
    assert not os.path.exists(os.path.join(runner.workspace.checkpoint_dir, "latest.pth"))
    saved = torch.load(os.path.join(store, "latest.toy"), weights_only=True)
    assert saved["state"]["train"]["epoch"] == 2
    runner.close()

    # resume from the toy checkpoint, by path and through the format registry (from_checkpoint)
    resumed = Classify(config(tmp_path, epochs=4, resume=os.path.join(store, "latest.toy")))
    assert resumed.train_state.epoch == 2 and resumed.train_state.global_step == 8
    assert torch.equal(resumed.unwrap(resumed.model).weight, saved["model"]["weight"])
    resumed.train()
    assert sorted(os.listdir(store)) == ["latest.toy", "model.safetensors"]
    restored = Classify.from_checkpoint(os.path.join(store, "latest.toy"))
    assert restored.train_state.global_step == 16 and restored.config.stack == "toy"
    restored.close()

    uninterrupted = Classify(config(tmp_path / "control", epochs=4))
    uninterrupted.train()
    for name, value in uninterrupted.unwrap(uninterrupted.model).state_dict().items():
        assert torch.equal(resumed.unwrap(resumed.model).state_dict()[name], value), name

    # the export loads as `pretrained` into a plain TorchRunner (another stack)
    export = os.path.join(resumed.workspace.dir, "toy-store", "model.safetensors")
    plain = Classify(config(tmp_path / "plain", stack="ddp", epochs=1, pretrained=export))
    assert type(plain).__mro__[2] is Runner and isinstance(plain, TorchRunner) and not isinstance(plain, ToyRunner)
    assert torch.equal(plain.unwrap(plain.model).weight, resumed.unwrap(resumed.model).weight)
    for item in (resumed, uninterrupted, plain):
        item.close()


def test_auto_resume_asks_the_backend_manager(tmp_path, toy_stack):
    first = Classify(config(tmp_path, epochs=1))
    first.train()
    first.close()
    again = Classify(config(tmp_path, epochs=1, auto_resume=True))
    assert again.workspace.dir == first.workspace.dir
    assert again.train_state.epoch == 1 and again.config.resume.endswith("latest.toy")
    again.close()
