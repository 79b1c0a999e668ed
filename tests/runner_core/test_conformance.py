"""The documented runner API, as code written against the reference documentation uses it (issue 16).

Each test names the lines of ``shared/spec/danling-docs.txt`` it follows.  Where the runner
differs on purpose, the test says so and ``packages/runner-core/README.md`` lists the difference.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import Sampler, SequentialSampler
from torchdata.stateful_dataloader.sampler import RandomSampler

from danling.metrics import AverageMeter, multiclass_metrics
from danling.runners import BaseRunner, TorchRunner

from .toy_runners import ClassifierRunner, base_config


def epoch_config(tmp_path, **overrides):
    config = base_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 8})
    config.update(overrides)
    return config


# Runner (12054-12056)


def test_runner_registry_is_importable_from_the_runner_module():
    from danling.runners.runner import RUNNER_REGISTRY

    assert RUNNER_REGISTRY["ddp"] is TorchRunner
    assert RUNNER_REGISTRY["torch"] is TorchRunner
    assert "ddp" in RUNNER_REGISTRY


# log_interval (13323, 17753-17762, 17918)


def test_log_interval_zero_is_a_valid_setting(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path, log_interval=0))
    assert runner.log_interval == 0
    runner.close()


def test_log_interval_zero_turns_progress_lines_off(tmp_path, capsys):
    runner = ClassifierRunner(epoch_config(tmp_path))
    runner.config.log_interval = 0
    runner.train()
    runner.evaluate()
    runner.close()
    out = capsys.readouterr().out
    assert "epoch [1/1]" in out
    assert "training on" not in out and "evaluating on" not in out


# save_checkpoint and its manager (4131-4149, 4168)


class DocumentedManager:
    """A checkpoint manager with only the documented methods, bound to its runner as the reference's are."""

    is_collective = False

    def __init__(self, runner):
        self.runner = runner
        self.calls: list[dict] = []
        self.saved: dict[str, dict] = {}
        self.staging_waits = 0
        self.closed = False

    def save_checkpoint(self, *, name="latest", epochs=None, save_best=True, last_step=False, force=False):
        self.calls.append(
            {"name": name, "epochs": epochs, "save_best": save_best, "last_step": last_step, "force": force}
        )
        self.saved[name] = self.runner.state_dict()

    def load_checkpoint(self, checkpoint):
        return self.saved[os.path.basename(os.fsdecode(checkpoint))]

    def maybe_wait_for_staging(self, timeout=None):
        self.staging_waits += 1
        return True

    def wait(self, timeout=None):
        return True

    def close(self, timeout=None):
        self.closed = True
        return True


class DocumentedManagerRunner(ClassifierRunner):
    def build_checkpoint_manager(self, backend):
        return DocumentedManager(self)


def test_saves_go_through_the_documented_manager_call(tmp_path):
    runner = DocumentedManagerRunner(epoch_config(tmp_path, epochs=2))
    manager = runner.checkpoint_manager
    runner.save_seed_checkpoint()
    runner.train()
    assert manager.calls == [
        {"name": "seed", "epochs": 0, "save_best": False, "last_step": True, "force": True},
        {"name": "latest", "epochs": 0, "save_best": True, "last_step": False, "force": False},  # after epoch 0
        {"name": "latest", "epochs": 2, "save_best": True, "last_step": True, "force": False},  # the final save
    ]
    assert manager.staging_waits == runner.train_state.global_step  # before every optimizer step
    weights = runner.model.weight.detach().clone()

    resumed = DocumentedManagerRunner(epoch_config(tmp_path, epochs=2))
    resumed.checkpoint_manager.saved = manager.saved
    resumed.load_checkpoint("latest")  # read through the manager's load_checkpoint
    assert torch.equal(resumed.model.weight, weights)
    assert resumed.train_state.global_step == runner.train_state.global_step
    assert runner.close() and manager.closed
    resumed.close()


def test_a_documented_manager_without_lookups_cannot_auto_resume_silently(tmp_path):
    runner = DocumentedManagerRunner(epoch_config(tmp_path))
    runner.config.auto_resume = True
    with pytest.raises(ValueError, match=r"auto_resume.*DocumentedManager"):
        runner.auto_restore()
    runner.close()


