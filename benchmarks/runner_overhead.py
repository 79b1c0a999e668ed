"""What ``TorchRunner`` costs over a hand-written PyTorch loop, and what its checkpoints cost.

Run: ``.venv/bin/python benchmarks/runner_overhead.py [--repeats 21] [--steps 256]``

Training task (the same for every variant): 8192 samples of 64 features, 10 classes, an MLP
64-256-256-10, AdamW, batch 64 (shuffled), ``--steps`` optimizer steps, one CPU thread.

- ``raw``: a plain loop over a ``torch.utils.data.DataLoader``: forward, loss, backward, step.
- ``runner (quiet)``: ``TorchRunner`` with ``log=False`` and ``checkpoint.load_only=True``
  (no log file, no checkpoint writes; progress lines still printed, to a null stream here).
- ``runner (default)``: ``TorchRunner`` with its default config (log file, progress lines, a
  checkpoint about every 20th of the run, asynchronous, plus the final one).

Variants are interleaved ``--repeats`` times; the script prints the median wall time of
``runner.train()`` (construction is timed separately), the median ratio to ``raw``, and the same
ratio in CPU time of the process (all threads), and the ratio of the fastest repeats (``min ratio``):
the last two are disturbed less by other programs on a busy machine.

Checkpoints, for the trained task and for a larger model (MLP of width 1024, 1.1M parameters):
a synchronous ``save_checkpoint`` with the default config against what a user's loop does, a
plain ``torch.save(runner.state_dict(), path)`` overwriting one path each time (no ``fsync``);
the same save with ``checkpoint.fsync=True`` (durable against power loss) against that baseline
and against ``torch.save`` followed by ``fsync``; and the time an asynchronous ``save_checkpoint``
takes to return (it copies tensors to host memory, then writes on a background thread) as a
fraction of the synchronous save.  Each save follows a training step of its runner (untimed), as
saves do in a run.  The variants are interleaved; medians of ``--checkpoint-repeats``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from danling.runners import TorchRunner

SAMPLES, FEATURES, CLASSES, BATCH = 8192, 64, 10, 64


def make_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator)
    labels = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    return TensorDataset(inputs, labels)


def make_model(width: int = 256) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, CLASSES)
    )


def raw_loop(dataset: TensorDataset, steps: int) -> tuple[float, float]:
    """The hand-written loop; returns wall and CPU seconds spent training."""
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    start, cpu = time.perf_counter(), time.process_time()
    step = 0
    while step < steps:
        for inputs, labels in loader:
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == steps:
                break
    return time.perf_counter() - start, time.process_time() - cpu


class BenchmarkRunner(TorchRunner):
    def __init__(self, config, dataset: TensorDataset, width: int = 256):
        super().__init__(config)
        self.datasets.train = dataset
        self.model = make_model(width)
        self.criterion = nn.CrossEntropyLoss()


def runner_config(root: str, steps: int, *, quiet: bool) -> dict:
    config = {
        "steps": steps,
        "workspace_root": root,
        "optim": {"type": "adamw", "lr": 1e-3},
        "dataloader": {"batch_size": BATCH},
    }
    if quiet:
        config.update({"log": False, "checkpoint": {"load_only": True}})
    return config


def runner_loop(dataset: TensorDataset, steps: int, *, quiet: bool) -> tuple[float, float, float]:
    """Seconds to build the runner, and wall and CPU seconds in ``runner.train()`` (stdout discarded)."""
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        runner = BenchmarkRunner(runner_config(root, steps, quiet=quiet), dataset)
        built, cpu = time.perf_counter(), time.process_time()
        runner.train()
        trained, cpu = time.perf_counter(), time.process_time() - cpu
        runner.close()
        assert runner.train_state.global_step == steps
    return built - start, trained - built, cpu


def _torch_save(state: dict, path: str, *, fsync: bool) -> None:
    if not fsync:
        torch.save(state, path)  # what a user's loop does
        return
    with open(path, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())


#: Checkpoint variants: (async_mode, checkpoint.fsync) of the runner that saves.
CHECKPOINT_RUNNERS = {"sync": ("disabled", False), "sync fsync": ("disabled", True), "async": ("async", False)}


def checkpoint_costs(dataset: TensorDataset, width: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``torch.save`` of ``state_dict()`` (to one path, with and without fsync) and of the runner's saves.

    ``torch.save`` is timed with the ``state_dict()`` call, as the runner's save includes it.
    """
    timings: dict[str, list[float]] = {}

    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()):
        runners = {}
        for name, (mode, fsync) in CHECKPOINT_RUNNERS.items():
            config = runner_config(os.path.join(root, name.replace(" ", "-")), 4, quiet=False)
            config.update({"log": False, "checkpoint": {"async_mode": mode, "interval": 0, "fsync": fsync}})
            runners[name] = BenchmarkRunner(config, dataset, width)
            runners[name].train()  # optimizer state exists, as in a real run
        plain, source = os.path.join(root, "plain.pth"), runners["sync"]
        fsynced, background = runners["sync fsync"], runners["async"]
        batch = next(iter(source.dataloaders["train"]))
        if hasattr(os, "sync"):  # write back what earlier runs left in the page cache before timing
            os.sync()

        def timed(name: str, runner: BenchmarkRunner, save: Callable[[], object]) -> None:
            runner.train_step(batch)  # untimed: a run saves right after an optimizer step
            start = time.perf_counter()
            save()
            timings.setdefault(name, []).append(time.perf_counter() - start)

        # Durable saves in a second pass: their flushes to disk slow down whatever runs next.
        for _ in range(repeats):
            timed("async return", background, lambda: background.save_checkpoint(force=True))
            background.checkpoint_manager.wait()  # written before the next timing, as between real saves
            timed("torch.save", source, lambda: _torch_save(source.state_dict(), plain, fsync=False))
            timed("sync", source, lambda: source.save_checkpoint(force=True))
        for _ in range(repeats):
            timed("torch.save fsync", source, lambda: _torch_save(source.state_dict(), plain, fsync=True))
            timed("sync fsync", fsynced, lambda: fsynced.save_checkpoint(force=True))
        for runner in runners.values():
            runner.close()
    return timings


