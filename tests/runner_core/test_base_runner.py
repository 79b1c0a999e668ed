"""BaseRunner behaviour through real runs: results and scores, files on disk, logs, checkpoints, restore."""

from __future__ import annotations

import builtins
import json
import os
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from danling.runners import BaseRunner, TorchRunner
from danling.runners import records as records_module

from .toy_runners import ClassifierRunner, base_config


class ScriptedValidation(ClassifierRunner):
    """Validation losses follow a script, so best epochs and early stopping are known in advance."""

    def __init__(self, config, losses):
        super().__init__(config)
        self.scripted = list(losses)

    def evaluate_epoch(self, split="val"):
        result = super().evaluate_epoch(split)
        result["loss"] = self.scripted[self.train_state.epoch]
        return result


def epoch_config(tmp_path, **overrides):
    config = base_config(tmp_path, epochs=4, optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 8})
    config.update(overrides)
    return config


def read_json(path):
    with open(path) as file:
        return json.load(file)


def test_results_json_files_and_best_checkpoint(tmp_path):
    runner = ScriptedValidation(epoch_config(tmp_path), [0.9, 0.5, 0.7, 0.6])
    runner.train()
    runner.close()
    directory = runner.workspace.dir
    results = read_json(os.path.join(directory, "results.json"))
    assert (results["name"], results["id"], results["timestamp"]) == (runner.name, runner.id, runner.timestamp)
    assert sorted(results["results"]) == ["0", "1", "2", "3"]
    assert [results["results"][str(i)]["val"]["loss"] for i in range(4)] == [0.9, 0.5, 0.7, 0.6]
    assert set(results["results"]["0"]) == {"train", "val"} and "lr" in results["results"]["0"]["train"]
    latest, best = read_json(os.path.join(directory, "latest.json")), read_json(os.path.join(directory, "best.json"))
    assert latest["index"] == 3 and latest["val"]["loss"] == 0.6
    assert best["index"] == 1 and best["val"]["loss"] == 0.5
    assert (runner.best_index, runner.best_score, runner.latest_score, runner.is_best) == (1, 0.5, 0.6, False)
    checkpoints = sorted(os.listdir(runner.workspace.checkpoint_dir))
    assert checkpoints == [
        "best.pth",
        "ckpt-e000001.pth",
        "ckpt-e000002.pth",
        "ckpt-e000003.pth",
        "ckpt-e000004.pth",
        "latest.pth",
    ]
    best_payload = torch.load(os.path.join(runner.workspace.checkpoint_dir, "best.pth"), weights_only=True)
    assert best_payload["state"]["train"]["epoch"] == 2 and sorted(best_payload["results"]) == [0, 1]
    history = torch.load(os.path.join(runner.workspace.checkpoint_dir, "ckpt-e000003.pth"), weights_only=True)
    assert history["state"]["train"]["epoch"] == 3


def test_higher_is_better_for_scores_other_than_loss_and_latest_wins_ties(tmp_path):
    runner = BaseRunner(base_config(tmp_path, score_name="acc", evaluate_splits=["test", "validation"]))
    assert runner.score_split == "validation"
    for index, acc in enumerate([0.5, 0.8, 0.8, 0.7]):
        runner.append_result({"validation": {"acc": acc}, "test": {"acc": 1.0}}, index=index)
    assert runner.best_index == 2 and runner.best_result["index"] == 2
    assert runner.scores == {0: 0.5, 1: 0.8, 2: 0.8, 3: 0.7}
    runner.append_result({"validation": {"note": "merged"}}, index=3)
    assert runner.results[3]["validation"].dict() == {"acc": 0.7, "note": "merged"}
    runner.close()


def test_is_best_before_results_and_without_scores(tmp_path):
    runner = BaseRunner(base_config(tmp_path, evaluate_splits=["val"]))
    assert runner.is_best and runner.best_index is None and runner.best_result is None
    runner.append_result({"train": {"loss": 1.0}}, index=0)
    assert not runner.is_best and runner.scores is None
    runner.close()


