"""The mixture-of-experts layer in one process against a token-by-token loop, and ``apply_ep``'s checks.

Spreading the experts over several ranks is in ``distributed/test_cp_ep.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from danling.runners.parallel_runner.expert_parallel import MixtureOfExperts, apply_ep


class StandInMesh:
    """What ``apply_ep`` checks before it touches any weight."""

    def __init__(self, size=2, ndim=1):
        self._size, self.ndim, self.mesh_dim_names = size, ndim, ("expert",) * ndim

    def size(self):
        return self._size


def _token_by_token(layer, x):
    """Each token through its chosen experts one at a time: the definition the layer batches."""
    tokens = x.reshape(-1, x.shape[-1])
    outputs = []
    for token in tokens:
        probabilities = torch.softmax(layer.router(token), dim=-1)
        weights, experts = probabilities.topk(layer.top_k)
        output = torch.zeros(x.shape[-1])
        for weight, expert in zip(weights, experts):
            output = output + weight * (F.gelu(token @ layer.w1[expert]) @ layer.w2[expert])
        outputs.append(output)
    return torch.stack(outputs).view(x.shape)


@pytest.mark.parametrize(("experts", "top_k"), [(2, 1), (2, 2), (4, 2)])
def test_layer_equals_token_by_token(experts, top_k):
    torch.manual_seed(0)
    layer = MixtureOfExperts(dim=6, hidden_dim=10, num_experts=experts, top_k=top_k)
    x = torch.randn(3, 5, 6, requires_grad=True)
    out = layer(x)
    expected = _token_by_token(layer, x)
    assert torch.allclose(out, expected, atol=1e-6)
    parameters = [x, *layer.parameters()]
    grads = torch.autograd.grad(out.pow(2).sum(), parameters)
    expected_grads = torch.autograd.grad(expected.pow(2).sum(), parameters)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, expected_grads))


def test_every_expert_gets_tokens_and_the_router_learns():
    torch.manual_seed(0)
    layer = MixtureOfExperts(dim=6, hidden_dim=10, num_experts=2, top_k=1)
    tokens = torch.randn(64, 6)
    chosen = torch.softmax(layer.router(tokens), dim=-1).argmax(dim=-1)
    assert set(chosen.tolist()) == {0, 1}
    layer(tokens).sum().backward()
    assert layer.router.weight.grad.abs().sum() > 0


def test_top_k_is_checked():
    with pytest.raises(ValueError, match=r"top_k must be in \[1, num_experts=2\], got 3"):
        MixtureOfExperts(dim=4, hidden_dim=8, num_experts=2, top_k=3)


def test_apply_ep_errors_and_one_rank():
    model = nn.Sequential(nn.Linear(4, 4), MixtureOfExperts(4, 8, num_experts=2))
    with pytest.raises(ValueError, match=r"2 experts cannot be spread evenly over parallel\.axes\.expert=4"):
        apply_ep(model, StandInMesh(size=4))
    with pytest.raises(ValueError, match="Sequential has no MixtureOfExperts layer"):
        apply_ep(nn.Sequential(nn.Linear(4, 4)), StandInMesh())
    with pytest.raises(ValueError, match="needs the 1-D expert mesh, got a 2-D mesh"):
        apply_ep(model, StandInMesh(ndim=2))
    weight = model[1].w1
    assert apply_ep(model, StandInMesh(size=1)) is model
    assert model[1].w1 is weight and model[1].expert_mesh is None  # one rank: nothing to change