# load_checkpoint (4229-4244, 4276-4293)


class RestoreOrder(ClassifierRunner):
    def __init__(self, config, *, ema=True):
        super().__init__(config)
        self.order: list[str] = []
        if ema:
            self.ema = nn.Linear(4, 3)

    def load_state_dict(self, checkpoint):
        self.order.append("state")
        super().load_state_dict(checkpoint)

    def load_model(self, state_dict, *args, **kwargs):
        self.order.append("model")
        return super().load_model(state_dict, *args, **kwargs)

    def load_ema(self, state_dict):
        self.order.append("ema")
        super().load_ema(state_dict)

    def load_optimizer(self, state_dict):
        self.order.append("optimizer")
        super().load_optimizer(state_dict)

    def load_scheduler(self, state_dict):
        self.order.append("scheduler")
        super().load_scheduler(state_dict)

    def load_dataloaders(self, state_dict):
        self.order.append("dataloaders")
        super().load_dataloaders(state_dict)


def test_load_checkpoint_restores_through_the_hooks_in_the_documented_order(tmp_path):
    config = epoch_config(tmp_path, sched={"type": "cosine"})
    runner = RestoreOrder(config)
    payload = runner.state_dict()
    runner.load_checkpoint(payload)
    assert runner.order == ["state", "model", "ema", "optimizer", "scheduler", "dataloaders"]
    runner.close()


def test_hooks_of_absent_components_skip_cleanly(tmp_path):
    runner = RestoreOrder(epoch_config(tmp_path), ema=False)  # no EMA, no scheduler
    payload = runner.state_dict()
    assert payload["ema"] is None and payload["scheduler"] is None
    runner.load_checkpoint(payload)  # entries present but empty: their hooks run and change nothing
    assert runner.order == ["state", "model", "ema", "optimizer", "scheduler", "dataloaders"]
    runner.order.clear()
    runner.load_checkpoint({key: value for key, value in payload.items() if key not in ("ema", "scheduler")})
    assert runner.order == ["state", "model", "optimizer", "dataloaders"]
    runner.close()


def test_model_parts_restore_the_model(tmp_path):
    source = ClassifierRunner(epoch_config(tmp_path / "source"))
    payload = source.state_dict()
    payload["model_parts"] = payload.pop("model")
    target = ClassifierRunner(epoch_config(tmp_path / "target"))
    nn.init.zeros_(target.model.weight)
    target.load_checkpoint(payload)
    assert torch.equal(target.model.weight, source.model.weight)
    source.close()
    target.close()


# mode (18491-18506)


