"""EMA through ``AveragedModel``: values against a hand-computed average, and a checkpoint round trip on disk."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from danling.runners.ema import EmaConfig, build_ema, update_ema


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))


@torch.no_grad()
def _train_step(model: nn.Module) -> None:
    """Stand-in for an optimizer step: batch-norm statistics move with a forward, parameters with noise."""
    model.train()
    model(torch.randn(8, 3))
    for parameter in model.parameters():
        parameter.add_(0.1 * torch.randn_like(parameter))


@pytest.mark.parametrize(("decay", "warmup_steps", "interval"), [(0.9, 0, 1), (0.8, 3, 2)])
def test_ema_equals_a_hand_computed_exponential_average(decay, warmup_steps, interval):
    model = _model()
    ema = build_ema(model, EmaConfig(decay=decay, warmup_steps=warmup_steps, interval=interval))
    expected = {name: value.detach().double().clone() for name, value in model.state_dict().items()}
    updates = 0
    for step in range(1, 21):
        _train_step(model)
        weights = model.state_dict()
        if step <= warmup_steps:
            expected = {name: value.detach().double().clone() for name, value in weights.items()}
        elif step % interval == 0:
            updates += 1
            for name, value in weights.items():
                if value.is_floating_point():
                    expected[name] = decay * expected[name] + (1 - decay) * value.double()
                else:
                    expected[name] = value.double().clone()
        assert update_ema(ema, model, step) == (step <= warmup_steps or step % interval == 0)
    averaged = ema.module.state_dict()
    assert set(averaged) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(averaged[name].double(), value, rtol=1e-5, atol=1e-6), name
    assert ema.n_averaged.item() == 1 + updates
    assert averaged["1.num_batches_tracked"].item() == 20  # integer buffers are copied, not averaged
    assert not any(parameter.requires_grad for parameter in ema.parameters())
    # the average really differs from the trained weights
    assert not torch.allclose(averaged["0.weight"], model.state_dict()["0.weight"])


def test_ema_state_round_trips_through_a_file(tmp_path):
    model = _model()
    config = EmaConfig(decay=0.7)
    ema = build_ema(model, config)
    for step in range(1, 6):
        _train_step(model)
        update_ema(ema, model, step)
    torch.save({"ema": ema.state_dict(), "model": model.state_dict()}, tmp_path / "checkpoint.pth")

    checkpoint = torch.load(tmp_path / "checkpoint.pth")
    restored_model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    restored_model.load_state_dict(checkpoint["model"])
    restored = build_ema(restored_model, config)
    restored.load_state_dict(checkpoint["ema"])
    for name, value in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    # both continue identically
    for step in range(6, 9):
        torch.manual_seed(step)
        _train_step(model)
        torch.manual_seed(step)
        _train_step(restored_model)
        update_ema(ema, model, step)
        update_ema(restored, restored_model, step)
    for name, value in ema.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name


def test_ema_lives_on_the_configured_device_and_takes_a_mapping():
    model = nn.Linear(2, 2).double()
    ema = build_ema(model, {"device": "cpu", "decay": 0.5})
    assert ema.module.weight.device.type == "cpu" and ema.module.weight.dtype == torch.float64
    assert ema.module.weight is not model.weight and torch.equal(ema.module.weight, model.weight)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"decay": 1.5}, r"ema\.decay must be a number in \[0, 1\], got 1\.5"),
        ({"warmup_steps": -1}, r"ema\.warmup_steps must be an integer >= 0, got -1"),
        ({"interval": 0}, r"ema\.interval must be an integer >= 1, got 0"),
        ({"device": "toaster"}, r"ema\.device must be a torch device such as 'cpu' or 'cuda:0', got 'toaster'"),
    ],
)
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        EmaConfig(**settings)
    with pytest.raises(TypeError, match=r"'decay' has invalid type\. Value 'high'"):  # chanfig checks the type first
        EmaConfig(decay="high")


def test_a_wrapped_model_is_refused():
    class FakeDDP(nn.parallel.DistributedDataParallel):  # the check is on the type; no process group needed
        def __init__(self, module):
            nn.Module.__init__(self)
            self.module = module

    with pytest.raises(TypeError, match=r"pass model\.module"):
        build_ema(FakeDDP(nn.Linear(1, 1)), EmaConfig())
