"""DeepSpeedRunner in one process: real DeepSpeed engines (CPU accelerator) on a one-rank gloo group."""

from __future__ import annotations

import os

import pytest
import torch

import danling
from danling.runners import DeepSpeedRunner, Runner, TorchRunner
from danling.runners.deepspeed_runner import DeepSpeedCheckpointManager, DeepSpeedConfigError, DeepSpeedStepContainer
from tests.runner_deepspeed.toy_runners import Classify, StopsInThirdEpoch, config, module_state, zero


@pytest.fixture
def runners(deepspeed_ready):
    """Close every runner a test builds (each owns its one-rank process group)."""
    built: list = []
    yield built
    for runner in built:
        runner.close()


def test_the_deepspeed_stack_is_registered(tmp_path, runners):
    runner = Classify(config(tmp_path, stack="ds"))
    runners.append(runner)
    assert isinstance(runner, DeepSpeedRunner)
    assert type(runner.model).__name__ == "DeepSpeedEngine" and runner.unwrap(runner.model) is runner.model.module
    assert isinstance(runner.optimizer_container, DeepSpeedStepContainer)
    assert isinstance(runner.checkpoint_manager, DeepSpeedCheckpointManager)
    assert runner.config.stack == "deepspeed" and runner.config.checkpoint.backend == "deepspeed"
    assert runner.deepspeed_config["train_batch_size"] == 4 and runner.deepspeed_config["gradient_clipping"] == 0.0


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_one_process_trains_as_torch_runner_does(tmp_path, runners, stage):
    """fp32, two accumulated micro-batches of different weights per step: the same weights as TorchRunner."""
    settings = {"accum_steps": 2, "max_grad_norm": 0.5, "deepspeed": zero(stage)}
    deepspeed = Classify(config(tmp_path / "ds", **settings))
    runners.append(deepspeed)
    reference = Classify(config(tmp_path / "torch", stack="ddp", **settings))
    runners.append(reference)
    results = deepspeed.train()
    reference.train()
    losses = [results[epoch]["train"]["loss"] for epoch in range(3)]
    assert losses[-1] < losses[0]
    assert deepspeed.train_state.global_step == reference.train_state.global_step == 24
    expected = module_state(reference)
    for name, value in module_state(deepspeed).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert results[2]["train"]["skipped"] == 0.0
    # DeepSpeed computes the norm under ZeRO; stage 0 in fp32 runs the torch optimizer alone
    assert ("grad_norm" in results[2]["train"]) == (stage > 0)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_bf16_training_lowers_the_loss(tmp_path, runners, stage):
    runner = Classify(config(tmp_path, precision="bf16", deepspeed=zero(stage)))
    runners.append(runner)
    results = runner.train()
    assert next(runner.unwrap(runner.model).parameters()).dtype == torch.bfloat16
    assert results[2]["train"]["loss"] < results[0]["train"]["loss"]


def test_export_loads_as_pretrained_into_a_torch_runner(tmp_path, runners):
    runner = Classify(config(tmp_path / "ds", deepspeed=zero(3)))
    runners.append(runner)
    runner.train()
    loss = runner.evaluate()["val"]["loss"]
    export = os.path.join(runner.workspace.checkpoint_dir, "model.safetensors")
    plain = Classify(config(tmp_path / "torch", stack="ddp", pretrained=export))
    runners.append(plain)
    assert type(plain).__mro__[3] is TorchRunner and not isinstance(plain, DeepSpeedRunner)
    assert plain.evaluate()["val"]["loss"] == pytest.approx(loss, rel=1e-6)


