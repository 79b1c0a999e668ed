"""What ``TorchRunner`` costs over a hand-written DDP loop on two processes (gloo, CPU), and what its DCP saves block.

Run: ``.venv/bin/python benchmarks/ddp_overhead.py [--repeats 11] [--steps 128] [--checkpoint-repeats 15]``

Training task (the same for every variant): 8192 samples of 64 features, 10 classes, an MLP
64-256-256-10, AdamW, 64 samples per rank per step (shuffled), ``--steps`` optimizer steps, one
CPU thread per process, two processes joined by gloo on loopback.

- ``DDP loop``: ``DistributedDataParallel`` around the model, then a plain loop over a
  ``DataLoader`` with a ``DistributedSampler`` (``set_epoch`` at each pass): forward, loss,
  backward, step.
- ``runner (quiet)``: ``TorchRunner`` (it wraps the model in DDP itself) with ``log=False`` and
  ``checkpoint.load_only=True``: no log file, no checkpoint writes; progress lines still
  printed, to a null stream here.  Target: at most 1.05x the DDP loop.
- ``runner (default)``: ``TorchRunner`` with its default config: a log file, progress lines and
  asynchronous checkpoints about every 20th of the run, which rank 0 writes as files
  (``checkpoint.backend="auto"`` is ``file`` for DDP; the final save is written while the runner
  closes, which is not timed).
- ``runner (no lines)``: the quiet runner with ``log_interval=0`` (no progress lines).  Each
  progress line (one every 2 steps here) averages the meters over the ranks; the sums ride the
  next step's gradient all-reduce (``WindowTotalHook.carry_values``) and the line is printed after
  that step, so no rank waits for a collective of its own.  The difference to ``runner (quiet)``
  is what the lines cost.  On several ranks the runner also weighs each micro-batch by the number
  of targets its loss averages and sums those counts over the ranks, so that ranks with uneven
  batches still give every sample the same weight; that sum travels in the same all-reduce
  (``danling.runners.ddp_comm.WindowTotalHook``, appended to the last bucket).  Both fall back to
  a separate all-reduce only where the hook stands aside (a user's communication hook, bf16 or
  fp16 parameters, TorchFT).

The variants are interleaved ``--repeats`` times after one warm-up round, both ranks starting
each together (a barrier); rank 0 prints the median wall time of the training (building the
runner is timed separately as ``build s``), the median ratio to the DDP loop timed in the same
round, the same ratio in CPU time of the process, and the ratio of the fastest repeats
(``min ratio``): the last two are disturbed less by other programs on a busy machine.

Checkpoints, for the trained task and for a larger model (MLP of width 1024, 1.1M parameters),
after a few steps so that AdamW's state exists: how long ``save_checkpoint`` blocks rank 0 with
``checkpoint.backend="dcp"``, synchronous (``async_mode="disabled"``: DCP writes every rank's
shards, rank 0 writes the metadata and the pointer, a barrier) and asynchronous
(``async_mode="async"``: it returns once DCP has copied the state to host memory; the write is
waited for, untimed, before the next timing), against what a user's DDP loop does, ``torch.save``
of the same ``runner.state_dict()`` on rank 0 alone (one path, overwritten).  Every save follows
a training step (untimed) and a barrier; medians of ``--checkpoint-repeats``, the median ratio of
the pairs timed in the same round, and the ratio of the fastest.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import queue
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
import torch.multiprocessing as mp
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from danling.runners import TorchRunner
from danling.runners.checkpoints.dcp import DCPCheckpointManager

SAMPLES, FEATURES, CLASSES, BATCH, WORLD_SIZE = 8192, 64, 10, 64, 2
#: Checkpoint variants: the runner's ``checkpoint.async_mode``.
DCP_MODES = {"dcp sync": "disabled", "dcp async": "async"}


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


@contextlib.contextmanager
def shared_directory() -> Iterator[str]:
    """A temporary folder that rank 0 makes and every rank uses (DCP writes all shards under one path)."""
    root = tempfile.mkdtemp(prefix="ddp-overhead-") if dist.get_rank() == 0 else None
    box = [root]
    dist.broadcast_object_list(box, src=0)
    try:
        yield box[0]
    finally:
        dist.barrier()  # nobody writes there any more
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def ddp_loop(dataset: TensorDataset, steps: int, rank: int) -> tuple[float, float, float]:
    """The hand-written DDP loop; seconds to build it, and wall and CPU seconds spent training."""
    start = time.perf_counter()
    model = DistributedDataParallel(make_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    sampler = DistributedSampler(dataset, num_replicas=WORLD_SIZE, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, drop_last=True)
    built = time.perf_counter()
    dist.barrier()
    begun, cpu = time.perf_counter(), time.process_time()
    step, epoch = 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        for inputs, labels in loader:
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == steps:
                break
        epoch += 1
    return built - start, time.perf_counter() - begun, time.process_time() - cpu


class BenchmarkRunner(TorchRunner):
    def __init__(self, config, dataset: TensorDataset, width: int = 256):
        super().__init__(config)
        self.datasets.train = dataset
        self.model = make_model(width)
        self.criterion = nn.CrossEntropyLoss()


def runner_config(root: str, steps: int, *, quiet: bool, lines: bool = True) -> dict:
    config = {
        "steps": steps,
        "seed": 0,
        "workspace_root": root,
        "optim": {"type": "adamw", "lr": 1e-3},
        "dataloader": {"batch_size": BATCH},
        "adopt_process_group": True,  # worker() starts the group before the runners
    }
    if quiet:
        config.update({"log": False, "checkpoint": {"load_only": True}})
    if not lines:
        config["log_interval"] = 0
    return config


def runner_loop(dataset: TensorDataset, steps: int, *, quiet: bool, lines: bool = True) -> tuple[float, float, float]:
    """Seconds to build the runner, and wall and CPU seconds in ``runner.train()`` (stdout discarded)."""
    with shared_directory() as root, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        runner = BenchmarkRunner(runner_config(root, steps, quiet=quiet, lines=lines), dataset)
        built = time.perf_counter()
        assert isinstance(runner.model, DistributedDataParallel)
        dist.barrier()
        begun, cpu = time.perf_counter(), time.process_time()
        runner.train()
        wall, cpu = time.perf_counter() - begun, time.process_time() - cpu
        assert runner.window_total_hook.registered  # the loss-normalizer total rode the gradient all-reduce
        runner.close()
        assert runner.train_state.global_step == steps
    return built - start, wall, cpu


def checkpoint_costs(dataset: TensorDataset, width: int, repeats: int) -> dict[str, list[float]]:
    """Rank 0's seconds blocked in ``torch.save(runner.state_dict())`` (rank 0 only) and in DCP saves."""
    timings: dict[str, list[float]] = {}
    rank = dist.get_rank()
    with shared_directory() as root, contextlib.redirect_stdout(io.StringIO()):
        runners = {}
        for name, mode in DCP_MODES.items():
            config = runner_config(os.path.join(root, name.replace(" ", "-")), 4, quiet=False)
            config.update({"log": False, "checkpoint": {"backend": "dcp", "async_mode": mode, "interval": 0}})
            runners[name] = BenchmarkRunner(config, dataset, width)
            assert isinstance(runners[name].checkpoint_manager, DCPCheckpointManager)
            runners[name].train()  # optimizer state exists, as in a real run
        source, background = runners["dcp sync"], runners["dcp async"]
        plain = os.path.join(root, "plain.pth")
        batch = next(iter(source.dataloaders["train"]))

        def timed(name: str, runner: BenchmarkRunner, save: Callable[[], object], *, everywhere: bool = True) -> None:
            runner.train_step(batch)  # untimed, on every rank (DDP): a run saves right after an optimizer step
            dist.barrier()
            if everywhere or rank == 0:
                start = time.perf_counter()
                save()
                timings.setdefault(name, []).append(time.perf_counter() - start)

        for _ in range(repeats):
            timed("dcp async", background, lambda: background.save_checkpoint(force=True))
            background.checkpoint_manager.wait()  # written before the next timing, as between real saves
            timed("torch.save", source, lambda: torch.save(source.state_dict(), plain), everywhere=False)
            timed("dcp sync", source, lambda: source.save_checkpoint(force=True))
        for runner in runners.values():
            runner.close()
    return timings


