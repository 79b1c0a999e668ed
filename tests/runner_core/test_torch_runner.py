"""TorchRunner: construction, the training step, accumulation, precision, evaluation, inference, dispatch."""

from __future__ import annotations

import builtins
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from danling.metrics import multiclass_metrics
from danling.runners import Runner, TorchRunner
from danling.tensors import NestedTensor

from .toy_runners import ClassifierRunner, ScalarRunner, base_config, scalar_config

B0 = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))  # gradient of the mean squared error at w=1: 2, one element
B1 = (torch.ones(3, 1), torch.ones(3, 1))  # gradient 0, three elements


class NoModel(TorchRunner):
    pass


def test_model_is_required_and_print_is_restored(tmp_path):
    original = builtins.print
    with pytest.raises(ValueError, match="cannot initialize TorchRunner: model is not initialized"):
        NoModel(base_config(tmp_path))
    assert builtins.print is original


def test_post_init_runs_once_after_the_subclass_init(tmp_path):
    calls = []

    class Counting(ClassifierRunner):
        def __post_init__(self):
            calls.append(self.model is not None)
            super().__post_init__()

    runner = Counting(base_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}))
    assert calls == [True]
    assert type(runner.dataloaders["train"]).__name__ == "StatefulDataLoader"
    assert isinstance(runner.optimizer, torch.optim.SGD)
    assert runner.config.stack == "ddp" and runner.config.checkpoint.backend == "file"
    runner.close()


def test_caller_mapping_is_not_modified(tmp_path):
    config = base_config(tmp_path, epochs=1, stack="torch")
    snapshot = repr(config)
    runner = ClassifierRunner(config)
    assert repr(config) == snapshot
    assert runner.config.stack == "ddp"
    runner.close()


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"optim": {"type": "adamx"}}, ValueError, r"Unknown optimizer: 'adamx'. Valid options are: .*adamw"),
        ({"optim": {"lr": 0.1}}, ValueError, r"optim.type is required; valid options are: .*sgd"),
        (
            {"optim": {"type": "sgd", "lr": 0.1}, "sched": {"type": "cosinus"}},
            ValueError,
            r"scheduler `type` must be one of",
        ),
        ({"precision": "fp8"}, ValueError, r"precision"),
        ({"checkpoint": {"backend": "s3"}}, ValueError, r"checkpoint.backend"),
    ],
)
def test_bad_settings_raise_clear_errors(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        ClassifierRunner(base_config(tmp_path, epochs=1, **overrides))


def test_steps_and_epochs_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="mutually exclusive"):
        ClassifierRunner(base_config(tmp_path, epochs=1, steps=3))


@pytest.mark.parametrize(
    ("criterion", "expected_weight"),
    [
        (nn.MSELoss(), 0.95),  # weighted by elements: (1 * 2 + 3 * 0) / 4 = 0.5
        (lambda pred, target: F.mse_loss(pred, target), 0.9),  # uniform: (2 + 0) / 2 = 1.0
    ],
)
def test_accumulation_weights_micro_batches_by_their_loss_normalizer(tmp_path, criterion, expected_weight):
    runner = ScalarRunner(scalar_config(tmp_path, accum_steps=2), [B0, B1], criterion)
    runner.train()
    assert runner.model.weight.item() == pytest.approx(expected_weight)
    assert (runner.train_state.global_step, runner.train_state.micro_step) == (1, 2)
    runner.close()


def test_a_partial_last_window_is_stepped_and_realigned(tmp_path):
    runner = ScalarRunner(scalar_config(tmp_path, accum_steps=2), [B0, B1, B0])
    runner.train()
    assert (runner.train_state.global_step, runner.train_state.micro_step) == (2, 4)
    # step 1: w = 1 - 0.1 * 0.5; step 2 (B0 alone, normalised by its own size): w -= 0.1 * 2w
    first = 1 - 0.1 * 0.5
    assert runner.model.weight.item() == pytest.approx(first - 0.1 * 2 * first)
    assert runner.steps == 2  # one epoch of ceil(3 / 2) optimizer steps
    runner.close()