def print_checkpoint_costs(dataset: TensorDataset, width: int, repeats: int) -> None:
    """Print median milliseconds, median ratios of the pairs timed in the same repeat, and ratios of the fastest.

    The fastest repeats are disturbed least by other programs (a save preempted by the scheduler
    once costs a 4 ms tick on a busy machine, more than a small model's whole asynchronous save).
    """
    costs = checkpoint_costs(dataset, width, repeats)
    parameters = sum(p.numel() for p in make_model(width).parameters())

    def ms(name: str) -> str:
        return f"{statistics.median(costs[name]) * 1e3:.2f} ms"

    def ratio(name: str, base: str) -> str:
        paired = statistics.median(a / b for a, b in zip(costs[name], costs[base]))
        return f"{paired:.3f}x, fastest {min(costs[name]) / min(costs[base]):.3f}x"

    print(
        f"checkpoint (MLP width {width}, {parameters / 1e6:.2f}M parameters + AdamW state, {repeats} repeats): "
        f"sync save {ms('sync')} vs torch.save {ms('torch.save')} ({ratio('sync', 'torch.save')}); "
        f"async save returns in {ms('async return')} ({ratio('async return', 'sync')} of sync); "
        f"with fsync=True {ms('sync fsync')} ({ratio('sync fsync', 'torch.save')} torch.save, "
        f"{ratio('sync fsync', 'torch.save fsync')} torch.save+fsync {ms('torch.save fsync')})"
    )


def interleave(
    cases: dict[str, Callable[[], tuple[float, float]]], repeats: int
) -> dict[str, list[tuple[float, float]]]:
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            timings[name].append(case())
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--checkpoint-repeats", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = make_data()
    builds: dict[str, list[float]] = {"runner (quiet)": [], "runner (default)": []}

    def runner_case(name: str, quiet: bool) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            built, wall, cpu = runner_loop(dataset, args.steps, quiet=quiet)
            builds[name].append(built)
            return wall, cpu

        return run

    cases = {
        "raw": lambda: raw_loop(dataset, args.steps),
        "runner (quiet)": runner_case("runner (quiet)", True),
        "runner (default)": runner_case("runner (default)", False),
    }
    interleave(cases, 1)  # warm up imports, allocator and caches
    for values in builds.values():
        values.clear()
    timings = interleave(cases, args.repeats)
    raw = timings["raw"]
    print(f"training: {args.steps} steps, batch {BATCH}, MLP 64-256-256-10, AdamW, 1 thread, {args.repeats} repeats")
    print(
        f"{'variant':<18} {'median s':>9} {'ms/step':>8} {'ratio':>6} {'cpu ratio':>9} {'min ratio':>9} {'build s':>8}"
    )
    for name, values in timings.items():
        ratio = statistics.median(wall / base[0] for (wall, _), base in zip(values, raw))
        cpu_ratio = statistics.median(cpu / base[1] for (_, cpu), base in zip(values, raw))
        min_ratio = min(wall for wall, _ in values) / min(wall for wall, _ in raw)
        build = f"{statistics.median(builds[name]):8.3f}" if name in builds else f"{'':>8}"
        median = statistics.median(wall for wall, _ in values)
        print(
            f"{name:<18} {median:9.4f} {median / args.steps * 1e3:8.3f} {ratio:6.3f} {cpu_ratio:9.3f} {min_ratio:9.3f} {build}"
        )
    for width in (256, 1024):
        print_checkpoint_costs(dataset, width, args.checkpoint_repeats)


if __name__ == "__main__":
    main()