def worker(rank: int, port: int, args: argparse.Namespace, results: mp.Queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    dataset = make_data()
    cases: dict[str, Callable[[], tuple[float, float, float]]] = {
        "DDP loop": lambda: ddp_loop(dataset, args.steps, rank),
        "runner (quiet)": lambda: runner_loop(dataset, args.steps, quiet=True),
        "runner (default)": lambda: runner_loop(dataset, args.steps, quiet=False),
        "runner (no lines)": lambda: runner_loop(dataset, args.steps, quiet=True, lines=False),
    }
    timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
    for repeat in range(args.repeats + 1):  # the first round warms up imports, allocator and caches
        for name, case in cases.items():
            timing = case()
            if repeat:
                timings[name].append(timing)
    checkpoints = {width: checkpoint_costs(dataset, width, args.checkpoint_repeats) for width in (256, 1024)}
    if rank == 0:
        results.put((timings, checkpoints))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_training(timings: dict[str, list[tuple[float, float, float]]], steps: int, repeats: int) -> None:
    raw = timings["DDP loop"]
    print(
        f"DDP training: {WORLD_SIZE} processes (gloo), {steps} steps, batch {BATCH} per rank, "
        f"MLP 64-256-256-10, AdamW, 1 thread each, {repeats} repeats (rank 0's times)"
    )
    print(
        f"{'variant':<18} {'median s':>9} {'ms/step':>8} {'ratio':>6} {'cpu ratio':>9} {'min ratio':>9} {'build s':>8}"
    )
    for name, values in timings.items():
        ratio = statistics.median(wall / base[1] for (_, wall, _), base in zip(values, raw))
        cpu_ratio = statistics.median(cpu / base[2] for (_, _, cpu), base in zip(values, raw))
        min_ratio = min(wall for _, wall, _ in values) / min(wall for _, wall, _ in raw)
        median = statistics.median(wall for _, wall, _ in values)
        build = statistics.median(built for built, _, _ in values)
        print(
            f"{name:<18} {median:9.4f} {median / steps * 1e3:8.3f} {ratio:6.3f} {cpu_ratio:9.3f} {min_ratio:9.3f} "
            f"{build:8.3f}"
        )


def print_checkpoints(checkpoints: dict[int, dict[str, list[float]]], repeats: int) -> None:
    print(
        f"checkpoint save, rank 0 blocked ({WORLD_SIZE} ranks, {repeats} repeats; "
        "torch.save: rank 0 alone; ratios to torch.save of the same round)"
    )
    print(f"{'width':>5} {'parameters':>10} {'variant':<12} {'median ms':>9} {'ratio':>6} {'min ratio':>9}")
    for width, costs in checkpoints.items():
        parameters = sum(p.numel() for p in make_model(width).parameters())
        base = costs["torch.save"]
        for name in ("torch.save", *DCP_MODES):
            values = costs[name]
            ratio = statistics.median(a / b for a, b in zip(values, base))
            min_ratio = min(values) / min(base)
            median = statistics.median(values) * 1e3
            print(f"{width:>5} {parameters / 1e6:9.2f}M {name:<12} {median:9.2f} {ratio:6.3f} {min_ratio:9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--checkpoint-repeats", type=int, default=15)
    args = parser.parse_args()
    for flag in ("repeats", "steps", "checkpoint_repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=worker, args=(rank, port, args, results)) for rank in range(WORLD_SIZE)]
    for process in processes:
        process.start()
    while True:  # a rank that dies never reports: stop instead of waiting forever
        try:
            timings, checkpoints = results.get(timeout=5)
            break
        except queue.Empty:
            failed = [f"rank {rank} (exit code {p.exitcode})" for rank, p in enumerate(processes) if p.exitcode]
            if failed:
                for process in processes:
                    process.kill()
                raise SystemExit(f"benchmark worker failed: {', '.join(failed)}") from None
    for process in processes:
        process.join()
    print_training(timings, args.steps, args.repeats)
    print_checkpoints(checkpoints, args.checkpoint_repeats)


if __name__ == "__main__":
    main()