def test_interrupted_run_resumes_from_latest_and_from_checkpoint_restores(tmp_path, runners):
    """With an EMA of the weights (saved in the client state) and shuffled batches (RNG and sampler state)."""
    settings = {"ema": {"decay": 0.9}, "dataloader": {"batch_size": 4, "shuffle": True}}
    stopped = StopsInThirdEpoch(config(tmp_path / "resumed", **settings))
    runners.append(stopped)
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    stopped.close()
    resumed = Classify(config(tmp_path / "resumed", auto_resume=True, **settings))
    runners.append(resumed)
    assert (
        resumed.train_state.epoch == 2 and resumed.train_state.global_step == 32 and resumed.config.resume == "latest"
    )
    resumed.train()
    control = Classify(config(tmp_path / "control", **settings))
    runners.append(control)
    control.train()
    expected, expected_ema = module_state(control), control.ema.state_dict()
    for name, value in module_state(resumed).items():
        assert torch.equal(value, expected[name]), name
    for name, value in resumed.ema.state_dict().items():
        assert torch.equal(value, expected_ema[name]), name
    restored = Classify.from_checkpoint(resumed.workspace.checkpoint_dir)
    runners.append(restored)
    assert isinstance(restored, DeepSpeedRunner) and restored.train_state.global_step == 48
    assert restored.config.deepspeed.zero_optimization.stage == 2
    for name, value in module_state(restored).items():
        assert torch.equal(value, expected[name]), name


def test_pretrained_from_a_deepspeed_checkpoint_loads_the_module_only(tmp_path, runners):
    trained = Classify(config(tmp_path / "trained", epochs=1))
    runners.append(trained)
    trained.train()
    source = os.path.join(trained.workspace.checkpoint_dir, "latest.pointer")
    tuned = Classify(config(tmp_path / "tuned", epochs=1, pretrained=source))
    runners.append(tuned)
    expected = module_state(trained)
    for name, value in module_state(tuned).items():
        assert torch.equal(value, expected[name]), name
    assert tuned.train_state.global_step == 0 and not tuned.optimizer.state_dict()["base_optimizer_state"]["state"]
    tuned.train()  # the fp32 master weights were refreshed: the first step starts from the loaded weights


def test_compile_enable_compiles_the_engine(tmp_path, runners):
    """``compile.enable`` goes to ``engine.compile`` (the eager backend: dynamo's capture, no code generation)."""
    compiled = Classify(config(tmp_path / "compiled", epochs=1, compile={"enable": True, "backend": "eager"}))
    plain = Classify(config(tmp_path / "plain", epochs=1))
    runners.extend([compiled, plain])
    compiled.train()
    plain.train()
    assert compiled.model.is_compiled and not plain.model.is_compiled
    expected = module_state(plain)
    for name, value in module_state(compiled).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7, msg=name)


def test_evaluation_and_inference_need_no_optimizer(tmp_path, runners):
    runner = Classify(config(tmp_path, optim={}, deepspeed={"zero_optimization": {"stage": 0}}))
    runners.append(runner)
    assert runner.optimizer_container is None and runner.model.optimizer is None
    assert runner.evaluate()["val"]["loss"] > 0
    predictions = runner.infer("val")
    assert len(predictions) == 32 and all(len(scores) == 3 for scores in predictions)
    with pytest.raises(RuntimeError, match=r"use engine.backward\(loss\)"):  # DeepSpeed refuses a bare backward
        runner.train()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"precision": "fp16"}, r"precision='fp16' \(deepspeed.fp16\) is not supported by DeepSpeed on the CPU"),
        ({"max_grad_value": 1.0}, r"max_grad_value=1.0 is not supported by DeepSpeedRunner"),
        ({"skip_nonfinite_grad": True}, r"skip_nonfinite_grad=True is not supported .* in full precision"),
        ({"deepspeed": {"zero_optimization": {"stage": 5}}}, r"zero_optimization.stage=5 is invalid"),
        ({"checkpoint": {"backend": "file"}}, r"checkpoint.backend must be 'deepspeed' \(or 'auto'\), got 'file'"),
        ({"ema": {"decay": 0.9}, "deepspeed": zero(3)}, r"an EMA .* needs whole parameters .* ZeRO stage 3"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, deepspeed_ready, overrides, message):
    with pytest.raises((DeepSpeedConfigError, ValueError), match=message):
        Classify(config(tmp_path, **overrides))


def test_the_runner_is_found_by_stack_name_and_in_the_umbrella():
    assert Runner.resolve_runner_class({"stack": "deepspeed"}) is DeepSpeedRunner
    if getattr(danling, "__file__", None) is None:  # a bare namespace: the umbrella distribution is not installed
        assert not hasattr(danling, "DeepSpeedRunner")
    else:
        assert danling.DeepSpeedRunner is DeepSpeedRunner