def test_assigning_the_current_mode_changes_nothing(tmp_path):
    class EvalBuilt(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model.eval()

    runner = EvalBuilt(epoch_config(tmp_path))
    assert runner.model.training  # set up in the runner's mode (train), whatever mode it was built in
    runner.model.eval()  # e.g. a user freezing normalisation statistics for this run
    runner.mode = "train"
    assert not runner.model.training
    runner.mode = "evaluate"
    runner.mode = "train"
    assert runner.model.training
    runner.close()


# scheduler_interval / scheduler_monitor (13500-13507, 16066-16067, 16121)


def test_scheduler_interval_and_monitor(tmp_path):
    cosine = ClassifierRunner(epoch_config(tmp_path / "cosine", sched={"type": "cosine"}))
    assert (cosine.scheduler_interval, cosine.scheduler_monitor) == ("step", None)
    cosine.close()
    plain = ClassifierRunner(epoch_config(tmp_path / "plain"))
    assert (plain.scheduler_interval, plain.scheduler_monitor) == ("step", None)
    plain.close()

    plateau = ClassifierRunner(epoch_config(tmp_path / "plateau", sched={"type": "reduce_on_plateau"}))
    assert (plateau.scheduler_interval, plateau.scheduler_monitor) == ("epoch", "loss")
    plateau.scheduler_monitor = "train.loss"  # an assignment is what the loop steps on
    plateau.step_epoch_scheduler({"train": {"loss": 5.0}, "val": {"loss": 1.0}})
    assert plateau.scheduler.best == 5.0
    plateau.close()

    monitored = ClassifierRunner(
        epoch_config(tmp_path / "monitored", sched={"type": "reduce_on_plateau", "monitor": "val.loss"})
    )
    assert monitored.scheduler_monitor == "val.loss"
    with pytest.raises(ValueError, match="scheduler `interval` must be one of"):
        monitored.scheduler_interval = "hourly"
    monitored.close()


# write_result, write_score, flatten_result (3619-3664)


def _meter(value):
    meter = AverageMeter()
    meter.update(value)
    return meter


NESTED_RESULT = {
    "loss": 4.0,
    "metrics": {"acc": 0.5, "per_class": [0.1, 0.2], "nested": {"loss": 2.5}},
    "vector": (1.0, 2.0),
}
FLAT_RESULT = {
    "loss": 4.0,
    "metrics/acc": 0.5,
    "metrics/per_class/0": 0.1,
    "metrics/per_class/1": 0.2,
    "metrics/nested/loss": 2.5,
    "vector/0": 1.0,
    "vector/1": 2.0,
}


class ScoreRecorder(ClassifierRunner):
    def __init__(self, config):
        super().__init__(config)
        self.written: list[tuple] = []
        self.flattened = 0

    def flatten_result(self, result):
        self.flattened += 1
        return super().flatten_result(result)

    def write_score(self, name, score, split, steps):
        self.written.append((name, score, split, steps))


def test_write_result_sends_each_flattened_scalar_through_write_score(tmp_path):
    runner = ScoreRecorder(epoch_config(tmp_path))
    assert dict(runner.flatten_result(NESTED_RESULT)) == FLAT_RESULT
    result = dict(NESTED_RESULT, loss=_meter(4.0))
    result["metrics"] = dict(result["metrics"], nested={"loss": _meter(2.5)})  # meters write their average
    runner.write_result(result, "train")  # neither TensorBoard nor W&B: nothing to flatten or write
    assert runner.flattened == 1 and runner.written == []
    runner.writer = object()  # any writer: write_score decides what to do with a score
    runner.train_state.global_step = 7
    runner.write_result(result, "train")
    assert runner.written == [(name, value, "train", 7) for name, value in FLAT_RESULT.items()]
    runner.writer = None
    runner.close()


# step_log (3565-3575, 17917-17930)


class StepLogRecorder(ClassifierRunner):
    """Overrides ``step_log`` with the documented signature."""

    def __init__(self, config):
        super().__init__(config)
        self.logged: list[tuple] = []

    def step_log(self, split, iteration, length=None, result=None):
        self.logged.append((str(self.mode), split, iteration, length))
        return super().step_log(split, iteration, length, result)


def test_step_log_override_with_the_documented_signature_in_epoch_mode_and_evaluation(tmp_path, capsys):
    runner = StepLogRecorder(epoch_config(tmp_path, log_interval=1))  # 3 training batches, 1 validation batch
    runner.train()
    # iteration: 0-based index of the batch just done; length: index of the last one
    assert runner.logged == [
        ("train", "train", 0, 2),
        ("train", "train", 1, 2),
        ("train", "train", 2, 2),
        ("evaluate", "val", 0, 0),
    ]
    out = capsys.readouterr().out
    assert "training on train [3/3]" in out and "evaluating on val [1/1]" in out  # lines count from 1
    runner.logged.clear()
    runner.evaluate()
    assert runner.logged == [("evaluate", "val", 0, 0)]
    runner.close()


def test_step_log_override_in_step_mode(tmp_path):
    config = epoch_config(tmp_path, log_interval=1)
    del config["epochs"]
    config["steps"] = 4
    runner = StepLogRecorder(config)
    runner.train()
    # a turn of 3 optimizer steps on the 3-batch split, then one of 1; iteration counts the turn's steps
    assert runner.logged == [
        ("train", "train", 0, 2),
        ("train", "train", 1, 2),
        ("train", "train", 2, 2),
        ("train", "train", 0, 0),
        ("evaluate", "val", 0, 0),
    ]
    runner.close()


# reduce, reduce_loss_for_logging, all_reduce*, destroy_process_group (16343-16349, 17060-17130, 18529-18541)


def test_collectives_without_a_process_group(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path))
    value = torch.tensor([1.0, 3.0])
    assert runner.reduce(value) is value
    assert runner.all_reduce(value) is value and torch.equal(value, torch.tensor([1.0, 3.0]))
    logged = runner.reduce_loss_for_logging(value, 5)
    assert logged.dtype == torch.float64 and logged.item() == 2.0
    assert runner.reduce_loss_for_logging(None, 5) is None
    assert runner.all_reduce_group() is None
    assert runner.all_reduce_device() == torch.device("cpu")
    runner.close()


