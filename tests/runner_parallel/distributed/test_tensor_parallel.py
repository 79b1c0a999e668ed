"""Tensor parallelism on real gloo processes.

- two processes: the example transformer block (through its ``parallelize`` hook), the whole
  example transformer (built-in plan) and a config-written plan train exactly like the unsharded
  modules on the same batches (tensor-parallel peers read the same data);
- four processes, a 2x2 (shard x tensor) mesh: tensor parallel inside FSDP2, each shard rank on
  its half of every global batch, clipped by the norm over the whole mesh, equals one process;
  the same worker checks the mesh's groups and reductions over named domains.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from danling.runners.parallel_runner import ParallelContext, apply_fsdp, apply_tp, build_device_mesh, build_topology
from danling.runners.parallel_runner.gradients import ParallelOptimizerContainer
from danling.runners.parallel_runner.transformer import Transformer, TransformerBlock
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

VOCAB = 13


def _full(tensor):
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _max_difference(model, reference):
    return max(float((_full(p) - q).abs().max()) for p, q in zip(model.parameters(), reference.parameters()))


def _context(rank, world_size, **axes):
    topology = build_topology(axes, world_size, rank)
    return ParallelContext(topology, build_device_mesh(topology, "cpu"))


def _train_pair(model, reference, batches, loss_fn, **options):
    """Train both on the same batches; return the largest output and parameter differences."""
    outputs = []
    for module in (model, reference):
        container = ParallelOptimizerContainer(torch.optim.SGD(module.parameters(), lr=0.1), normalize=False, **options)
        for batch in batches(module):
            out = module(batch)
            outputs.append(out.detach())
            container.backward(loss_fn(out, batch))
            container.step()
    steps = len(outputs) // 2
    output_difference = float((outputs[0] - outputs[steps]).abs().max())
    return max(output_difference, _max_difference(model, reference))


def _sequence_loss(out, tokens):
    return nn.functional.cross_entropy(out[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def _two_process_checks(rank, world_size):
    context = _context(rank, world_size, tensor=2)
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(3, 4, 8, generator=generator) for _ in range(3)]
    tokens = [torch.randint(0, VOCAB, (3, 6), generator=generator) for _ in range(3)]
    results = {}

    torch.manual_seed(0)
    reference = TransformerBlock(dim=8, num_heads=2, hidden_dim=16)
    block = copy.deepcopy(reference)
    block.parallelize(context)  # the model's own hook, with the built-in block plan
    results["sharded"] = (
        isinstance(block.attention.wq.weight, DTensor) and block.attention.wq.weight.to_local().shape[0] == 4
    )
    results["block"] = _train_pair(block, reference, lambda module: inputs, lambda out, _: out.pow(2).mean())

    torch.manual_seed(0)
    reference = Transformer(VOCAB, dim=8, num_layers=2, num_heads=2)
    model = copy.deepcopy(reference)
    model.parallelize(context)
    results["transformer"] = _train_pair(model, reference, lambda module: tokens, _sequence_loss, max_grad_norm=0.1)

    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    plan = {"0": "colwise", "2": {"style": "rowwise", "output_layouts": "replicate"}}  # as written in a config
    mlp = apply_tp(copy.deepcopy(reference), context.submesh("tensor"), plan)
    results["config plan"] = _train_pair(mlp, reference, lambda module: inputs, lambda out, _: out.pow(2).mean())
    try:
        apply_tp(nn.Linear(2, 2), context.submesh("tensor"), {"proj": "colwise"})
    except ValueError as error:
        results["missing"] = str(error)
    return results


@pytest.fixture(scope="module")
def two_process():
    return run_workers(_two_process_checks, 2)


@pytest.mark.parametrize("name", ["block", "transformer", "config plan"])
def test_tensor_parallel_equals_unsharded(two_process, name):
    differences = [result[name] for result in two_process]
    assert max(differences) < 1e-6, differences  # SGD: rounding differences stay at float32's level


def test_block_is_sharded_and_typos_are_errors(two_process):
    assert all(result["sharded"] for result in two_process)
    assert two_process[0]["missing"] == "tensor plan names modules that Linear does not have: ['proj']"


def _mesh_checks(context, rank):
    groups = {axis: torch.distributed.get_world_size(context.group(axis)) for axis in ("shard", "tensor", "pipeline")}
    data_sum = context.all_reduce(torch.tensor([float(rank)]), domain="data").item()
    all_sum = context.all_reduce(torch.tensor([float(rank)]), domain="optimizer").item()
    return {"groups": groups, "data sum": data_sum, "all sum": all_sum, "coordinates": context.topology.coordinates}


def _four_process_checks(rank, world_size):
    context = _context(rank, world_size, shard=2, tensor=2)
    results = _mesh_checks(context, rank)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, VOCAB, (4, 6), generator=generator) for _ in range(3)]
    local = [tokens.chunk(2)[context.rank("data")] for tokens in batches]
    torch.manual_seed(0)
    reference = Transformer(VOCAB, dim=8, num_layers=2, num_heads=2)
    model = copy.deepcopy(reference)
    model.parallelize(context)  # tensor parallel first,
    apply_fsdp(model, context.submesh("shard"))  # then FSDP over the shard axis: 2-D parameters
    results["2d"] = all(len(p.placements) == 2 for p in model.parameters())
    for module, data in ((model, local), (reference, batches)):
        container = ParallelOptimizerContainer(
            torch.optim.AdamW(module.parameters(), lr=0.01), max_grad_norm=0.1, normalize=False
        )
        for tokens in data:
            container.backward(_sequence_loss(module(tokens), tokens))
            container.step()
    results["difference"] = _max_difference(model, reference)
    return results


def test_shard_by_tensor_mesh_equals_one_process():
    results = run_workers(_four_process_checks, 4)
    assert all(result["2d"] for result in results)
    assert max(result["difference"] for result in results) < 1e-5, results
    # rank = shard * 2 + tensor: the data domain pairs ranks with the same tensor index
    assert [result["data sum"] for result in results] == [2.0, 4.0, 2.0, 4.0]
    assert [result["all sum"] for result in results] == [6.0] * 4
    assert [(r["coordinates"]["shard"], r["coordinates"]["tensor"]) for r in results] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert all(result["groups"] == {"shard": 2, "tensor": 2, "pipeline": 1} for result in results)
