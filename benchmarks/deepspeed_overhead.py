"""What ``DeepSpeedRunner`` costs over a hand-written DeepSpeed engine loop.

Run: ``.venv/bin/python benchmarks/deepspeed_overhead.py [--repeats 11] [--steps 256] [--stages 0 1 2]``

Training task (the same for every variant): 8192 samples of 64 features, 10 classes, an MLP
64-256-256-10, AdamW, batch 64 (shuffled), ``--steps`` optimizer steps, one process on the CPU
(DeepSpeed's CPU accelerator, a one-rank gloo group), one thread, for each ZeRO stage asked for.

- ``engine``: ``deepspeed.initialize`` and a plain loop over a ``torch.utils.data.DataLoader``:
  ``loss = criterion(engine(inputs), labels)``, ``engine.backward(loss)``, ``engine.step()``.
- ``runner``: ``DeepSpeedRunner`` with ``log=False`` and ``checkpoint.load_only=True`` (no log
  file, no checkpoint writes; progress lines still printed, to a null stream here): its loop,
  meters (loss, learning rate, gradient norm, skipped steps) and step container.

Both use the same DeepSpeed config (the runner's: clipping off, ``train_batch_size`` 64); the
engine loop lets DeepSpeed manage accumulation (one micro-batch per step), the runner turns that
off and steps at its own boundary.  Variants are interleaved ``--repeats`` times per stage; the
script prints the median wall time of the training alone (building the engine or runner is
timed separately), the median ratio to ``engine`` of the pairs timed in the same repeat, the
same ratio in CPU time, and the ratio of the fastest repeats, which a busy machine disturbs least.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from danling.runners.deepspeed_runner import DeepSpeedRunner, build_deepspeed_config, init_deepspeed_distributed

SAMPLES, FEATURES, CLASSES, BATCH = 8192, 64, 10, 64


def make_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator)
    labels = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    return TensorDataset(inputs, labels)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, CLASSES))


def engine_loop(dataset: TensorDataset, steps: int, stage: int) -> tuple[float, float, float]:
    """The hand-written loop; seconds to build the engine, and wall and CPU seconds spent training."""
    import deepspeed

    start = time.perf_counter()
    model = make_model()
    config = build_deepspeed_config({"zero_optimization": {"stage": stage}}, micro_batch_size=BATCH)
    config.pop("managed_gradient_accumulation")  # DeepSpeed's default: it counts micro-steps itself
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=config
    )
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    built, cpu = time.perf_counter(), time.process_time()
    step = 0
    while step < steps:
        for inputs, labels in loader:
            loss = criterion(engine(inputs), labels)
            engine.backward(loss)
            engine.step()
            step += 1
            if step == steps:
                break
    trained, cpu = time.perf_counter(), time.process_time() - cpu
    engine.destroy()
    return built - start, trained - built, cpu


class BenchmarkRunner(DeepSpeedRunner):
    def __init__(self, config, dataset: TensorDataset):
        super().__init__(config)
        self.datasets.train = dataset
        self.model = make_model()
        self.criterion = nn.CrossEntropyLoss()


def runner_loop(dataset: TensorDataset, steps: int, stage: int) -> tuple[float, float, float]:
    """Seconds to build the runner, and wall and CPU seconds in ``runner.train()`` (stdout discarded)."""
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        config = {
            "steps": steps,
            "workspace_root": root,
            "log": False,
            "optim": {"type": "adamw", "lr": 1e-3},
            "dataloader": {"batch_size": BATCH},
            "checkpoint": {"load_only": True},
            "deepspeed": {"zero_optimization": {"stage": stage}},
        }
        runner = BenchmarkRunner(config, dataset)
        built, cpu = time.perf_counter(), time.process_time()
        runner.train()
        trained, cpu = time.perf_counter(), time.process_time() - cpu
        assert runner.train_state.global_step == steps
        runner.model.destroy()
        runner.close()
    return built - start, trained - built, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    init_deepspeed_distributed()  # one group for the whole benchmark, as a launcher would start it
    dataset = make_data()
    print(f"training: {args.steps} steps, batch {BATCH}, MLP 64-256-256-10, AdamW, 1 process, 1 thread, CPU")
    print(
        f"{'variant':<18} {'median s':>9} {'ms/step':>8} {'ratio':>6} {'cpu ratio':>9} {'min ratio':>9} {'build s':>8}"
    )
    for stage in args.stages:
        cases: dict[str, Callable[[], tuple[float, float, float]]] = {
            "engine": lambda stage=stage: engine_loop(dataset, args.steps, stage),
            "runner": lambda stage=stage: runner_loop(dataset, args.steps, stage),
        }
        for case in cases.values():  # warm up imports, allocator and caches
            case()
        timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, case in cases.items():
                timings[name].append(case())
        base = timings["engine"]
        for name, values in timings.items():
            ratio = statistics.median(wall / raw[1] for (_, wall, _), raw in zip(values, base))
            cpu_ratio = statistics.median(cpu / raw[2] for (_, _, cpu), raw in zip(values, base))
            min_ratio = min(wall for _, wall, _ in values) / min(wall for _, wall, _ in base)
            median = statistics.median(wall for _, wall, _ in values)
            build = statistics.median(built for built, _, _ in values)
            label = f"ZeRO-{stage} {name}"
            print(
                f"{label:<18} {median:9.4f} {median / args.steps * 1e3:8.3f} {ratio:6.3f} {cpu_ratio:9.3f} "
                f"{min_ratio:9.3f} {build:8.3f}"
            )


if __name__ == "__main__":
    main()
