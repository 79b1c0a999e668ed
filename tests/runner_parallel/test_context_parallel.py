"""Context parallelism without a process group: sequence slices, one-rank ring attention, where ``apply_cp`` hooks.

A stand-in mesh (its group ``None``: a ring of one rank) lets ``apply_cp`` run in one process;
the attention calls it redirects are counted.  Several ranks are in ``distributed/test_cp_ep.py``.
"""

from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from danling.runners.parallel_runner import context_parallel
from danling.runners.parallel_runner.context_parallel import apply_cp, ring_attention, split_sequence
from danling.runners.parallel_runner.transformer import Transformer


class StandInMesh:
    """What ``apply_cp`` reads of a mesh; its group ``None`` makes ring attention a ring of one rank."""

    def __init__(self, size=2, ndim=1):
        self._size, self.ndim, self.mesh_dim_names = size, ndim, ("context",) * ndim

    def size(self):
        return self._size

    def get_group(self):
        return None


@given(
    length=st.integers(1, 6),
    degree=st.integers(1, 4),
    dim=st.integers(0, 2),
)
def test_slices_concatenate_to_the_sequence(length, degree, dim):
    shape = [2, 3, 2]
    shape[dim] = length * degree
    tensor = torch.arange(math.prod(shape)).view(shape)
    slices = [split_sequence(tensor, rank, degree, dim=dim) for rank in range(degree)]
    assert all(piece.shape[dim] == length for piece in slices)
    assert torch.equal(torch.cat(slices, dim=dim), tensor)


def test_split_keeps_the_structure_and_short_tensors():
    Batch = namedtuple("Batch", ["tokens", "label"])
    batch = {
        "input": [torch.arange(8).view(2, 4), (torch.ones(2, 4), "text")],
        "pair": Batch(torch.arange(8).view(2, 4), torch.tensor([3, 4])),
        "count": 7,
    }
    local = split_sequence(batch, rank=1, degree=2)
    assert local["input"][0].tolist() == [[2, 3], [6, 7]]
    assert isinstance(local["input"][1], tuple) and local["input"][1][1] == "text"
    assert isinstance(local["pair"], Batch) and local["pair"].label.tolist() == [3, 4]
    assert local["count"] == 7
    assert split_sequence(batch, rank=0, degree=1) is batch


def test_split_errors_name_the_values():
    with pytest.raises(ValueError, match=r"sequence of length 5 \(dim 1 of a \(2, 5\) tensor\) into 2 equal"):
        split_sequence(torch.zeros(2, 5), rank=0, degree=2)
    with pytest.raises(ValueError, match=r"context rank must be in \[0, 2\), got 2"):
        split_sequence(torch.zeros(2, 4), rank=2, degree=2)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_one_rank_ring_attention_is_attention(causal, scale):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=generator, requires_grad=True) for _ in range(3))
    out = ring_attention(q, k, v, None, is_causal=causal, scale=scale)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    assert torch.allclose(out, expected, atol=1e-6)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, expected_grads))


def test_ring_attention_needs_equal_slices():
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(ValueError, match="equal slices of queries, keys and values, got lengths 4, 3 and 3"):
        ring_attention(q, torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2), None)


@pytest.fixture
def calls(monkeypatch):
    """Every redirected attention call, then the real (one-rank) ring attention."""
    seen = []

    def counting(*args, **kwargs):
        seen.append(kwargs["is_causal"])
        return ring_attention(*args, **kwargs)

    monkeypatch.setattr(context_parallel, "ring_attention", counting)
    return seen


def test_only_the_named_modules_are_redirected(calls):
    torch.manual_seed(0)
    model = Transformer(vocab_size=7, dim=8, num_layers=2, num_heads=2)
    tokens = torch.randint(0, 7, (2, 6))
    expected = model(tokens)
    apply_cp(model, StandInMesh(), "layers.1.attention")
    assert torch.allclose(model(tokens), expected, atol=1e-6)  # one rank: the same attention
    assert calls == [True]  # layer 1's causal attention only
    F.scaled_dot_product_attention(*torch.randn(3, 1, 2, 4))  # outside the model: not redirected
    assert calls == [True]


def test_a_failing_forward_leaves_attention_alone(calls):
    class Failing(nn.Module):
        def forward(self, x):
            F.scaled_dot_product_attention(x, x, x)
            raise RuntimeError("boom")

    model = nn.Sequential(Failing())
    apply_cp(model, StandInMesh(), ["0"])
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.randn(1, 2, 4))
    assert calls == [False]
    F.scaled_dot_product_attention(*torch.randn(3, 1, 2, 4))
    assert calls == [False]  # the redirection ended with the failed forward


@pytest.mark.parametrize(
    ("arguments", "refused"),
    [({"attn_mask": torch.ones(2, 2, dtype=torch.bool)}, "'attn_mask'"), ({"dropout_p": 0.1}, "'dropout_p'")],
)
def test_unsupported_attention_arguments_are_refused(arguments, refused):
    class Attending(nn.Module):
        def forward(self, x, **kwargs):
            return F.scaled_dot_product_attention(x, x, x, **kwargs)

    model = apply_cp(Attending(), StandInMesh(), "")
    with pytest.raises(NotImplementedError, match=rf"supports is_causal and scale only, got \[{refused}\]"):
        model(torch.randn(1, 2, 4), **arguments)
    assert model(torch.randn(1, 2, 4), dropout_p=0.0).shape == (1, 2, 4)  # the defaults, spelled out, are fine


def test_apply_cp_errors_and_one_rank():
    model = Transformer(vocab_size=7, dim=8, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=r"no module of Transformer matches 'blocks\.\*\.attention'"):
        apply_cp(model, StandInMesh(), ["layers.*.attention", "blocks.*.attention"])
    with pytest.raises(ValueError, match="needs the 1-D context mesh, got a 2-D mesh"):
        apply_cp(model, StandInMesh(ndim=2), "layers.*.attention")
    apply_cp(model, StandInMesh(size=1), "layers.*.attention")
    assert not model.layers[0].attention._forward_pre_hooks  # one rank: nothing to change
