"""Exact resume: a run stopped at an optimizer step and resumed from ``latest`` ends bit-identical.

Each scenario trains three runners on the same shuffled data with dropout (so both the sampler's
and the global random generators matter), gradient accumulation with a partial last window, and a
cosine schedule: an uninterrupted reference; a run interrupted right after optimizer step
``stop_at`` (it saves ``latest`` with ``force=True``, as a preemption handler would); and a fresh
process-like runner that resumes from that file.  The resumed run's parameters must equal the
reference's with ``torch.equal``: no batch skipped or repeated, same random draws.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner


class Interrupted(Exception):
    """Stands in for the process being killed after a checkpoint was written."""


class ResumableRunner(TorchRunner):
    def __init__(self, config, stop_at: int | None = None):
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(46, 4, generator=generator)
        labels = torch.randint(0, 3, (46,), generator=generator)
        self.datasets.train = TensorDataset(inputs, labels)
        self.datasets.extra = TensorDataset(inputs[:21] * 2, labels[:21])
        self.datasets.val = TensorDataset(inputs[:10], labels[:10])
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        self.criterion = nn.CrossEntropyLoss()
        self.stop_at = stop_at

    def optimizer_step(self) -> bool:
        applied = super().optimizer_step()
        if self.train_state.global_step == self.stop_at:
            self.save_checkpoint(force=True)
            raise Interrupted(f"stopped after step {self.stop_at}")
        return applied


def make_config(root, **overrides):
    config = {
        "seed": 7,
        "log": False,
        "workspace_root": str(root),
        "accum_steps": 2,
        "optim": {"type": "adamw", "lr": 0.01},
        "sched": {"type": "cosine"},
        "dataloader": {"batch_size": 9},  # 46 // 9 = 5 batches: windows of 2, 2 and a partial 1
        "checkpoint": {"async_mode": "disabled"},
        "train_splits": ["extra", "train"],
    }
    config.update(overrides)
    return config


def reference_parameters(root, **overrides):
    runner = ResumableRunner(make_config(root, **overrides))
    runner.train()
    runner.close()
    return [parameter.detach().clone() for parameter in runner.model.parameters()], runner


def interrupted_then_resumed(root, stop_at, **overrides):
    interrupted = ResumableRunner(make_config(root, **overrides), stop_at=stop_at)
    with pytest.raises(Interrupted):
        interrupted.train()
    interrupted.close()
    latest = os.path.join(interrupted.workspace.checkpoint_dir, "latest.pth")
    assert os.path.isfile(latest)
    resumed = ResumableRunner(make_config(root, resume=latest, **overrides))
    assert resumed.train_state.global_step == stop_at
    resumed.train()
    resumed.close()
    return [parameter.detach().clone() for parameter in resumed.model.parameters()], resumed


def assert_identical(expected, actual):
    assert len(expected) == len(actual)
    for reference, resumed in zip(expected, actual):
        assert torch.equal(reference, resumed)


@pytest.mark.parametrize("stop_at", [1, 4, 8])
def test_epoch_mode_resume_mid_epoch_is_exact(tmp_path, stop_at):
    # per epoch: split "extra" (2 batches -> 1 step) then "train" (5 batches -> 3 steps): 4 steps
    expected, reference = reference_parameters(tmp_path / "reference", epochs=3)
    assert reference.train_state.global_step == 12
    actual, resumed = interrupted_then_resumed(tmp_path / "resumed", stop_at, epochs=3)
    assert resumed.train_state.global_step == 12
    assert resumed.train_state.epoch == 3
    assert sorted(resumed.results) == [0, 1, 2]  # rows saved before the interruption are kept
    assert_identical(expected, actual)


@pytest.mark.parametrize("stop_at", [3, 6, 10])
def test_step_mode_resume_is_exact(tmp_path, stop_at):
    expected, reference = reference_parameters(tmp_path / "reference", steps=13)
    assert reference.train_state.global_step == 13
    actual, resumed = interrupted_then_resumed(tmp_path / "resumed", stop_at, steps=13)
    assert resumed.train_state.global_step == 13
    assert resumed.train_state.epoch == reference.train_state.epoch
    assert resumed.loop_state.passes == reference.loop_state.passes
    assert_identical(expected, actual)


def test_interrupted_run_differs_without_restoring_rng(tmp_path):
    """The check is sensitive: skipping the RNG restore (dropout masks) changes the result."""
    expected, _ = reference_parameters(tmp_path / "reference", epochs=2)
    interrupted = ResumableRunner(make_config(tmp_path / "resumed", epochs=2), stop_at=3)
    with pytest.raises(Interrupted):
        interrupted.train()
    interrupted.close()
    latest = os.path.join(interrupted.workspace.checkpoint_dir, "latest.pth")
    payload = torch.load(latest, weights_only=True)
    payload["state"]["rng"] = {"python": None, "numpy": None, "torch_cpu": None, "torch_cuda": None}
    resumed = ResumableRunner(make_config(tmp_path / "resumed", epochs=2))
    torch.manual_seed(12345)
    resumed.load_checkpoint(payload)
    resumed.train()
    resumed.close()
    actual = [parameter.detach() for parameter in resumed.model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(expected, actual))


def test_auto_resume_continues_the_same_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: other edits to it would change the code id between runs
    expected, _ = reference_parameters(tmp_path / "reference", epochs=2)
    interrupted = ResumableRunner(make_config(tmp_path / "run", epochs=2), stop_at=5)
    with pytest.raises(Interrupted):
        interrupted.train()
    interrupted.close()
    resumed = ResumableRunner(make_config(tmp_path / "run", epochs=2, auto_resume=True))
    assert resumed.workspace.dir == interrupted.workspace.dir
    assert resumed.train_state.global_step == 5
    assert resumed.config.resume == os.path.join(interrupted.workspace.checkpoint_dir, "latest.pth")
    resumed.train()
    resumed.close()
    assert_identical(expected, [parameter.detach() for parameter in resumed.model.parameters()])


def test_async_checkpoint_resume_is_exact(tmp_path):
    overrides = {"epochs": 2, "checkpoint": {"async_mode": "async"}}
    expected, _ = reference_parameters(tmp_path / "reference", **overrides)
    actual, _ = interrupted_then_resumed(tmp_path / "resumed", 6, **overrides)
    assert_identical(expected, actual)
