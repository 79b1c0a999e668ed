"""``parallelize`` and ``apply_model_parallel`` in one process: hooks, errors, the fixed order's one-rank steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from danling.runners import RunnerConfig
from danling.runners.parallel_runner.parallelize import apply_model_parallel, fsdp_mesh, parallelize
from danling.runners.parallel_runner.topology import ParallelContext, build_topology
from danling.runners.parallel_runner.transformer import Transformer


def _context(world_size=1, **axes):
    return ParallelContext(build_topology(axes, world_size=world_size))


class Hooked(nn.Linear):
    def __init__(self, result="self"):
        super().__init__(2, 2)
        self.result, self.received = result, None

    def parallelize(self, parallel):
        self.received = parallel
        return self if self.result == "self" else self.result


def test_hook_runs_even_on_one_rank_and_may_return_none():
    context = _context()
    model = Hooked(result=None)
    assert apply_model_parallel(model, context) is model and model.received is context
    replacement = nn.Linear(2, 2)
    assert apply_model_parallel(Hooked(result=replacement), context) is replacement


def test_hook_must_return_a_module():
    with pytest.raises(TypeError, match=r"must return an nn\.Module or None, got int"):
        apply_model_parallel(Hooked(result=3), _context())


def test_split_axes_without_hook_or_plan_are_an_error():
    with pytest.raises(
        NotImplementedError,
        match=r"tensor=2, expert=2 need a model-specific transform: define `Linear.parallelize\(parallel\)` or set a tensor plan",
    ):
        apply_model_parallel(nn.Linear(2, 2), _context(4, tensor=2, expert=2))
    with pytest.raises(NotImplementedError, match="context=2 need a model-specific transform"):
        apply_model_parallel(nn.Linear(2, 2), _context(2, context=2), tensor_plan={"": "colwise"})
    assert isinstance(apply_model_parallel(nn.Linear(2, 2), _context(2, shard=2)), nn.Linear)


def test_fsdp_with_context_parallelism_is_not_built_yet():
    with pytest.raises(NotImplementedError, match=r"FSDP with context parallelism \(parallel.axes.context=2\)"):
        fsdp_mesh(_context(2, context=2), {})
    mesh = object()
    assert fsdp_mesh(_context(2, context=2), {"mesh": mesh}) is mesh


def test_one_rank_applies_activation_checkpointing_and_nothing_to_shard():
    config = RunnerConfig(activation_checkpoint=True, fsdp={"enabled": True})
    model = Transformer(vocab_size=5, dim=4, num_layers=2, num_heads=1)
    assert parallelize(model, _context(), config) is model
    assert all(hasattr(layer.forward, "__danling_checkpointed__") for layer in model.layers)
    assert not any(hasattr(layer, "reshard") for layer in model.layers)  # FSDP left out: one rank holds everything


def test_compile_is_per_block_and_in_place():
    config = RunnerConfig(compile={"enable": True, "backend": "eager"})
    model = Transformer(vocab_size=5, dim=4, num_layers=2, num_heads=1)
    names = [name for name, _ in model.named_parameters()]
    assert parallelize(model, _context(), config) is model
    assert all(layer._compiled_call_impl is not None for layer in model.layers)
    assert [name for name, _ in model.named_parameters()] == names  # no ``_orig_mod.`` prefixes
    assert model(torch.randint(0, 5, (2, 3))).shape == (2, 3, 5)
