"""The training-step helpers: batch contract, loss normalizers, gradient windows, the optimizer container."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from danling.optim import build_scheduler
from danling.runners.step import (
    GradientWindow,
    OptimizerContainer,
    autocast_dtype,
    build_grad_scaler,
    loss_normalizer,
    split_batch,
)


def test_split_batch_rejects_mappings_without_input():
    with pytest.raises(KeyError, match="needs an 'input' key"):
        split_batch({"target": 1})
    assert split_batch("text") == ("text", None)


@pytest.mark.parametrize(
    ("batch", "criterion", "expected"),
    [
        ({"input": torch.zeros(2), "target": torch.tensor([1, -100, 3])}, nn.CrossEntropyLoss(), 2),
        ({"input": torch.zeros(2), "target": torch.tensor([1, 2, 3]), "num_tokens": 0}, nn.CrossEntropyLoss(), None),
        ({"input": torch.zeros(2), "target": {"labels": torch.zeros(2), "token_count": torch.tensor(5)}}, None, 5),
        ({"input": {"attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}}, None, 3),
        ((torch.zeros(2, 3), torch.zeros(2, 3)), nn.MSELoss(), 6),
        ((torch.zeros(2, 3), torch.zeros(2, 3)), nn.MSELoss(reduction="sum"), None),
        ((torch.zeros(2, 3), torch.zeros(2, 3)), lambda pred, target: pred.sum(), None),
        ({"input": torch.zeros(2), "num_tokens": torch.tensor([3, 4])}, None, None),  # per-sample counts are ambiguous
        ({"input": torch.zeros(2), "target": torch.full((2,), -100)}, nn.CrossEntropyLoss(), None),
    ],
)
def test_loss_normalizer(batch, criterion, expected):
    assert loss_normalizer(batch, criterion) == expected


def test_gradient_window_weights_and_uniform_mode():
    window = GradientWindow()
    window.pending = None
    assert window.loss_scale() == 1.0 and window.weighted is False
    window.pending = 7  # ignored: the window was decided uniform
    assert window.loss_scale() == 1.0
    assert window.gradient_scale(world_size=1) == 0.5
    window.reset()
    assert (window.weighted, window.total) == (None, 0.0)
    assert window.gradient_scale(world_size=1) is None


def quadratic():
    model = nn.Linear(1, 1, bias=False)
    nn.init.ones_(model.weight)
    return model, lambda x, y: (model(x) - y).pow(2).mean()


def test_container_normalizes_an_accumulated_window():
    model, loss = quadratic()
    container = OptimizerContainer(torch.optim.SGD(model.parameters(), lr=0.1))
    container.window.pending = 1
    container.backward(loss(torch.ones(1, 1), torch.zeros(1, 1)))  # gradient 2, weight 1
    container.window.pending = 3
    container.backward(loss(torch.ones(3, 1), torch.ones(3, 1)))  # gradient 0, weight 3
    assert model.weight.grad.item() == pytest.approx(2.0)  # 1 * 2 + 3 * 0 before normalisation
    assert container.step()
    assert model.weight.item() == pytest.approx(1 - 0.1 * 0.5)
    assert model.weight.grad is None


def test_container_without_normalization_leaves_gradients_alone():
    model, loss = quadratic()
    container = OptimizerContainer(torch.optim.SGD(model.parameters(), lr=0.1), normalize=False)
    container.window.pending = 10
    container.backward(loss(torch.ones(1, 1), torch.zeros(1, 1)))
    assert model.weight.grad.item() == pytest.approx(2.0)
    assert container.window.total == 0.0


def test_container_steps_a_step_interval_scheduler_only_on_applied_updates():
    model, loss = quadratic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = build_scheduler(optimizer, {"type": "linear"}, total_steps=10)
    container = OptimizerContainer(optimizer, schedule, skip_nonfinite_grad=True)
    container.backward(loss(torch.ones(1, 1), torch.zeros(1, 1)))
    assert container.step() and schedule.scheduler.last_epoch == 1
    container.backward(loss(torch.ones(1, 1), torch.zeros(1, 1)) * float("nan"))
    assert not container.step() and schedule.scheduler.last_epoch == 1
    assert not container.step_scheduler()  # a per-step scheduler is not stepped per epoch


def test_container_steps_an_epoch_scheduler_with_its_metric():
    model, _ = quadratic()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = build_scheduler(optimizer, {"type": "reduce_on_plateau", "patience": 0})
    container = OptimizerContainer(optimizer, schedule)
    calls = []

    def metric():
        calls.append(1)
        return 1.0

    assert container.step_scheduler(metric) and container.step_scheduler(metric)
    assert len(calls) == 2 and optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_discard_drops_accumulated_gradients():
    model, loss = quadratic()
    container = OptimizerContainer(torch.optim.SGD(model.parameters(), lr=0.1))
    container.backward(loss(torch.ones(1, 1), torch.zeros(1, 1)))
    container.discard()
    assert model.weight.grad is None and container.window.total == 0.0


def test_precision_helpers():
    assert autocast_dtype(" BF16 ") is torch.bfloat16
    assert build_grad_scaler(torch.device("cpu"), torch.bfloat16) is None
    assert isinstance(build_grad_scaler(torch.device("cpu"), torch.float16), torch.amp.GradScaler)
