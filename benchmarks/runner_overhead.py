"""What ``TorchRunner`` costs over a hand-written PyTorch loop (and over Lightning and Accelerate), and its checkpoints.

Run: ``uv run --group bench benchmarks/runner_overhead.py [--repeats 21] [--steps 256]``
(without ``--group bench`` the Lightning and Accelerate rows are skipped with a note).

Training task (the same for every variant): 8192 samples of 64 features, 10 classes, an MLP
64-256-256-10, AdamW, batch 64 (shuffled), ``--steps`` optimizer steps, one CPU thread.  Each
variant runs in two modes: step mode (a budget of ``--steps`` optimizer steps) and epoch mode
(``--steps / 128`` epochs of 128 batches: the same number of steps, so ``--steps`` must be a
multiple of 128).

- ``raw``: a plain loop over a ``torch.utils.data.DataLoader``: forward, loss, backward, step
  (``while step < steps`` in step mode, ``for epoch in range(epochs)`` in epoch mode).
- ``runner (quiet)``: ``TorchRunner`` with ``log=False`` and ``checkpoint.load_only=True``
  (no log file, no checkpoint writes; progress lines still printed, to a null stream here).
- ``runner (default)``: ``TorchRunner`` with its default config: a log file, progress lines and
  asynchronous checkpoints at the default cadence, which is about every 20th of the run in step
  mode (19 saves plus the final one at 256 steps) and every epoch in epoch mode (2 saves in all).
- ``runner (default, 1 save)``: the default config with ``checkpoint.interval=10**9`` (no
  periodic saves, only the final one): the difference to ``runner (default)`` is what the
  periodic saves cost, the difference to ``runner (quiet)`` what logging and one save cost.
- ``runner (default, thread writer)``: the default config with ``checkpoint.async_writer="thread"``:
  asynchronous saves pickled and written by a thread of the training process, as before the
  serializer process (the default where ``/dev/shm`` exists) took that work out of the process.
  A thread's ``torch.save`` holds the GIL for most of a small checkpoint's write, and the
  training loop's tensor operations wait for it.
- ``lightning`` (step mode, when ``lightning`` is installed): a ``LightningModule`` and
  ``Trainer(max_steps=..., logger=False, enable_checkpointing=False, enable_progress_bar=False,
  enable_model_summary=False)`` on the CPU, fed the same ``DataLoader`` as ``raw``; timed from its
  ``on_train_start`` to its ``on_train_end`` hook (creating the trainer and ``fit``'s set-up
  before the first step count as ``build``).
- ``accelerate`` (step mode, when ``accelerate`` is installed): ``Accelerator(cpu=True).prepare``
  of the model, optimizer and the same ``DataLoader``, then the raw loop with
  ``accelerator.backward(loss)``.

Variants are interleaved ``--repeats`` times after one warm-up round; the script prints the median
wall time of the training (construction is timed separately as ``build s``), the median ratio to
the ``raw`` loop of the same mode timed in the same round, the same ratio in CPU time of the
process (all threads), and the ratio of the fastest repeats (``min ratio``): the last two are
disturbed less by other programs on a busy machine.

A save's cost to the loop: steps of runs that save every ``SAVE_CADENCE`` steps, grouped by how
many steps after a save they start (``save_cost_in_loop``).

Checkpoints, for the trained task and for a larger model (MLP of width 1024, 1.1M parameters):
a synchronous ``save_checkpoint`` with the default config against what a user's loop does, a
plain ``torch.save(runner.state_dict(), path)`` overwriting one path each time (no ``fsync``);
the same save with ``checkpoint.fsync=True`` (durable against power loss) against that baseline
and against ``torch.save`` followed by ``fsync``; and the time an asynchronous ``save_checkpoint``
takes to return (it copies tensors to shared host memory, then a background thread hands the
write to the serializer process) as a fraction of the synchronous save.  Each save follows a training step of its runner (untimed), as
saves do in a run.  The variants are interleaved; medians of ``--checkpoint-repeats``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import itertools
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from danling.runners import TorchRunner

SAMPLES, FEATURES, CLASSES, BATCH = 8192, 64, 10, 64
STEPS_PER_EPOCH = SAMPLES // BATCH
#: ``checkpoint.interval`` of the ``runner (default, 1 save)`` variant: larger than any run, so only the final save.
NO_PERIODIC_SAVES = 10**9


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


def make_loader(dataset: TensorDataset) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)


def raw_loop(dataset: TensorDataset, steps: int, *, epoch_mode: bool = False) -> tuple[float, float]:
    """The hand-written loop; returns wall and CPU seconds spent training."""
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    loader = make_loader(dataset)
    start, cpu = time.perf_counter(), time.process_time()
    if epoch_mode:
        for _ in range(steps // STEPS_PER_EPOCH):
            for inputs, labels in loader:
                loss = criterion(model(inputs), labels)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        return time.perf_counter() - start, time.process_time() - cpu
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


def runner_config(
    root: str,
    steps: int,
    *,
    quiet: bool,
    epoch_mode: bool = False,
    interval: int | None = None,
    writer: str | None = None,
) -> dict:
    config = {
        "workspace_root": root,
        "optim": {"type": "adamw", "lr": 1e-3},
        "dataloader": {"batch_size": BATCH},
    }
    if epoch_mode:
        config["epochs"] = steps // STEPS_PER_EPOCH
    else:
        config["steps"] = steps
    if quiet:
        config.update({"log": False, "checkpoint": {"load_only": True}})
    else:
        if interval is not None:
            config.setdefault("checkpoint", {})["interval"] = interval
        if writer is not None:
            config.setdefault("checkpoint", {})["async_writer"] = writer
    return config


def runner_loop(
    dataset: TensorDataset,
    steps: int,
    *,
    quiet: bool,
    epoch_mode: bool = False,
    interval: int | None = None,
    writer: str | None = None,
) -> tuple[float, float, float]:
    """Seconds to build the runner, and wall and CPU seconds in ``runner.train()`` (stdout discarded)."""
    config = {"quiet": quiet, "epoch_mode": epoch_mode, "interval": interval, "writer": writer}
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        runner = BenchmarkRunner(runner_config(root, steps, **config), dataset)
        built, cpu = time.perf_counter(), time.process_time()
        runner.train()
        trained, cpu = time.perf_counter(), time.process_time() - cpu
        runner.close()
        assert runner.train_state.global_step == steps
    return built - start, trained - built, cpu


def lightning_loop(dataset: TensorDataset, steps: int) -> tuple[float, float, float]:
    """Seconds from creating the ``Trainer`` to its first step, and wall and CPU seconds of its training."""
    import lightning

    # Its notes (devices found, a tip, why fit stopped) go to loggers that importing lightning set to INFO.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()
            self.criterion = nn.CrossEntropyLoss()
            self.clock: list[tuple[float, float]] = []

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            inputs, labels = batch
            return self.criterion(self.model(inputs), labels)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

        def on_train_start(self) -> None:
            assert torch.get_num_threads() == 1, f"Lightning changed the thread count to {torch.get_num_threads()}"
            self.clock.append((time.perf_counter(), time.process_time()))

        def on_train_end(self) -> None:
            self.clock.append((time.perf_counter(), time.process_time()))

    module, loader = Module(), make_loader(dataset)
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # Lightning's own use of a torch API that torch deprecated; nothing the user could change
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.")
        start = time.perf_counter()
        trainer = lightning.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=root,
        )
        trainer.fit(module, loader)
    (begun, cpu_begun), (ended, cpu_ended) = module.clock
    assert trainer.global_step == steps
    return begun - start, ended - begun, cpu_ended - cpu_begun


def accelerate_loop(dataset: TensorDataset, steps: int) -> tuple[float, float, float]:
    """Seconds to create the ``Accelerator`` and prepare, and wall and CPU seconds of the loop."""
    from accelerate import Accelerator

    start = time.perf_counter()
    accelerator = Accelerator(cpu=True)
    model = make_model()
    model, optimizer, loader = accelerator.prepare(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), make_loader(dataset)
    )
    criterion = nn.CrossEntropyLoss()
    built, cpu = time.perf_counter(), time.process_time()
    step = 0
    while step < steps:
        for inputs, labels in loader:
            loss = criterion(model(inputs), labels)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == steps:
                break
    trained, cpu = time.perf_counter(), time.process_time() - cpu
    accelerator.free_memory()
    return built - start, trained - built, cpu


#: Frameworks compared in step mode when installed: (distribution, function running the task).
FRAMEWORKS: dict[str, tuple[str, Callable[[TensorDataset, int], tuple[float, float, float]]]] = {
    "lightning": ("lightning", lightning_loop),
    "accelerate": ("accelerate", accelerate_loop),
}


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


#: Optimizer steps between saves when timing a save's cost to the loop (``save_cost_in_loop``).
SAVE_CADENCE = 13


class _SteppedRunner(BenchmarkRunner):
    """Records when each training step starts."""

    def train_step(self, data):
        self.step_starts.append(time.perf_counter())
        return super().train_step(data)


def save_cost_in_loop(dataset: TensorDataset, steps: int, repeats: int) -> tuple[list[float], float]:
    """Per step after a save: the median wall time from one step's start to the next's; and the extra total.

    The default config (without the log file) saves every ``SAVE_CADENCE`` steps; each interval is
    labelled by how many steps after the latest save it starts.  Comparing steps of the same run
    spares this figure the drifts of a busy machine that whole-run ratios suffer: a save costs the
    loop the save call itself (phase 0) and whatever the writer and the serializer process take
    from the training thread afterwards.  The extra total is the sum over phases of the excess over
    the median of the later phases.
    """
    phases: list[list[float]] = [[] for _ in range(SAVE_CADENCE)]
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(io.StringIO()):
            config = runner_config(root, steps, quiet=False, interval=SAVE_CADENCE)
            config["log"] = False
            runner = _SteppedRunner(config, dataset)
            runner.step_starts = []
            runner.train()
            runner.close()
        starts = runner.step_starts
        for step, (begun, next_begun) in enumerate(itertools.pairwise(starts), start=1):
            if SAVE_CADENCE <= step < steps - SAVE_CADENCE:  # after the serializer's start-up
                phases[step % SAVE_CADENCE].append(next_begun - begun)
    medians = [statistics.median(values) for values in phases]
    baseline = statistics.median(medians[SAVE_CADENCE // 3 :])
    return medians, sum(median - baseline for median in medians)


def print_save_cost_in_loop(dataset: TensorDataset, steps: int, repeats: int) -> None:
    medians, extra = save_cost_in_loop(dataset, steps, repeats)
    shown = " ".join(f"{median * 1e3:.2f}" for median in medians[:4])
    print(
        f"asynchronous save every {SAVE_CADENCE} steps ({repeats} runs): ms per step at 0, 1, 2, 3 steps after a save "
        f"{shown} (later steps {statistics.median(medians[SAVE_CADENCE // 3 :]) * 1e3:.2f}); "
        f"each save costs the loop {extra * 1e3:.2f} ms"
    )


def interleave(
    cases: dict[str, Callable[[], tuple[float, float]]], repeats: int
) -> dict[str, list[tuple[float, float]]]:
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            torch.set_num_threads(1)
            timings[name].append(case())
    return timings


#: The runner variants of both modes: keyword arguments of ``runner_loop``.
RUNNER_VARIANTS = {
    "runner (quiet)": {"quiet": True},
    "runner (default)": {"quiet": False},
    "runner (default, 1 save)": {"quiet": False, "interval": NO_PERIODIC_SAVES},
    "runner (default, thread writer)": {"quiet": False, "writer": "thread"},
}


def training_cases(
    dataset: TensorDataset, steps: int, builds: dict[str, list[float]]
) -> dict[str, Callable[[], tuple[float, float]]]:
    """Every variant, named ``"{mode}: {variant}"``; those with a build step record its seconds in ``builds``."""

    def built(name: str, run: Callable[[], tuple[float, float, float]]) -> Callable[[], tuple[float, float]]:
        builds[name] = []

        def case() -> tuple[float, float]:
            build, wall, cpu = run()
            builds[name].append(build)
            return wall, cpu

        return case

    frameworks = {}
    for name, (distribution, loop) in FRAMEWORKS.items():
        if importlib.util.find_spec(distribution) is None:
            print(f"{name}: not installed, skipped (uv run --group bench benchmarks/runner_overhead.py runs it)")
        else:
            frameworks[f"step: {name}"] = built(f"step: {name}", functools.partial(loop, dataset, steps))
    cases: dict[str, Callable[[], tuple[float, float]]] = {}
    for mode, epoch_mode in (("step", False), ("epoch", True)):
        cases[f"{mode}: raw"] = functools.partial(raw_loop, dataset, steps, epoch_mode=epoch_mode)
        for variant, options in RUNNER_VARIANTS.items():
            run = functools.partial(runner_loop, dataset, steps, epoch_mode=epoch_mode, **options)
            cases[f"{mode}: {variant}"] = built(f"{mode}: {variant}", run)
        if not epoch_mode:
            cases.update(frameworks)
    return cases


def print_training(
    timings: dict[str, list[tuple[float, float]]], builds: dict[str, list[float]], steps: int, repeats: int
) -> None:
    print(f"training: {steps} steps, batch {BATCH}, MLP 64-256-256-10, AdamW, 1 thread, {repeats} repeats")
    print(
        f"{'mode':<6} {'variant':<31} {'median s':>9} {'ms/step':>8} {'ratio':>6} {'cpu ratio':>9} "
        f"{'min ratio':>9} {'build s':>8}"
    )
    for key, values in timings.items():
        mode, name = key.split(": ", 1)
        raw = timings[f"{mode}: raw"]
        ratio = statistics.median(wall / base[0] for (wall, _), base in zip(values, raw))
        cpu_ratio = statistics.median(cpu / base[1] for (_, cpu), base in zip(values, raw))
        min_ratio = min(wall for wall, _ in values) / min(wall for wall, _ in raw)
        build = f"{statistics.median(builds[key]):8.3f}" if key in builds else f"{'':>8}"
        median = statistics.median(wall for wall, _ in values)
        print(
            f"{mode:<6} {name:<31} {median:9.4f} {median / steps * 1e3:8.3f} {ratio:6.3f} {cpu_ratio:9.3f} "
            f"{min_ratio:9.3f} {build}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--checkpoint-repeats", type=int, default=25)
    parser.add_argument("--save-repeats", type=int, default=10, help="runs timing a save's cost to the loop")
    args = parser.parse_args()
    if args.steps <= 0 or args.steps % STEPS_PER_EPOCH:
        parser.error(
            f"--steps must be a positive multiple of {STEPS_PER_EPOCH} (the batches of one epoch, so epoch mode "
            f"runs the same number of steps), got {args.steps}"
        )
    torch.set_num_threads(1)
    dataset = make_data()
    builds: dict[str, list[float]] = {}
    cases = training_cases(dataset, args.steps, builds)
    interleave(cases, 1)  # warm up imports, allocator and caches
    for values in builds.values():
        values.clear()
    timings = interleave(cases, args.repeats)
    print_training(timings, builds, args.steps, args.repeats)
    print_save_cost_in_loop(dataset, args.steps, args.save_repeats)
    for width in (256, 1024):
        print_checkpoint_costs(dataset, width, args.checkpoint_repeats)


if __name__ == "__main__":
    main()