def test_weighted_window_rejects_a_batch_without_normalizer(tmp_path):
    batches = [
        {"input": torch.ones(1, 1), "target": torch.zeros(1, 1), "num_tokens": 4},
        {"input": torch.ones(1, 1), "target": torch.zeros(1, 1)},
    ]
    runner = ScalarRunner(
        scalar_config(tmp_path, accum_steps=2), batches, lambda pred, target: F.mse_loss(pred, target)
    )
    with pytest.raises(ValueError, match="loss normalizer became unavailable"):
        runner.train()
    runner.close()


@pytest.mark.parametrize(
    ("clipping", "expected"),
    [
        ({"max_grad_value": 0.5}, 1 - 0.1 * 0.5),
        ({"max_grad_norm": 1.0}, 1 - 0.1 * 1.0),
        ({"max_grad_value": 0.5, "max_grad_norm": 0.1}, 1 - 0.1 * 0.1),
    ],
)
def test_gradient_clipping_by_value_then_norm(tmp_path, clipping, expected):
    runner = ScalarRunner(scalar_config(tmp_path, **clipping), [B0])
    runner.train()
    assert runner.model.weight.item() == pytest.approx(expected, abs=1e-5)
    runner.close()


def test_non_finite_gradients_are_skipped_when_asked(tmp_path):
    def explode(pred, target):
        return (pred * float("inf")).sum()

    runner = ScalarRunner(scalar_config(tmp_path, skip_nonfinite_grad=True, sched={"type": "constant"}), [B0], explode)
    lr_before = runner.optimizer.param_groups[0]["lr"]
    last_epoch = runner.scheduler.last_epoch
    runner.train()
    assert runner.model.weight.item() == 1.0
    assert (runner.train_state.global_step, runner.train_state.micro_step) == (0, 1)
    assert runner.model.weight.grad is None
    assert runner.scheduler.last_epoch == last_epoch and runner.optimizer.param_groups[0]["lr"] == lr_before
    runner.close()

    unguarded = ScalarRunner(scalar_config(tmp_path / "unguarded"), [B0], explode)
    unguarded.train()
    assert not math.isfinite(unguarded.model.weight.item())
    assert unguarded.train_state.global_step == 1
    unguarded.close()


def test_training_without_optimizer_fails_at_the_first_step(tmp_path):
    runner = ScalarRunner(scalar_config(tmp_path, optim=None), [B0])
    with pytest.raises(ValueError, match="no optimizer is configured"):
        runner.train()
    runner.close()


def test_bf16_autocast_on_cpu(tmp_path):
    seen = []

    class Recording(ScalarRunner):
        def train_step(self, data):
            pred, loss = super().train_step(data)
            seen.append(pred.dtype)
            return pred, loss

    runner = Recording(scalar_config(tmp_path, precision="bf16"), [B0])
    assert runner.scaler is None
    runner.train()
    assert seen == [torch.bfloat16]
    assert runner.model.weight.dtype == torch.float32
    runner.close()


def test_fp16_uses_a_grad_scaler_that_skips_overflowing_steps(tmp_path):
    def overflow(pred, target):
        return pred.float().sum() * 1e38  # finite loss, gradients overflow once scaled by 65536

    runner = ScalarRunner(scalar_config(tmp_path, precision="fp16"), [B0], overflow)
    assert isinstance(runner.scaler, torch.amp.GradScaler)
    scale = runner.scaler.get_scale()
    runner.train()
    assert runner.train_state.global_step == 0
    assert runner.model.weight.item() == 1.0
    assert runner.scaler.get_scale() == scale / 2
    assert runner.state_dict()["scaler"]["scale"] == scale / 2
    runner.close()

    small = (torch.tensor([[0.25]]), torch.tensor([[0.0]]))  # gradient 2 * 0.25 * 0.25: fits fp16 once scaled
    normal = ScalarRunner(scalar_config(tmp_path / "normal", precision="fp16"), [small])
    normal.train()
    assert normal.train_state.global_step == 1
    assert normal.model.weight.item() == pytest.approx(1 - 0.1 * 0.125, abs=1e-4)
    assert normal.scaler.get_scale() == scale
    normal.close()


