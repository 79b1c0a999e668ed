"""Settings and hooks that used to be accepted and then ignored (issue 16, "silent no-ops").

- ``compile.optimize_ddp`` (12467-12469) reaches ``torch._dynamo.config`` when the model is compiled
  (how it changes a DDP model's graphs is shown on two gloo ranks in
  ``distributed/test_conformance_distributed.py``);
- ``reduce_loss_for_logging`` (17112) is what the progress lines report the loss through, at the
  logging points only;
- the ``ddp`` stack refuses ``fsdp``, ``parallel.axes`` and ``deepspeed`` settings, which only the
  ``parallel`` and ``deepspeed`` stacks read.
"""

from __future__ import annotations

import re

import pytest
import torch

from danling.runners import RunnerConfig

from .toy_runners import ClassifierRunner, base_config


@pytest.fixture
def dynamo_optimize_ddp(monkeypatch):
    """Restore dynamo's process-wide ``optimize_ddp`` after the test."""
    monkeypatch.setattr(torch._dynamo.config, "optimize_ddp", torch._dynamo.config.optimize_ddp)


def _compiled_config(tmp_path, **compile_settings):
    return base_config(tmp_path, epochs=1, compile={"enable": True, "backend": "eager", **compile_settings})


def test_compile_optimize_ddp_is_set_for_dynamo_when_the_model_is_compiled(tmp_path, dynamo_optimize_ddp):
    torch._dynamo.config.optimize_ddp = "ddp_optimizer"
    runner = ClassifierRunner(_compiled_config(tmp_path / "set", optimize_ddp="no_optimization"))
    assert torch._dynamo.config.optimize_ddp == "no_optimization"
    runner.close()
    torch._dynamo.config.optimize_ddp = "ddp_optimizer"
    runner = ClassifierRunner(_compiled_config(tmp_path / "unset", optimize_ddp=None))
    assert torch._dynamo.config.optimize_ddp == "ddp_optimizer"  # None leaves torch's setting
    runner.close()
    runner = ClassifierRunner(base_config(tmp_path / "eager", epochs=1, compile={"optimize_ddp": "no_optimization"}))
    assert torch._dynamo.config.optimize_ddp == "ddp_optimizer"  # nothing compiled, nothing set
    runner.close()


def test_an_unknown_optimize_ddp_mode_is_refused_by_name():
    with pytest.raises(ValueError, match=r"Unknown compile.optimize_ddp: 'sideways'\. Valid options are: ddp_opt"):
        RunnerConfig(compile={"optimize_ddp": "sideways"})


class LoggedLoss(ClassifierRunner):
    """Records every ``reduce_loss_for_logging`` call and marks what it returns (``+ 1000``)."""

    def __init__(self, config):
        super().__init__(config)
        self.calls: list[tuple[float | None, int | None, int]] = []
        self.reported: list[dict] = []

    def reduce_loss_for_logging(self, loss, loss_n):
        self.calls.append((None if loss is None else loss.item(), loss_n, self.train_state.global_step))
        reduced = super().reduce_loss_for_logging(loss, loss_n)
        return None if reduced is None else reduced + 1000

    def step_log(self, split, iteration, length=None, result=None):
        reported = super().step_log(split, iteration, length, result)
        self.reported.append({**reported, "step": self.train_state.global_step})
        return reported


def test_progress_lines_report_the_loss_through_reduce_loss_for_logging(tmp_path):
    config = base_config(
        tmp_path, steps=12, log_interval=4, optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 4}
    )
    runner = LoggedLoss(config)
    runner.train()
    runner.close()
    # one call per progress line (every 4th step and the end of a pass, then evaluation), never per step
    assert [step for *_, step in runner.calls] == [line["step"] for line in runner.reported]
    assert 0 < len(runner.calls) < 12
    for (loss, loss_n, _), reported in zip(runner.calls, runner.reported):
        assert isinstance(loss_n, int) and loss_n >= 1  # the weight the loss meter holds
        assert reported["loss"] == pytest.approx(loss + 1000)  # the line shows what the hook returned


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"fsdp": {"enabled": True}}, "fsdp.enabled=True is read by the 'parallel' stack only"),
        ({"parallel": {"axes": {"tensor": 2}}}, "parallel.axes.tensor=2 is read by the 'parallel' stack only"),
        ({"deepspeed": {"zero_optimization": {"stage": 2}}}, "deepspeed=['zero_optimization'] is read by the 'deep"),
    ],
)
def test_the_ddp_stack_refuses_settings_only_another_stack_reads(tmp_path, settings, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        ClassifierRunner(base_config(tmp_path, epochs=1, **settings))


def test_the_ddp_stack_still_takes_data_replication_and_disabled_fsdp(tmp_path):
    settings = {"parallel": {"axes": {"replicate": 1}}, "fsdp": {"enabled": False}}
    ClassifierRunner(base_config(tmp_path, epochs=1, **settings)).close()