def test_early_stopping_after_patience_non_best_epochs(tmp_path, capsys):
    runner = ScriptedValidation(epoch_config(tmp_path, epochs=6, patience=1), [1.0, 0.5, 0.6, 0.7, 0.1, 0.1])
    runner.train()
    runner.close()
    assert sorted(runner.results) == [0, 1, 2, 3]
    assert "train: early-stop triggered" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(runner.workspace.checkpoint_dir, "latest.pth"))


def test_tensorboard_scalars_are_written_and_readable(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=2, tensorboard=True, log_interval=1))
    runner.train()
    runner.close()
    log_dir = os.path.join(runner.workspace.dir, "tensorboard", runner.timestamp)
    events = EventAccumulator(log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss"} <= tags
    train_steps = [event.step for event in events.Scalars("train/loss")]
    assert train_steps == list(range(1, 7))  # one per optimizer step (3 per epoch)
    assert [event.step for event in events.Scalars("val/loss")] == [0, 1]
    assert events.Scalars("train/lr")[0].value == pytest.approx(0.1)


def test_log_file_has_plain_progress_lines(tmp_path, capsys):
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=2, log=True, log_interval=2))
    runner.train()
    runner.close()
    with open(runner.workspace.log_file) as file:
        text = file.read()
    assert "\x1b[" not in text
    assert re.search(r"training on train \[2/3\]\tloss: \d\.\d{4}\tlr: 0\.1000\ttime: ", text)
    assert "training on train [3/3]" in text and "epoch [2/2]" in text and "evaluating on val [1/1]" in text
    assert "training on train [2/3]" in capsys.readouterr().out


def test_interactive_terminal_gets_a_progress_bar_and_the_file_gets_the_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(records_module, "is_interactive", lambda stream=None: True)
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=1, log=True, log_interval=1))
    runner.train()
    runner.close()
    captured = capsys.readouterr()
    console = captured.out + captured.err
    assert "training on train [" not in console  # shown in the bar, not as lines
    assert "\rtrain:   0%" in console and "\revaluate val:   0%" in console  # the tqdm bars
    assert "epoch [1/1]" in console
    with open(runner.workspace.log_file) as file:
        assert "training on train [3/3]" in file.read()


def test_checkpoint_round_trip_restores_weights_optimizer_and_progress(tmp_path):
    config = epoch_config(tmp_path, epochs=2, optim={"type": "adamw", "lr": 0.01})
    runner = ClassifierRunner(config)
    runner.train()
    runner.close()
    latest = os.path.join(runner.workspace.checkpoint_dir, "latest.pth")
    payload = torch.load(latest, weights_only=True)
    assert set(payload) == {
        "runner",
        "state",
        "dataloaders",
        "loop",
        "results",
        "ema",
        "optimizer",
        "scheduler",
        "scaler",
        "model",
    }
    restored = ClassifierRunner(epoch_config(tmp_path / "other", epochs=2, optim={"type": "adamw", "lr": 0.01}))
    restored.load_checkpoint(latest)
    assert restored.train_state.global_step == 6 and restored.train_state.epoch == 2
    assert torch.equal(restored.model.weight, runner.model.weight)
    state, expected = restored.optimizer.state_dict()["state"], runner.optimizer.state_dict()["state"]
    assert all(torch.equal(state[key]["exp_avg"], expected[key]["exp_avg"]) for key in expected)
    assert restored.config.resume == latest
    assert sorted(restored.results) == [0, 1]
    restored.close()


def test_semantically_different_checkpoint_is_rejected(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=1))
    runner.train()
    runner.close()
    latest = os.path.join(runner.workspace.checkpoint_dir, "latest.pth")
    other = ClassifierRunner(epoch_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.5}))
    with pytest.raises(ValueError, match=r"semantically different.*optim\.lr"):
        other.load_checkpoint(latest)
    tolerant = ClassifierRunner(epoch_config(tmp_path, epochs=1, log_interval=7, heartbeat={"enabled": False}))
    tolerant.load_checkpoint(latest)  # operational settings may differ
    other.config.checkpoint.exclude_from_loading = ["runner"]
    with pytest.warns(RuntimeWarning, match="semantic runner config validation will be skipped"):
        other.load_checkpoint(latest)
    assert other.train_state.global_step == 3
    other.close()
    tolerant.close()