@pytest.mark.parametrize(
    "batch",
    [
        {"input": torch.ones(2, 1), "target": torch.zeros(2, 1)},
        (torch.ones(2, 1), torch.zeros(2, 1)),
        [torch.ones(2, 1), torch.zeros(2, 1)],
    ],
)
def test_batches_as_mappings_and_sequences(tmp_path, batch):
    runner = ScalarRunner(scalar_config(tmp_path), [batch])
    runner.train()
    assert runner.model.weight.item() == pytest.approx(1 - 0.1 * 2)
    runner.close()


def test_bare_tensor_batches_and_mapping_inputs(tmp_path):
    class KeywordModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, values, offset):
            return values * self.scale + offset

    class Unsupervised(TorchRunner):
        def __init__(self, config, batches):
            super().__init__(config)
            from .toy_runners import ListDataset

            self.datasets.train = ListDataset(batches)
            self.model = KeywordModel()
            self.criterion = lambda pred, target: pred.pow(2).mean()

    config = scalar_config(tmp_path)
    bare = Unsupervised(config, [{"input": {"values": torch.ones(3), "offset": torch.zeros(3)}}])
    bare.train()
    assert bare.model.scale.item() == pytest.approx(1 - 0.1 * 2)
    bare.close()

    class Bare(Unsupervised):
        def __init__(self, config):
            super().__init__(config, [torch.ones(3)])
            self.model = nn.Linear(3, 1, bias=False)
            nn.init.ones_(self.model.weight)

    tensors = Bare(scalar_config(tmp_path / "bare"))
    tensors.train()
    assert torch.allclose(tensors.model.weight, torch.full((1, 3), 1 - 0.1 * 2 * 3))
    tensors.close()


def test_nested_tensor_batches_reach_the_model(tmp_path):
    received = []

    class Pooling(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, sequences):
            received.append(type(sequences))
            return self.linear(sequences.tensor.sum(dim=1))

    class SequenceRunner(TorchRunner):
        def __init__(self, config):
            super().__init__(config)
            from .toy_runners import ListDataset

            batch = {"input": NestedTensor([torch.ones(2, 2), torch.ones(3, 2)]), "target": torch.zeros(2, 1)}
            self.datasets.train = ListDataset([batch])
            self.model = Pooling()
            self.criterion = nn.MSELoss()

    runner = SequenceRunner(scalar_config(tmp_path))
    runner.train()
    assert received == [NestedTensor]
    assert runner.train_state.global_step == 1
    runner.close()


def test_parameter_groups_from_config(tmp_path):
    class TwoPart(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = nn.Sequential()
            self.model.add_module("encoder", nn.Linear(4, 4))
            self.model.add_module("head", nn.Linear(4, 3))

    optim = {
        "type": "adamw",
        "lr": 0.01,
        "weight_decay": 0.1,
        "param_groups": [{"pattern": r"bias$", "weight_decay": 0.0}, {"pattern": r"^head", "lr_multiplier": 10}],
    }
    runner = TwoPart(base_config(tmp_path, epochs=1, optim=optim))
    groups = runner.optimizer.param_groups
    assert [len(group["params"]) for group in groups] == [2, 1, 1]
    assert (groups[0]["weight_decay"], groups[1]["lr"], groups[2]["lr"]) == (0.0, pytest.approx(0.1), 0.01)
    assert groups[1]["params"][0] is runner.model.head.weight
    runner.close()


def test_scheduler_length_defaults_to_the_run_and_steps_per_update(tmp_path):
    config = base_config(
        tmp_path, epochs=3, optim={"type": "sgd", "lr": 0.1}, sched={"type": "linear"}, dataloader={"batch_size": 8}
    )
    runner = ClassifierRunner(config)
    assert runner.steps == 9 and runner.scheduler.total_steps == 9
    runner.train()
    assert runner.scheduler.last_epoch == 9
    runner.close()


def test_metric_scheduler_steps_on_the_monitored_validation_metric(tmp_path):
    sched = {"type": "reduce_on_plateau", "monitor": "val.loss", "patience": 0, "factor": 0.5}
    config = base_config(
        tmp_path, epochs=3, optim={"type": "sgd", "lr": 1e-6}, sched=sched, dataloader={"batch_size": 8}
    )
    runner = ClassifierRunner(config)
    assert runner.schedule.interval == "epoch"
    runner.train()  # a tiny rate: the validation loss does not improve, so each later epoch halves it
    assert runner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-6 * 0.25)
    assert runner.scheduler.best == pytest.approx(runner.results[0]["val"]["loss"])
    runner.close()


