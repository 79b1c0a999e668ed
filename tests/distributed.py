"""Run a function in several real processes joined by a gloo process group on loopback.

Usage in a test::

    from tests.distributed import run_workers

    def _sum_ranks(rank, world_size):
        t = torch.tensor([float(rank)])
        torch.distributed.all_reduce(t)
        return t.item()

    def test_all_reduce():
        assert run_workers(_sum_ranks, world_size=3) == [3.0, 3.0, 3.0]

The worker function must be defined at module level in an importable module (the test
module is fine: ``pythonpath = ["."]`` and the ``__init__.py`` files make ``tests`` a package),
and its arguments and return value must pickle.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(
    rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, results: Any, env: dict[str, str]
) -> None:
    os.environ.update(env)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        value = fn(rank, world_size, *args)
        results.put((rank, True, value))
    except BaseException:  # report every failure, including assertion errors, to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _check_alive(processes: list, outcomes: dict, deadline: float, timeout: float) -> None:
    """Fail fast when a worker died without reporting (a crash in C++, an import error), or on timeout."""
    for rank, process in enumerate(processes):
        if rank not in outcomes and process.exitcode is not None:
            raise AssertionError(f"rank {rank} exited with code {process.exitcode} without reporting a result")
    if time.monotonic() > deadline:
        raise AssertionError(f"distributed workers timed out after {timeout}s; finished: {sorted(outcomes)}")


def run_workers(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return results ordered by rank.

    Raises ``AssertionError`` carrying the worker's traceback when any rank fails or times out.
    """
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_entry, args=(rank, world_size, port, fn, args, results, dict(env or {})))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, tuple[bool, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outcomes) < world_size:
            try:
                rank, ok, value = results.get(timeout=0.5)
            except queue.Empty:
                _check_alive(processes, outcomes, deadline, timeout)
                continue
            outcomes[rank] = (ok, value)
            if not ok:
                raise AssertionError(f"rank {rank} failed:\n{value}")
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    return [outcomes[rank][1] for rank in range(world_size)]
