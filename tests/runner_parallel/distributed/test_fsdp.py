"""FSDP2 on two real gloo processes: training equals one process on the same global batches.

Each rank takes its half of every global batch; FSDP averages the gradients over the shard axis,
so the sharded model must follow the unsharded model trained on the whole batch.  The same worker
checks clipping by the norm over the mesh and a non-finite skip that both ranks agree on.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch.distributed.tensor import DTensor

from danling.runners.parallel_runner import ParallelContext, apply_fsdp, build_device_mesh, build_topology
from danling.runners.parallel_runner.gradients import ParallelOptimizerContainer
from danling.runners.parallel_runner.transformer import Transformer
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

VOCAB, STEPS = 13, 3


def _batches():
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (4, 6), generator=generator) for _ in range(STEPS)]


def _loss(model, tokens):
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def _full(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _train(model, batches, container):
    for tokens in batches:
        container.backward(_loss(model, tokens))
        container.step()


def _max_difference(model, reference):
    return max(float((_full(p) - q).abs().max()) for p, q in zip(model.parameters(), reference.parameters()))


def _fsdp_equals_one_process(rank, world_size, fsdp_config, max_grad_norm, optimizer):
    context = ParallelContext(topology := build_topology({"shard": -1}, world_size, rank))
    context.mesh = build_device_mesh(topology, "cpu")
    torch.manual_seed(0)
    reference = Transformer(VOCAB, dim=8, num_layers=2, num_heads=2)
    model = apply_fsdp(copy.deepcopy(reference), context.submesh("shard"), fsdp_config)
    sharded = [name for name, p in model.named_parameters() if isinstance(p, DTensor)]
    assert len(sharded) == len(list(reference.parameters())), "every parameter is sharded"
    batches = _batches()
    local = [tokens.chunk(world_size)[context.rank("data")] for tokens in batches]
    options = {"max_grad_norm": max_grad_norm, "normalize": False}
    _train(model, local, ParallelOptimizerContainer(torch.optim.AdamW(model.parameters(), lr=0.01), **options))
    torch_clip = {"max_grad_norm": max_grad_norm, "normalize": False}
    _train(
        reference, batches, ParallelOptimizerContainer(torch.optim.AdamW(reference.parameters(), lr=0.01), **torch_clip)
    )
    return _max_difference(model, reference)


def _non_finite_skip_agreed(rank, world_size):
    topology = build_topology({"shard": 2}, world_size, rank)
    mesh = build_device_mesh(topology, "cpu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    # the head stays a plain, replicated tensor: only its own rank can see its gradient
    apply_fsdp(model, mesh["shard"], {"ignored_params": set(model[1].parameters())})
    before = [_full(p).detach().clone() for p in model.parameters()]
    container = ParallelOptimizerContainer(torch.optim.SGD(model.parameters(), lr=0.1), skip_nonfinite_grad=True)
    container.backward(model(torch.randn(3, 4)).pow(2).mean())
    if rank == 1:  # a NaN that only rank 1 holds
        model[1].weight.grad[0, 0] = float("nan")
    applied = container.step()
    unchanged = all(torch.equal(_full(p), b) for p, b in zip(model.parameters(), before))
    container.backward(model(torch.randn(3, 4)).pow(2).mean())
    return applied, unchanged, container.step()


CONFIGS = {
    # per-block sharding, reshard after forward; the norm over both shards clips every step (SGD: a
    # wrong norm shows in every element, while Adam's normalisation would also magnify rounding)
    "default, clipped": (None, 0.05, functools.partial(torch.optim.SGD, lr=0.1)),
    "no reshard, CPU offload": (
        {"reshard_after_forward": False, "offload_policy": {"pin_memory": False}},
        None,
        functools.partial(torch.optim.AdamW, lr=0.01),
    ),
}


def _checks(rank, world_size):
    """Every check of this module in one pair of processes (starting processes is the slow part)."""
    results = {name: _fsdp_equals_one_process(rank, world_size, *args) for name, args in CONFIGS.items()}
    results["skip"] = _non_finite_skip_agreed(rank, world_size)
    return results


@pytest.fixture(scope="module")
def results():
    return run_workers(_checks, 2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fsdp_equals_one_process(results, name):
    differences = [result[name] for result in results]
    assert max(differences) < 1e-5, differences


def test_non_finite_skip_is_agreed_across_ranks(results):
    assert [result["skip"] for result in results] == [(False, True, True), (False, True, True)]
