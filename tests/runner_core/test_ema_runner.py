"""``config.ema``: the runner keeps an exponential moving average, evaluates with it, saves, restores and exports it."""

from __future__ import annotations

import os

import torch

from danling.runners.checkpoints import load_model_state
from tests.runner_core.toy_runners import ClassifierRunner, base_config

DECAY = 0.8


class Recording(ClassifierRunner):
    """Records the model's weight after every optimizer step, as the hand computation needs it."""

    def __init__(self, config, **kwargs) -> None:
        super().__init__(config, **kwargs)
        self.history: list[torch.Tensor] = []

    def after_optimizer_step(self) -> None:
        self.history.append(self.unwrap(self.model).weight.detach().clone())
        super().after_optimizer_step()


def ema_config(tmp_path, **overrides):
    values = dict(
        steps=20,
        optim={"type": "sgd", "lr": 0.5},
        dataloader={"batch_size": 4},
        ema={"decay": DECAY},
        checkpoint={"async_mode": "disabled", "interval": 10, "last_save_model_only": True},
    )
    values.update(overrides)
    return base_config(tmp_path, **values)


def test_ema_equals_a_hand_computed_average_and_is_exported(tmp_path):
    runner = Recording(ema_config(tmp_path), samples=48)
    initial = runner.unwrap(runner.model).weight.detach().clone()
    runner.train()
    expected = initial
    for weight in runner.history:
        expected = DECAY * expected + (1 - DECAY) * weight
    assert len(runner.history) == 20
    torch.testing.assert_close(runner.ema.module.weight, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(runner.ema.module.weight, runner.unwrap(runner.model).weight)
    # evaluation runs the average (ema.evaluate defaults to on)
    assert runner.evaluation_model is runner.ema
    export = load_model_state(os.path.join(runner.workspace.checkpoint_dir, "ema.safetensors"))
    assert torch.equal(export["weight"], runner.ema.module.weight.detach())
    runner.close()


def test_ema_off_for_evaluation_keeps_the_trained_weights(tmp_path):
    runner = ClassifierRunner(ema_config(tmp_path, ema={"decay": DECAY, "evaluate": False}))
    assert runner.evaluation_model is runner.model
    runner.close()


def test_resume_restores_the_average(tmp_path):
    uninterrupted = ClassifierRunner(ema_config(tmp_path / "full"), samples=48)
    uninterrupted.train()
    halfway = os.path.join(uninterrupted.workspace.checkpoint_dir, "ckpt-s000000000010.pth")
    resumed = ClassifierRunner(ema_config(tmp_path / "resumed", resume=halfway), samples=48)
    assert resumed.train_state.global_step == 10
    assert int(resumed.ema.n_averaged) == 10 + 1  # the copy at build time, then one update per step
    resumed.train()
    for name, value in uninterrupted.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[name], value), name
    uninterrupted.close(), resumed.close()
