"""The main job, ``examples/digits.py``, run end to end with a small budget."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits.py"


def load_example():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert all(0.0 <= row["val"]["acc"] <= 1.0 for row in results.values())
    with open(os.path.join(directory, "best.json")) as file:
        best = json.load(file)
    assert best["val"]["acc"] == max(row["val"]["acc"] for row in results.values())
    checkpoints = os.listdir(runner.workspace.checkpoint_dir)
    assert {"latest.pth", "best.pth"} <= set(checkpoints)
    best_state = torch.load(os.path.join(runner.workspace.checkpoint_dir, "best.pth"), weights_only=True)
    assert best_state["state"]["train"]["epoch"] == best["index"] + 1
    events = EventAccumulator(os.path.join(directory, "tensorboard", runner.timestamp))
    events.Reload()
    assert {"train/loss", "val/acc"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("val/acc")) == 4


def test_digits_example_resumes_from_its_latest_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: other edits to it would change the code id between runs
    digits = load_example()
    first = digits.main(
        ["--epochs", "2", "--workspace_root", str(tmp_path), "--log", "false", "--tensorboard", "false"]
    )
    resumed = digits.main(
        [
            "--epochs",
            "2",
            "--workspace_root",
            str(tmp_path),
            "--log",
            "false",
            "--tensorboard",
            "false",
            "--auto_resume",
            "true",
        ]
    )
    assert resumed.workspace.dir == first.workspace.dir
    assert resumed.train_state.epoch == 2 and sorted(resumed.results) == [0, 1]
    assert torch.equal(resumed.model[0].weight, first.model[0].weight)