def test_metric_scheduler_cannot_step_per_update(tmp_path):
    sched = {"type": "reduce_on_plateau", "interval": "step"}
    with pytest.raises(ValueError, match="metric schedulers step once per epoch"):
        ClassifierRunner(base_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}, sched=sched))


def test_mode_switches_train_and_eval_and_ema_is_used_for_evaluation(tmp_path):
    class WithEma(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.ema = nn.Linear(4, 3)
            nn.init.zeros_(self.ema.weight)
            nn.init.constant_(self.ema.bias, 1.0)

    runner = WithEma(base_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 4}))
    runner.mode = "evaluate"
    assert not runner.model.training and not runner.ema.training
    runner.mode = "train"
    assert runner.model.training
    runner.dataloaders["infer"] = runner.dataloaders["val"]
    predictions = runner.infer("infer")
    assert predictions == [[1.0, 1.0, 1.0]] * 8  # the EMA's constant output, not the model's
    assert runner.state_dict()["ema"] is not None
    runner.close()


def test_evaluate_returns_results_without_recording_them(tmp_path):
    runner = ClassifierRunner(base_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}))
    runner.evaluate_metrics = multiclass_metrics(num_classes=3, metrics=["acc"])
    result = runner.evaluate()
    assert set(result) == {"val"} and set(result["val"]) == {"loss", "acc"}
    inputs, labels = runner.datasets.val.tensors
    with torch.no_grad():
        predictions = runner.model(inputs).argmax(-1)
    correct = int((predictions == labels).sum())
    assert 0 < correct < len(labels)  # an accuracy of 0 or 1 would not tell a wrong count from a right one
    assert result["val"]["acc"] == pytest.approx(correct / len(labels), abs=1e-6)
    assert not runner.results
    with pytest.raises(ValueError, match=r"unknown evaluation split\(s\): \['test'\]"):
        runner.evaluate(["test"])
    runner.close()


def test_infer_lists_and_streams_predictions(tmp_path):
    class Doubler(TorchRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = nn.Linear(1, 1)
            nn.init.constant_(self.model.weight, 2.0)
            nn.init.zeros_(self.model.bias)
            self.dataloaders["infer"] = [torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0]])]

    runner = Doubler(base_config(tmp_path))
    assert runner.infer("infer") == [2.0, 4.0, 6.0]
    assert list(runner.infer("infer", stream=True)) == [[2.0, 4.0], [6.0]]
    assert runner.infer("infer", steps=1) == [2.0, 4.0]
    runner.dataloaders["stream"] = (batch for batch in [torch.tensor([[1.0]])])
    streamed = runner.infer("stream")
    assert not isinstance(streamed, list) and list(streamed) == [[2.0]]
    runner.dataloaders["stream"] = (batch for batch in [torch.tensor([[1.0]])])
    with pytest.raises(ValueError, match="infer with stream=False requires `steps` for unsized loaders"):
        runner.infer("stream", stream=False)
    with pytest.raises(ValueError, match="invalid steps: expected a non-negative value, got -1"):
        runner.infer("infer", steps=-1)
    runner.close()


@pytest.mark.parametrize("stack", ["auto", "ddp", "torch", None])
def test_runner_builds_a_torch_runner_through_the_entry_point(tmp_path, stack):
    class Tiny(Runner):
        def __init__(self, config):
            super().__init__(config)
            self.model = nn.Linear(2, 1)

    config = base_config(tmp_path)
    if stack is not None:
        config["stack"] = stack
    runner = Tiny(config)
    assert isinstance(runner, TorchRunner) and isinstance(runner, Tiny)
    assert runner.config.stack == "ddp"
    runner.close()


def test_plain_runner_returns_the_concrete_class_and_rejects_unknown_stacks(tmp_path):
    class Concrete(ClassifierRunner):
        pass

    with pytest.raises(ValueError, match="cannot initialize TorchRunner"):
        Runner(base_config(tmp_path, stack="torch"))  # the concrete TorchRunner has no model
    assert Runner.resolve_runner_class({"stack": "TORCH"}) is TorchRunner
    with pytest.raises(ValueError, match="Unknown stack: 'unknown_stack'"):
        Runner.resolve_runner_class({"stack": "unknown-stack"})
    runner = Concrete(base_config(tmp_path))
    assert type(runner) is Concrete
    runner.close()


