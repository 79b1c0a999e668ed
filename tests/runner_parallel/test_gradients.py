"""Gradient norms and the parallel optimizer container on plain tensors (one process)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.runners.parallel_runner.gradients import (
    ParallelOptimizerContainer,
    build_sharded_grad_scaler,
    clip_grad_norm_,
    total_norm,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@given(
    st.lists(st.lists(finite, min_size=1, max_size=5), min_size=1, max_size=4),
    st.sampled_from([1.0, 2.0, 3.0, math.inf]),
)
def test_total_norm_matches_torch(values, norm_type):
    grads = [torch.tensor(v) for v in values]
    expected = torch.nn.utils.get_total_norm(grads, norm_type)
    assert torch.allclose(total_norm(grads, norm_type), expected, rtol=1e-5, atol=1e-5)


def test_total_norm_of_nothing_is_zero():
    assert total_norm([]).item() == 0.0


def test_clip_matches_torch():
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    for model in (ours, theirs):
        model(torch.randn(5, 4)).pow(2).sum().backward() if model is ours else None
    for mine, other in zip(ours.parameters(), theirs.parameters()):
        other.grad = mine.grad.clone()
    norm = clip_grad_norm_(ours.parameters(), 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
    assert torch.allclose(norm, expected)
    for mine, other in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(mine.grad, other.grad)


def _container(**kwargs):
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    return model, ParallelOptimizerContainer(torch.optim.SGD(model.parameters(), lr=1.0), normalize=False, **kwargs)


def test_container_clips_by_norm_and_value():
    model, container = _container(max_grad_norm=1.0)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert container.step()
    assert torch.allclose(model.weight, torch.tensor([[1 - 0.6, 1 - 0.8]]), atol=1e-5)
    model, container = _container(max_grad_value=0.5)
    model.weight.grad = torch.tensor([[3.0, -0.25]])
    assert container.step()
    assert torch.allclose(model.weight, torch.tensor([[0.5, 1.25]]))


@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_container_skips_non_finite(max_grad_norm):
    model, container = _container(skip_nonfinite_grad=True, max_grad_norm=max_grad_norm)
    model.weight.grad = torch.tensor([[float("nan"), 1.0]])
    assert not container.step()
    assert torch.equal(model.weight, torch.ones(1, 2)) and model.weight.grad is None


def test_scaler_only_for_fp16_and_plain_without_a_process_group():
    assert build_sharded_grad_scaler(torch.device("cpu"), torch.bfloat16) is None
    assert type(build_sharded_grad_scaler(torch.device("cpu"), torch.float16)) is torch.amp.GradScaler