def test_close_calls_the_overridable_destroy_process_group(tmp_path):
    class Recording(ClassifierRunner):
        destroyed = 0

        def destroy_process_group(self):
            self.destroyed += 1
            super().destroy_process_group()

    runner = Recording(epoch_config(tmp_path))
    assert runner.close()
    assert runner.destroyed == 1


# remaining public methods


def test_checkpoint_exclude_from_loading_is_the_normalised_list_and_is_overridable(tmp_path):
    runner = RestoreOrder(epoch_config(tmp_path, checkpoint={"exclude_from_loading": ["lr_scheduler", "state.train"]}))
    assert runner.checkpoint_exclude_from_loading() == (("scheduler",), ("state", "train"))
    runner.close()

    class KeepOptimizer(RestoreOrder):
        def checkpoint_exclude_from_loading(self):
            return (("optimizer",),)

    runner = KeepOptimizer(epoch_config(tmp_path / "override"))
    runner.load_checkpoint(runner.state_dict())
    assert runner.order == ["state", "model", "ema", "scheduler", "dataloaders"]
    runner.close()


class Reversed(Sampler):
    def __init__(self, size):
        self.size = size

    def __iter__(self):
        return iter(range(self.size - 1, -1, -1))

    def __len__(self):
        return self.size


def test_build_datasampler_is_the_sampler_of_the_built_loaders(tmp_path):
    runner = ClassifierRunner(epoch_config(tmp_path))
    dataset = runner.datasets.val
    assert isinstance(runner.build_datasampler(dataset, split="train", shuffle=True), RandomSampler)
    assert isinstance(runner.build_datasampler(dataset, split="val", shuffle=False), SequentialSampler)
    runner.close()

    class ReversedLoaders(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.requested = []  # loaders are built after __init__, in __post_init__

        def build_datasampler(self, dataset, *, split, shuffle):
            self.requested.append((split, shuffle))
            return Reversed(len(dataset))

    runner = ReversedLoaders(epoch_config(tmp_path / "override"))
    assert sorted(runner.requested) == [("train", True), ("val", False)]
    assert list(runner.dataloaders["val"].sampler) == list(range(7, -1, -1))
    first = next(iter(runner.dataloaders["val"]))[0]
    assert torch.equal(first, torch.stack([runner.datasets.val[i][0] for i in range(7, -1, -1)]))
    runner.close()


def test_optimizer_parameters_come_from_the_overridable_iterators(tmp_path):
    class Shared(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
            self.model[0].bias.requires_grad_(False)

    runner = Shared(epoch_config(tmp_path))
    names = [name for name, _ in runner.iter_optimizer_named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]  # frozen parameters included
    assert [id(p) for p in runner.iter_optimizer_parameters()] == [id(p) for p in runner.model.parameters()]
    runner.close()

    class WeightsOnly(Shared):
        def iter_optimizer_named_parameters(self):
            for name, parameter in super().iter_optimizer_named_parameters():
                if name.endswith("weight"):
                    yield name, parameter

    runner = WeightsOnly(epoch_config(tmp_path / "override"))
    optimized = [id(p) for group in runner.optimizer.param_groups for p in group["params"]]
    assert optimized == [id(runner.model[0].weight), id(runner.model[1].weight)]
    runner.close()


def test_loop_time_is_the_clock_of_progress_times(tmp_path):
    class Ticking(StepLogRecorder):
        def __init__(self, config):
            super().__init__(config)
            self.ticks, self.times = 0.0, []

        def loop_time(self, *, sync=False):
            self.ticks += 2.0
            return self.ticks

        def step_log(self, split, iteration, length=None, result=None):
            reported = super().step_log(split, iteration, length, result)
            self.times.append(reported["time"])
            return reported

    runner = Ticking(epoch_config(tmp_path, log_interval=1))
    runner.train()
    assert runner.times == [2.0] * 4  # one tick per reported batch
    runner.close()
    clock = TorchRunner.loop_time
    assert clock(runner) <= clock(runner, sync=True)


def test_reports_batch_telemetry_decides_whether_lines_carry_times(tmp_path):
    class Timed(StepLogRecorder):
        def __init__(self, config):
            super().__init__(config)
            self.keys = []

        def step_log(self, split, iteration, length=None, result=None):
            reported = super().step_log(split, iteration, length, result)
            self.keys.append(set(reported))
            return reported

    class Untimed(Timed):
        reports_batch_telemetry = False

    timed = Timed(epoch_config(tmp_path / "timed", log_interval=1))
    assert timed.reports_batch_telemetry is True
    timed.train()
    assert all("time" in keys for keys in timed.keys)
    timed.close()
    untimed = Untimed(epoch_config(tmp_path / "untimed", log_interval=1))
    untimed.train()
    assert untimed.keys and not any("time" in keys for keys in untimed.keys)
    untimed.close()


LOOP_STUBS = (
    "train_epochs",
    "train_epoch",
    "train_steps",
    "train_step",
    "backward",
    "step",
    "evaluate_epoch",
    "evaluate_steps",
    "evaluate_step",
    "infer_step",
)


@pytest.mark.parametrize("name", LOOP_STUBS)
def test_base_runner_loop_stubs_raise_not_implemented(tmp_path, name):
    runner = BaseRunner({"log": False, "workspace_root": str(tmp_path)})
    with pytest.raises(NotImplementedError, match=rf"BaseRunner does not implement {name}\(\)"):
        getattr(runner, name)(None)
    runner.close()


# beyond the spec: settings and hooks that would otherwise be silently ignored


def test_metrics_assigned_to_self_metrics_alone_serve_every_mode(tmp_path):
    class MetricsOnly(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.metrics = multiclass_metrics(num_classes=3, metrics=["acc"])

    runner = MetricsOnly(epoch_config(tmp_path))
    results = runner.train()
    assert "acc" in results[0]["train"] and "acc" in results[0]["val"]
    assert "acc" in runner.evaluate()["val"]
    runner.close()


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ({"compile": {"precompile_artifact_dir": "artifacts"}}, "compile.precompile_artifact_dir"),
        ({"compile": {"memory_policy": "save-all"}}, "compile.memory_policy"),
    ],
)
def test_settings_this_runner_does_not_implement_raise(tmp_path, setting, key):
    with pytest.raises(NotImplementedError, match=key):
        ClassifierRunner(epoch_config(tmp_path, **setting))


def test_patience_in_step_mode_raises(tmp_path):
    config = epoch_config(tmp_path, patience=2)
    del config["epochs"]
    config["steps"] = 4
    with pytest.raises(ValueError, match="patience=2"):
        ClassifierRunner(config)


def test_formatting_hooks_are_used_by_the_lines(tmp_path, capsys):
    class Formatted(ClassifierRunner):
        def format_result(self, result, format_spec=".4f"):
            return "<result>"

        def format_epoch_result(self, result, epochs=None, total_epochs=None):
            return f"<epoch {epochs} of {total_epochs}>"

        def get_step_result(self):
            return {"custom": 1.0}

        def step_log(self, split, iteration, length=None, result=None):
            self.reported = super().step_log(split, iteration, length, result)
            return self.reported

    runner = Formatted(epoch_config(tmp_path, log_interval=1))
    runner.train()
    out = capsys.readouterr().out
    assert "training on train [1/3]\t<result>" in out
    assert "<epoch 0 of 1>" in out
    assert runner.reported["custom"] == 1.0
    runner.close()