def test_train_metrics_are_reported_per_epoch(tmp_path):
    from danling.metrics import multiclass_metrics

    runner = ClassifierRunner(
        base_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 8})
    )
    runner.train_metrics = multiclass_metrics(num_classes=3, metrics=["acc"])
    runner.train()
    assert set(runner.results[0]["train"]) == {"loss", "lr", "acc"}
    assert runner.metrics is runner.evaluate_metrics  # the loops switch containers; evaluation ran last
    runner.close()


def test_compiled_model_checkpoints_with_plain_names(tmp_path):
    config = base_config(
        tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}, compile={"enable": True, "backend": "eager"}
    )
    runner = ClassifierRunner(config)
    assert hasattr(runner.model, "_orig_mod") and runner.unwrap(runner.model) is runner.model._orig_mod
    runner.train()
    assert sorted(runner.state_dict()["model"]) == ["bias", "weight"]
    runner.close()


def test_deterministic_mode_asks_torch_for_deterministic_kernels(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        runner = ClassifierRunner(base_config(tmp_path, epochs=1, deterministic=True))
        assert torch.are_deterministic_algorithms_enabled()
        runner.close()
    finally:
        torch.use_deterministic_algorithms(before)


def test_wandb_receives_the_run_identity_and_scalars(tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    class FakeRun:
        def define_metric(self, name, **options):
            pass

        def log(self, values):
            calls.append(("log", values))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = base_config(
        tmp_path, epochs=1, lineage="lin-a", wandb={"enabled": True, "tags": "debug"}, optim={"type": "sgd", "lr": 0.1}
    )
    runner = ClassifierRunner(config)
    runner.write_result({"loss": 1.0, "metrics": {"top": [0.8, 0.9]}}, "train", steps=5)
    runner.close()
    init = calls[0][1]
    assert (init["project"], init["group"], init["name"], init["tags"]) == ("lin-a", "exp", runner.id, ["debug"])
    assert init["dir"] == runner.workspace.dir and init["config"]["lineage"] == "lin-a"
    logged = {"train/step": 5, "train/loss": 1.0, "train/metrics/top/0": 0.8, "train/metrics/top/1": 0.9}
    assert calls[1] == ("log", logged)
    assert calls[-1] == ("finish",)


def test_a_model_built_in_eval_mode_still_trains_in_train_mode(tmp_path):
    modes = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, inputs):
            modes.append(self.training)
            return self.linear(inputs)

    class EvalBuilt(ClassifierRunner):
        def __init__(self, config):
            super().__init__(config)
            self.model = Probe().eval()

    runner = EvalBuilt(base_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 8}))
    runner.train()
    assert modes == [True, True, True, False]  # three training batches, then one validation batch
    runner.close()


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_training_steps_never_wait_for_the_device(tmp_path):
    from danling.runners.loops import _train_batch, _training_meters

    runner = ClassifierRunner(
        base_config(tmp_path, epochs=1, optim={"type": "adamw", "lr": 0.01}, dataloader={"batch_size": 8})
    )
    assert runner.device.type == "cuda" and next(runner.model.parameters()).is_cuda
    batches = list(runner.dataloaders["train"])
    meters = _training_meters(runner)
    _train_batch(runner, batches[0], meters, runner.weighs_micro_batches)  # warm up lazy CUDA state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            _train_batch(runner, batch, meters, runner.weighs_micro_batches)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert runner.train_state.global_step == len(batches)
    assert runner.meters["loss"].count == len(batches)  # read back only now
    runner.close()


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains(tmp_path, precision):
    config = base_config(
        tmp_path, epochs=3, precision=precision, optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 8}
    )
    runner = ClassifierRunner(config)
    before = runner.model.weight.detach().clone()
    runner.train()
    assert (runner.scaler is not None) == (precision == "fp16")
    assert runner.train_state.global_step >= 1 and not torch.equal(before, runner.model.weight)
    assert math.isfinite(runner.results[2]["val"]["loss"])
    runner.close()
