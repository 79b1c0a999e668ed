"""What ``ParallelRunner``'s pipeline costs over a hand-written ``torch.distributed.pipelining`` loop.

Run: ``.venv/bin/python benchmarks/pipeline_overhead.py [--repeats 7] [--steps 32]``

Task (the same for both variants): next-token prediction on 1024 random sequences of 64 tokens
(vocabulary 512) with the example ``Transformer`` (width 128, 4 blocks, 4 heads), cut into two
stages (the embedding and 2 blocks; 2 blocks, the norm and the head), trained with AdamW on
batches of 16 sequences in 4 micro-batches by a 1F1B schedule, ``--steps`` optimizer steps; two
processes (one stage each, one CPU thread each) joined by gloo on loopback.  Both ranks read every
batch: the first feeds the inputs, the last the targets.

- ``pipelining loop``: the two stage modules built by hand, a ``PipelineStage`` each, torch's
  ``Schedule1F1B`` (it averages the micro-batch losses), then a plain loop over a ``DataLoader``:
  ``schedule.step``, ``optimizer.step``, ``zero_grad``.
- ``runner``: ``ParallelRunner`` with ``parallel.axes.pipeline=2``, ``pipeline_schedule="1F1B"``,
  4 micro-batches and the same stages (``module_fqns_per_model_part``), ``log=False`` and
  ``checkpoint.load_only=True`` (no writes), progress lines printed to a null stream.  Besides the
  loop it weighs each micro-batch by its token count and sends the batch's loss from the last
  stage to the first (one small broadcast per step), so both ranks report it.

The variants are interleaved ``--repeats`` times after a warm-up round, both ranks starting each
together (a barrier); rank 0 prints the median wall time of the training loop (construction is
not timed), the median of the paired ratios to the hand-written loop, the same ratio in process
CPU time, and the ratio of the fastest repeats (``min ratio``), which a busy machine disturbs least.
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
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import Schedule1F1B
from torch.utils.data import DataLoader, TensorDataset

from danling.runners.parallel_runner import ParallelRunner
from danling.runners.parallel_runner.transformer import Transformer

SAMPLES, LENGTH, VOCAB, BATCH, MICROBATCHES, WORLD_SIZE = 1024, 64, 512, 16, 4, 2
STAGES = [["embedding", "layers.0", "layers.1"], ["layers.2", "layers.3", "norm", "output"]]


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


class FirstStage(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.embedding, self.layers = model.embedding, nn.ModuleList(model.layers[:2])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x)
        return x


class LastStage(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.layers, self.norm, self.output = nn.ModuleList(model.layers[2:]), model.norm, model.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


def raw_loop(dataset: TensorDataset, steps: int, rank: int) -> tuple[float, float]:
    """The hand-written pipelining loop; returns wall and CPU seconds spent training."""
    model = make_model()
    part = FirstStage(model) if rank == 0 else LastStage(model)
    stage = PipelineStage(part, rank, WORLD_SIZE, torch.device("cpu"), group=dist.group.WORLD)
    schedule = Schedule1F1B(stage, n_microbatches=MICROBATCHES, loss_fn=SequenceCrossEntropy())
    optimizer = torch.optim.AdamW(part.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=BATCH, drop_last=True)
    dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    step = 0
    while step < steps:
        for inputs, target in loader:
            if rank == 0:
                schedule.step(inputs)
            else:
                schedule.step(target=target, losses=[])
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == steps:
                break
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
            "dataloader": {"batch_size": BATCH, "shuffle": False, "drop_last": True},
            "parallel": {
                "axes": {"pipeline": 2},
                "pipeline_schedule": "1F1B",
                "pipeline_n_microbatches": MICROBATCHES,
                "module_fqns_per_model_part": STAGES,
            },
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
        "pipelining loop": lambda: raw_loop(dataset, steps, rank),
        "runner": lambda: runner_loop(dataset, steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    timings = run_ranks(cases, WORLD_SIZE, args.steps, args.repeats)
    print(
        f"1F1B pipeline training: {WORLD_SIZE} stages on {WORLD_SIZE} processes (gloo), {args.steps} steps, "
        f"batch {BATCH} in {MICROBATCHES} micro-batches, Transformer width 128 x 4 blocks, AdamW, "
        f"1 thread each, {args.repeats} repeats"
    )
    print_table(timings, "pipelining loop", args.steps)


if __name__ == "__main__":
    main()
