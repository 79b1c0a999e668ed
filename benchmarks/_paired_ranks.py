"""What the multi-process benchmarks share (not a benchmark itself: ``nox -s bench`` and the docs skip ``_*.py``).

Each benchmark starts ``world_size`` gloo ranks on loopback (``run_ranks``); every rank times its
cases in interleaved rounds after one warm-up round (``time_cases``), and rank 0's timings come
back to be printed as one table of medians and ratios to a baseline (``print_table``).
"""

from __future__ import annotations

import os
import socket
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import distributed as dist

Timings = dict[str, list[tuple[float, float]]]  # case -> (wall s, CPU s) per timed round


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def join_group(rank: int, port: int, world_size: int) -> None:
    """Environment, one CPU thread and the default gloo group for ``rank``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def time_cases(cases: dict[str, Callable[[], tuple[float, float]]], repeats: int) -> Timings:
    """Run every case once per round, ``repeats`` timed rounds after a warm-up one (imports, allocator, caches)."""
    timings: Timings = {name: [] for name in cases}
    for repeat in range(repeats + 1):
        for name, case in cases.items():
            timing = case()
            if repeat:
                timings[name].append(timing)
    return timings


def run_ranks(worker: Callable[..., None], world_size: int, *args: Any) -> Timings:
    """Spawn ``worker(rank, port, *args, results)`` on every rank; return what rank 0 put in ``results``."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=worker, args=(rank, port, *args, results)) for rank in range(world_size)]
    for process in processes:
        process.start()
    timings = results.get()
    for process in processes:
        process.join()
    return timings


def print_table(timings: Timings, baseline: str, steps: int) -> None:
    """Median wall time, ms per step, and the median, CPU-time and fastest-repeat ratios to ``baseline``."""
    raw = timings[baseline]
    width = max(len(name) for name in timings) + 2
    print(f"{'variant':<{width}} {'median s':>9} {'ms/step':>8} {'ratio':>6} {'cpu ratio':>9} {'min ratio':>9}")
    for name, values in timings.items():
        ratio = statistics.median(wall / base[0] for (wall, _), base in zip(values, raw))
        cpu_ratio = statistics.median(cpu / base[1] for (_, cpu), base in zip(values, raw))
        min_ratio = min(wall for wall, _ in values) / min(wall for wall, _ in raw)
        median = statistics.median(wall for wall, _ in values)
        print(
            f"{name:<{width}} {median:9.4f} {median / steps * 1e3:8.3f} {ratio:6.3f} {cpu_ratio:9.3f} {min_ratio:9.3f}"
        )
