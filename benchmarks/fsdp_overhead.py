"""What ``ParallelRunner`` costs over a hand-written FSDP2 loop, on two processes (gloo, CPU).

Run: ``.venv/bin/python benchmarks/fsdp_overhead.py [--repeats 11] [--steps 64]``

Task (the same for both variants): next-token prediction on 4096 random sequences of 64 tokens
(vocabulary 512), the example ``Transformer`` of ``danling.runners.parallel_runner.transformer``
(width 128, 4 blocks, 4 heads), AdamW, 16 sequences per rank per step (shuffled), ``--steps``
optimizer steps, one CPU thread per process, two processes joined by gloo on loopback.

- ``fully_shard loop``: ``fully_shard`` on each block and on the root over a 1-D mesh, then a plain
  loop over a ``DataLoader`` with a ``DistributedSampler``: forward, loss, backward, step.
- ``runner``: ``ParallelRunner`` with ``fsdp.enabled`` and ``parallel.axes.shard=-1`` (the same
  sharding: per block, then the root), ``log=False`` and ``checkpoint.load_only=True`` (no writes),
  progress lines printed to a null stream.  Besides the loop it weighs each micro-batch by its
  token count, which costs one small all-reduce per optimizer step.

The variants are interleaved ``--repeats`` times after one warm-up round, both ranks starting
each together (a barrier); rank 0 prints the median wall time of the training loop (construction
is not timed), the median ratio to the hand-written loop, the same ratio in CPU time of the
process, and the ratio of the fastest repeats (``min ratio``): the last two are disturbed less
by other programs on a busy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from collections.abc import Callable

import torch
from _paired_ranks import print_table, run_ranks  # next to this script
from torch import distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from danling.runners.parallel_runner import ParallelRunner, build_device_mesh, build_topology
from danling.runners.parallel_runner.transformer import Transformer

SAMPLES, LENGTH, VOCAB, BATCH, WORLD_SIZE = 4096, 64, 512, 16, 2


def make_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (SAMPLES, LENGTH + 1), generator=generator)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def make_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(VOCAB, dim=128, num_layers=4, num_heads=4)


class SequenceCrossEntropy(nn.CrossEntropyLoss):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.flatten(0, 1), target.flatten())


def raw_loop(dataset: TensorDataset, steps: int, rank: int) -> tuple[float, float]:
    """The hand-written FSDP2 loop; returns wall and CPU seconds spent training."""
    mesh = build_device_mesh(build_topology({"shard": -1}, WORLD_SIZE, rank), "cpu")["shard"]
    model = make_model()
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = SequenceCrossEntropy()
    sampler = DistributedSampler(dataset, num_replicas=WORLD_SIZE, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, drop_last=True)
    dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    step, epoch = 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        for inputs, target in loader:
            criterion(model(inputs), target).backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == steps:
                break
        epoch += 1
    return time.perf_counter() - start, time.process_time() - cpu


class BenchmarkRunner(ParallelRunner):
    def __init__(self, config, dataset: TensorDataset):
        super().__init__(config)
        self.datasets.train = dataset
        self.model = make_model()
        self.criterion = SequenceCrossEntropy()


def runner_loop(dataset: TensorDataset, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds in ``runner.train()`` (stdout discarded)."""
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()):
        config = {
            "steps": steps,
            "seed": 0,
            "workspace_root": root,
            "log": False,
            "checkpoint": {"load_only": True},
            "optim": {"type": "adamw", "lr": 1e-3},
            "dataloader": {"batch_size": BATCH},
            "fsdp": {"enabled": True},
            "parallel": {"axes": {"shard": -1}},
            "adopt_process_group": True,  # the worker starts the group before the runner
        }
        runner = BenchmarkRunner(config, dataset)
        dist.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        runner.train()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        runner.close()
        assert runner.train_state.global_step == steps
    return wall, cpu


def cases(rank: int, steps: int) -> dict[str, Callable[[], tuple[float, float]]]:
    """What each rank times: the hand-written loop and the runner on the same data."""
    dataset = make_data()
    return {
        "fully_shard loop": lambda: raw_loop(dataset, steps, rank),
        "runner": lambda: runner_loop(dataset, steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    timings = run_ranks(cases, WORLD_SIZE, args.steps, args.repeats)
    print(
        f"FSDP2 training: {WORLD_SIZE} processes (gloo), {args.steps} steps, batch {BATCH} per rank, "
        f"Transformer width 128 x 4 blocks, AdamW, 1 thread each, {args.repeats} repeats"
    )
    print_table(timings, "fully_shard loop", args.steps)


if __name__ == "__main__":
    main()