def test_exclusions_skip_components_and_nested_entries(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=1, optim={"type": "adamw", "lr": 0.01}))
    runner.train()
    payload = runner.state_dict()
    runner.close()
    fresh = ClassifierRunner(epoch_config(tmp_path / "fresh", epochs=1, optim={"type": "adamw", "lr": 0.01}))
    fresh.config.checkpoint.exclude_from_loading = ["lr_scheduler", "optimizer", "data_loader", "state.train"]
    fresh.load_checkpoint(payload)
    assert fresh.train_state.global_step == 0
    assert fresh.optimizer.state_dict()["state"] == {}
    assert torch.equal(fresh.model.weight, runner.model.weight)
    assert "train" in payload["state"]  # the caller's payload is untouched
    assert fresh.config.resume is None  # mapping inputs are not remembered as paths
    fresh.close()


def test_missing_components_and_bad_sources_raise(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="cannot restore optimizer: checkpoint has no optimizer state"):
        runner.load_checkpoint({"model": runner.model.state_dict()})
    with pytest.raises(ValueError, match="cannot restore model: checkpoint has no model state"):
        runner.load_checkpoint({"optimizer": runner.optimizer.state_dict()})
    with pytest.raises(ValueError, match="invalid checkpoint input: expected a mapping or path, got int: 3"):
        runner.load_checkpoint(3)
    with pytest.raises(FileNotFoundError, match=r"does-not-exist\.pth"):
        runner.load_checkpoint(str(tmp_path / "does-not-exist.pth"))
    with pytest.raises(ValueError, match="checkpoint is missing key 'runner'"):
        ClassifierRunner.read_config({"model": {}})
    with pytest.raises(ValueError, match="checkpoint has no EMA or model state"):
        runner.load_pretrained({"optimizer": {}})
    runner.close()


def test_from_checkpoint_and_from_pretrained(tmp_path):
    config = epoch_config(tmp_path, epochs=2, checkpoint={"async_mode": "disabled", "last_save_model_only": True})
    runner = ClassifierRunner(config)
    runner.train()
    runner.close()
    latest = os.path.join(runner.workspace.checkpoint_dir, "latest.pth")
    export = os.path.join(runner.workspace.checkpoint_dir, "model.safetensors")
    assert os.path.isfile(export)

    resumed = ClassifierRunner.from_checkpoint(latest)
    assert resumed.train_state.global_step == 6
    assert resumed.config.resume == latest and resumed.config.auto_resume is False
    assert torch.equal(resumed.model.weight, runner.model.weight)
    resumed.close()

    finetuned = ClassifierRunner.from_pretrained(epoch_config(tmp_path / "finetune", epochs=1), export)
    assert torch.equal(finetuned.model.weight, runner.model.weight)
    assert finetuned.train_state.global_step == 0 and finetuned.config.pretrained == export
    finetuned.close()
    mapped = ClassifierRunner.from_pretrained(
        epoch_config(tmp_path / "mapped", epochs=1), {"model": runner.model.state_dict()}
    )
    assert mapped.config.pretrained is None
    mapped.close()


def test_restore_precedence_resume_then_auto_resume_then_pretrained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: other edits to it would change the code id between runs

    def trained(root, samples):
        runner = ClassifierRunner(epoch_config(root, epochs=1, optim={"type": "sgd", "lr": 0.1}), samples=samples)
        runner.train()
        runner.close()
        return runner

    # The same semantic config (its run dir is where auto_resume looks), but the source trains on twice the
    # data: other weights and twice the steps, so each checkpoint is recognisable after loading.
    source = trained(tmp_path / "source", 48)
    resume = os.path.join(source.workspace.checkpoint_dir, "latest.pth")
    own = trained(tmp_path / "own", 24)
    assert (source.train_state.global_step, own.train_state.global_step) == (6, 3)
    assert not torch.equal(source.model.weight, own.model.weight)
    pretrained = {"model": {"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}}
    torch.save(pretrained, tmp_path / "pretrained.pth")
    base = epoch_config(tmp_path / "own", epochs=1, optim={"type": "sgd", "lr": 0.1})

    with pytest.warns(RuntimeWarning, match="precedence is `resume` > `auto_resume` > `pretrained`"):
        runner = ClassifierRunner(
            {**base, "resume": resume, "auto_resume": True, "pretrained": str(tmp_path / "pretrained.pth")}
        )
    assert torch.equal(runner.model.weight, source.model.weight) and runner.train_state.global_step == 6
    runner.close()
    runner = ClassifierRunner({**base, "auto_resume": True, "pretrained": str(tmp_path / "pretrained.pth")})
    assert torch.equal(runner.model.weight, own.model.weight) and runner.train_state.global_step == 3
    runner.close()
    runner = ClassifierRunner({**base, "pretrained": str(tmp_path / "pretrained.pth")})
    assert torch.count_nonzero(runner.model.weight) == 0 and runner.train_state.global_step == 0
    runner.close()


def test_auto_resume_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=1, auto_resume=True))
    assert runner.train_state.global_step == 0
    assert "auto_resume: no checkpoint at" in capsys.readouterr().out
    runner.close()


