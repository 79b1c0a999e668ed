"""``danling.runners.parallelize``: activation checkpointing on bare modules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from danling.runners.parallelize import apply_activation_checkpointing


def blocks() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]))


def run(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    for block in model[0]:
        inputs = torch.tanh(block(inputs))
    return inputs


@pytest.mark.parametrize("policy", [True, 2, {"mode": "op"}])
def test_checkpointed_blocks_give_the_same_values_and_gradients(policy):
    plain, checkpointed = blocks(), apply_activation_checkpointing(blocks(), policy)
    inputs = torch.randn(3, 4)
    run(plain, inputs).sum().backward()
    run(checkpointed, inputs).sum().backward()
    assert list(dict(checkpointed.state_dict())) == list(dict(plain.state_dict()))  # names unchanged
    for expected, actual in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(actual.grad, expected.grad)


def test_a_deep_copy_runs_its_own_weights():
    """An EMA deep-copies the model after checkpointing: the copy must compute with the copy's weights."""
    model = apply_activation_checkpointing(blocks(), True)
    average = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in average.parameters():
            parameter.zero_()
    inputs = torch.randn(2, 4)
    assert torch.equal(run(average, inputs), torch.zeros(2, 4))
    assert not torch.equal(run(model, inputs), torch.zeros(2, 4))
