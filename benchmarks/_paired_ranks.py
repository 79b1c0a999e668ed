"""What the multi-process benchmarks share (not a benchmark itself: ``nox -s bench`` and the docs skip ``_*.py``).

Each benchmark gives ``run_ranks`` a function building its cases for a rank; ``run_ranks`` starts
``world_size`` gloo ranks on loopback, every rank times its cases in interleaved rounds after one
warm-up round (``time_cases``), and rank 0's timings come back to be printed as one table of
medians and ratios to a baseline (``print_table``).
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
Cases = dict[str, Callable[[], tuple[float, float]]]  # case -> a function timing one run of it
CaseBuilder = Callable[[int, int], Cases]  # (rank, steps) -> the cases that rank times


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


def time_cases(cases: Cases, repeats: int) -> Timings:
    """Run every case once per round, ``repeats`` timed rounds after a warm-up one (imports, allocator, caches)."""
    timings: Timings = {name: [] for name in cases}
    for repeat in range(repeats + 1):
        for name, case in cases.items():
            timing = case()
            if repeat:
                timings[name].append(timing)
    return timings


def _rank(
    rank: int, port: int, world_size: int, build_cases: CaseBuilder, steps: int, repeats: int, results: Any
) -> None:
    join_group(rank, port, world_size)
    timings = time_cases(build_cases(rank, steps), repeats)
    if rank == 0:
        results.put(timings)
    dist.destroy_process_group()


def run_ranks(build_cases: CaseBuilder, world_size: int, steps: int, repeats: int) -> Timings:
    """Time ``build_cases(rank, steps)`` on every rank of a fresh gloo group; return rank 0's timings.

    ``build_cases`` must be a module-level function of the benchmark (spawned ranks import it).
    """
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_rank, args=(rank, port, world_size, build_cases, steps, repeats, results))
        for rank in range(world_size)
    ]
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