def test_auto_resume_with_a_dangling_latest_alias_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stable code id: the second runner must find the first one's run dir
    first = ClassifierRunner(epoch_config(tmp_path, epochs=1))
    first.train()
    first.close()
    latest = os.path.join(first.workspace.checkpoint_dir, "latest.pth")
    os.remove(os.path.realpath(latest))  # the data file is gone, the alias is left dangling
    with pytest.raises(FileNotFoundError, match="latest"):
        ClassifierRunner(epoch_config(tmp_path, epochs=1, auto_resume=True))


def test_load_only_writes_no_checkpoint_and_seed_checkpoint_is_forced(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=1, checkpoint={"load_only": True}))
    runner.train()
    assert os.listdir(runner.workspace.checkpoint_dir) == []
    runner.close()
    seeded = ClassifierRunner(epoch_config(tmp_path / "seeded", epochs=1))
    assert seeded.save_seed_checkpoint()
    seed = os.path.join(seeded.workspace.checkpoint_dir, "seed.pth")
    assert sorted(os.listdir(seeded.workspace.checkpoint_dir)) == sorted(["seed.pth", os.readlink(seed)])
    seeded.train()
    with pytest.warns(RuntimeWarning, match="intended before training advances"):
        seeded.save_seed_checkpoint()
    seeded.close()


def test_seed_makes_runs_repeatable_and_is_stored(tmp_path):
    first = ClassifierRunner(epoch_config(tmp_path / "a", epochs=1, seed=3))
    second = ClassifierRunner(epoch_config(tmp_path / "b", epochs=1, seed=3))
    assert torch.equal(first.model.weight, second.model.weight)
    first.train()
    second.train()
    assert torch.equal(first.model.weight, second.model.weight)
    assert first.set_seed(5, bias=2) == 7 and first.config.seed == 5
    with pytest.raises(ValueError, match="no seed is configured"):
        BaseRunner(base_config(tmp_path / "c", seed=None)).set_seed()
    first.close()
    second.close()


def test_close_restores_print_and_is_idempotent(tmp_path):
    original = builtins.print
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=1, log=True))
    assert builtins.print is not original
    assert runner.close() is True
    assert builtins.print is original and runner.logger is None
    assert runner.close() is True


def test_budget_properties(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path, epochs=3, accum_steps=2))  # 3 batches of 8 per epoch
    assert runner.steps == 3 * 2 and runner.checkpoint_interval == 1 and runner.log_interval == 1
    assert runner.progress == 0.0 and runner.batch_size == 8
    assert runner.train_splits == ["train"] and runner.evaluate_splits == ["val"]
    runner.close()
    stepped = ClassifierRunner(base_config(tmp_path / "steps", steps=1000))
    assert stepped.is_step_mode and stepped.checkpoint_interval == 50 and stepped.log_interval == 10
    stepped.close()
    unbounded = BaseRunner(base_config(tmp_path / "none"))
    with pytest.raises(ValueError, match="neither `steps` nor `epochs`"):
        _ = unbounded.progress
    assert unbounded.log_interval == 1024 and unbounded.checkpoint_interval == 8192
    unbounded.close()


def test_base_runner_loops_are_left_to_backends(tmp_path):
    runner = BaseRunner(base_config(tmp_path))
    with pytest.raises(NotImplementedError, match="BaseRunner does not implement train"):
        runner.train()
    runner.close()
    assert issubclass(TorchRunner, BaseRunner)
