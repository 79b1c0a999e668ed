"""The loops: step-mode rounds and budgets, warnings, split validation, evaluation steps, unsized loaders."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset

from danling.runners import LoopState, TorchRunner

from .toy_runners import ListDataset, base_config

BATCH = (torch.ones(2, 1), torch.zeros(2, 1))


class SplitsRunner(TorchRunner):
    """Training splits with a given number of ready-made batches each."""

    def __init__(self, config, lengths: dict[str, int], evaluate: int = 0):
        super().__init__(config)
        for split, length in lengths.items():
            self.datasets[split] = ListDataset([BATCH] * length)
        if evaluate:
            self.datasets.val = ListDataset([BATCH] * evaluate)
        self.model = nn.Linear(1, 1)
        self.criterion = nn.MSELoss()
        self.turns: list[tuple[str, int, int]] = []

    def train_split_steps(self, split, target, iterators=None):
        start = self.train_state.global_step
        result = super().train_split_steps(split, target, iterators)
        self.turns.append((split, start, self.train_state.global_step))
        return result


def steps_config(tmp_path, splits, **overrides):
    config = base_config(
        tmp_path,
        optim={"type": "sgd", "lr": 0.01},
        dataloader={"batch_size": None, "shuffle": False},
        train_splits=splits,
        checkpoint={"async_mode": "disabled", "load_only": True},
    )
    config.update(overrides)
    return config


def test_step_budget_is_shared_fairly_and_capped_by_one_pass(tmp_path):
    runner = SplitsRunner(steps_config(tmp_path, ["a", "b"], steps=10), {"a": 3, "b": 100})
    runner.train()
    assert runner.turns == [("a", 0, 3), ("b", 3, 10)]
    assert runner.train_state.epoch == 1
    # the pass over "a" ends when its loader is asked for a fourth batch, which the budget did not need
    assert runner.loop_state.batches == {"a": 3, "b": 7} and runner.loop_state.passes == {}
    runner.close()


def test_step_mode_rounds_and_a_single_result_row(tmp_path):
    runner = SplitsRunner(steps_config(tmp_path, ["a", "b"], steps=10), {"a": 2, "b": 2}, evaluate=3)
    runner.train()
    assert runner.turns == [("a", 0, 2), ("b", 2, 4), ("a", 4, 6), ("b", 6, 8), ("a", 8, 9), ("b", 9, 10)]
    assert (runner.train_state.global_step, runner.train_state.epoch) == (10, 3)
    assert list(runner.results) == [10]
    assert set(runner.results[10]) == {"a", "b", "val"}
    runner.close()


def test_step_mode_saves_history_on_its_cadence(tmp_path):
    checkpoint = {"async_mode": "disabled", "interval": 4}
    runner = SplitsRunner(steps_config(tmp_path, ["a"], steps=10, checkpoint=checkpoint), {"a": 3})
    runner.train()
    runner.close()
    final_file = os.readlink(os.path.join(runner.workspace.checkpoint_dir, "latest.pth"))
    assert final_file.startswith("latest-s000000000010-")  # the final save is off the cadence: no history entry
    files = sorted(os.listdir(runner.workspace.checkpoint_dir))
    assert files == sorted(["best.pth", "ckpt-s000000000004.pth", "ckpt-s000000000008.pth", "latest.pth", final_file])
    final = torch.load(os.path.join(runner.workspace.checkpoint_dir, "latest.pth"), weights_only=True)
    assert final["state"]["train"]["global_step"] == 10
    assert final["loop"]["passes"] == {"a": 3}  # 3 + 3 + 3 batches, then one of the fourth pass


def test_accumulation_counts_optimizer_steps_across_passes(tmp_path):
    runner = SplitsRunner(steps_config(tmp_path, ["a"], steps=5, accum_steps=2), {"a": 3})
    runner.train()
    # each pass of 3 batches gives a full window and a partial one: 2 optimizer steps per pass
    assert runner.train_state.global_step == 5
    assert runner.train_state.micro_step == 10
    assert runner.loop_state.passes == {"a": 2}
    runner.close()


def test_empty_training_split_warns_and_still_finishes(tmp_path):
    runner = SplitsRunner(steps_config(tmp_path, ["a"], steps=4), {"a": 0})
    with pytest.warns(RuntimeWarning) as records:
        runner.train()
    messages = [str(record.message) for record in records]
    assert any("made no progress after one full split pass (target=4, reached=0, remaining=4)" in m for m in messages)
    assert any("finished with 4 step(s) remaining" in m for m in messages)
    assert list(runner.results) == [0]
    runner.close()


def test_split_and_budget_errors(tmp_path):
    runner = SplitsRunner(steps_config(tmp_path, ["a"]), {"a": 2}, evaluate=2)
    with pytest.raises(ValueError, match=r"cannot run step-mode training: config\.steps could not be resolved"):
        runner.train()
    runner.config.steps = 2
    with pytest.raises(
        ValueError, match=r"unknown training split\(s\): \['foo'\]; available training split\(s\): \['a'\]"
    ):
        runner.train(train_splits=["foo"])
    with pytest.raises(ValueError, match="evaluate steps exhausted early on split 'val': requested 5 step"):
        runner.evaluate_steps("val", steps=5)
    with pytest.raises(ValueError, match="invalid steps: expected a non-negative value, got -1"):
        runner.evaluate_steps("val", steps=-1)
    assert runner.evaluate_steps("val", steps=0).dict() == {}
    assert runner.evaluate_steps("val", steps=1)["loss"] == pytest.approx(runner.evaluate_steps("val")["loss"])
    runner.close()
    nothing = SplitsRunner(steps_config(tmp_path / "none", [], steps=2), {})
    with pytest.raises(ValueError, match="cannot start training: no valid training split was resolved"):
        nothing.train()
    with pytest.raises(ValueError, match="cannot start evaluation: no valid evaluation split was resolved"):
        nothing.evaluate()
    nothing.close()


class Countdown(IterableDataset):
    """An iterable dataset without a length."""

    def __iter__(self):
        return iter([BATCH] * 5)


def test_unsized_loaders_train_by_epoch_and_by_step(tmp_path, capsys):
    class Streaming(SplitsRunner):
        def __init__(self, config):
            super().__init__(config, {})
            self.datasets.train = Countdown()

    epochs = Streaming(steps_config(tmp_path, ["train"], epochs=2, log_interval=2))
    assert epochs.steps is None
    epochs.train()
    assert epochs.train_state.global_step == 10
    assert "training on train [2/∞]" in capsys.readouterr().out
    epochs.close()
    steps = Streaming(steps_config(tmp_path / "steps", ["train"], steps=7))
    steps.train()
    assert steps.train_state.global_step == 7 and steps.loop_state.passes == {"train": 1}
    steps.close()


def test_loop_state_round_trips_through_a_checkpoint():
    state = LoopState(split="b", target=9, done=["a"], batches={"a": 0, "b": 2}, passes={"a": 3})
    restored = LoopState()
    restored.load_state_dict(state.state_dict())
    assert restored == state
    assert restored.remaining(["a", "b", "c"]) == ["b", "c"]
    assert restored.begin("b") is True and restored.begin("c", 12) is False
    restored.finish("c")
    assert (restored.split, restored.done) == (None, ["a", "c"])
