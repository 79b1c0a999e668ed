"""The main job, ``examples/digits.py``, run end to end with a small budget."""

from __future__ import annotations

import copy
import glob
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import TensorDataset

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits.py"


def load_example():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def accuracy(model: torch.nn.Module, dataset: TensorDataset) -> float:
    """The fraction of ``dataset`` that ``model`` classifies correctly, computed here by hand."""
    features, labels = dataset.tensors
    model.eval()
    with torch.no_grad():
        correct = (model(features).argmax(-1) == labels).sum().item()
    return correct / len(labels)


def test_digits_example_trains_evaluates_and_keeps_its_outputs(tmp_path, capsys):
    digits = load_example()
    runner = digits.main(["--epochs", "4", "--workspace_root", str(tmp_path), "--log", "false"])
    output = capsys.readouterr().out
    assert "epoch  train loss  val loss  val acc  val f1" in output
    assert runner.best_result["val"]["acc"] >= 0.9
    directory = runner.workspace.dir
    with open(os.path.join(directory, "results.json")) as file:
        results = json.load(file)["results"]
    assert sorted(results) == ["0", "1", "2", "3"]
    with open(os.path.join(directory, "best.json")) as file:
        best = json.load(file)
    assert best["val"]["acc"] == max(row["val"]["acc"] for row in results.values())
    checkpoints = os.listdir(runner.workspace.checkpoint_dir)
    assert {"latest.pth", "best.pth"} <= set(checkpoints)
    best_state = torch.load(os.path.join(runner.workspace.checkpoint_dir, "best.pth"), weights_only=True)
    assert best_state["state"]["train"]["epoch"] == best["index"] + 1
    # the recorded accuracies are those of the last model and of the best checkpoint's model on the held-out split
    _, val = digits.load_splits(runner.config.val_fraction, runner.config.seed)
    assert results["3"]["val"]["acc"] == pytest.approx(accuracy(runner.model, val), abs=1e-6)
    best_model = copy.deepcopy(runner.model)
    best_model.load_state_dict(best_state["model"])
    assert best["val"]["acc"] == pytest.approx(accuracy(best_model, val), abs=1e-6)
    events = EventAccumulator(os.path.join(directory, "tensorboard", runner.timestamp))
    events.Reload()
    assert {"train/loss", "val/acc"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("val/acc")) == 4


class Interrupted(Exception):
    """Stands for whatever stops a run between epochs (a crash, a preempted machine)."""


def test_digits_example_resumes_from_its_latest_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: other edits to it would change the code id between runs
    digits = load_example()
    quiet = ["--epochs", "4", "--log", "false", "--tensorboard", "false"]
    uninterrupted = digits.main([*quiet, "--workspace_root", str(tmp_path / "uninterrupted")])
    trained_epochs = []

    class Watched(digits.DigitsRunner):
        """Records the epochs it trains, and is interrupted as its third epoch begins when ``stop`` is set."""

        stop = True

        def train_epoch(self, split="train"):
            if self.stop and self.train_state.epoch == 2:
                raise Interrupted
            trained_epochs.append(self.train_state.epoch)
            return super().train_epoch(split)

    monkeypatch.setattr(digits, "DigitsRunner", Watched)
    argv = [*quiet, "--workspace_root", str(tmp_path / "interrupted")]
    with pytest.raises(Interrupted):
        digits.main(argv)
    assert trained_epochs == [0, 1]
    Watched.stop = False
    trained_epochs.clear()
    resumed = digits.main([*argv, "--auto_resume", "true"])

    assert trained_epochs == [2, 3]  # continued from the checkpoint after epoch 2, not from scratch
    assert resumed.train_state.epoch == 4 and sorted(resumed.results) == [0, 1, 2, 3]
    assert glob.glob(os.path.join(tmp_path, "interrupted", "*", "*")) == [resumed.workspace.dir]  # the same run
    # an exact resume: the interrupted and resumed run ends where the uninterrupted one does
    assert resumed.results == uninterrupted.results
    for resumed_parameter, parameter in zip(resumed.model.parameters(), uninterrupted.model.parameters()):
        assert torch.equal(resumed_parameter, parameter)
