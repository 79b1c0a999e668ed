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

How a run is made dependable on a cold machine (fresh virtual environment, no bytecode or
compile caches, other processes busy on both cores):

- The rendezvous store lives in the parent, bound to a port the kernel picks at ``bind`` time, and
  stays open until every rank is done: no port is chosen first and bound later, so nothing can take
  it in between, and no rank ever talks to a store left over from an earlier run.
- Start-up (spawning, importing torch and the test module, connecting) and the work itself have
  separate clocks: ``startup_timeout`` is generous because a cold import of torch can take a
  minute on a loaded machine, and ``timeout`` starts only once every rank reported ready.  The
  process group's own timeout is ``timeout``, so a collective that waits for a lost peer fails
  in the rank with a traceback instead of idling.
- A rank that dies without reporting (a crash in C++, ``os._exit``) fails the run at once, naming
  its exit code; on a timeout every unfinished rank's Python stack is dumped (``faulthandler`` on
  ``SIGUSR1``) into the error, so a hang says where it hung.  When something else stops the run
  first (pytest-timeout, Ctrl-C), the stacks go to stderr and onto that error as a note.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HOST = "127.0.0.1"
_READY = "ready"
_GO = "go"
#: Whether stacks of hung ranks can be dumped on request (POSIX signals).
_CAN_DUMP = hasattr(signal, "SIGUSR1")
#: A rank's open stack-dump file (kept referenced for as long as the rank lives).
_DUMP_FILES: list[Any] = []


def free_port() -> int:
    """A TCP port on loopback that is free right now (for code that must pick its own ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _entry(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple,
    results: Any,
    env: dict[str, str],
    timeouts: tuple[float, float],
    stack_file: str,
) -> None:
    startup_timeout, timeout = timeouts
    os.environ.update(env)
    os.environ.update(
        MASTER_ADDR=HOST,
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    if _CAN_DUMP:
        _DUMP_FILES.append(open(stack_file, "w"))  # noqa: SIM115 - open for life: the handler writes to it
        faulthandler.register(signal.SIGUSR1, file=_DUMP_FILES[-1], all_threads=True)
    try:
        store = dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=startup_timeout))
        store.add(_READY, 1)
        store.wait([_GO])  # every rank is up: the parent starts the clock of the work now
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        # Every rank has finished connecting before any runs (and may tear the group down): a rank that
        # leaves early would otherwise close sockets that a slower peer is still setting up.
        dist.barrier()
        outcome = (rank, True, fn(rank, world_size, *args))
    except BaseException:  # report every failure, including assertion errors, to the parent
        outcome = (rank, False, traceback.format_exc())
    # Deliver the outcome before tearing anything down: the queue's feeder thread sends it, and
    # torch 2.6's destroy_process_group can block holding the GIL once a peer has gone.
    results.put(outcome)
    results.close()
    results.join_thread()
    if dist.is_initialized():
        dist.destroy_process_group()


class _Run:
    """The parent's view of one ``run_workers`` call: its processes, what they reported, and its clocks."""

    def __init__(self, processes: list, store: Any, stack_files: list[str], timeouts: tuple[float, float]) -> None:
        self.processes = processes
        self.store = store
        self.stack_files = stack_files
        self.startup_timeout, self.timeout = timeouts
        self.outcomes: dict[int, tuple[bool, Any]] = {}
        self.started = False
        self.deadline = time.monotonic() + self.startup_timeout

    def poll(self) -> None:
        """Fail fast on a rank that died without reporting; start the work once all are ready; enforce deadlines."""
        for rank, process in enumerate(self.processes):
            if rank not in self.outcomes and process.exitcode is not None:
                raise AssertionError(f"rank {rank} exited with code {process.exitcode} without reporting a result")
        if not self.started and self.store.add(_READY, 0) == len(self.processes):
            self.started = True
            self.deadline = time.monotonic() + self.timeout
            self.store.set(_GO, "1")
        if time.monotonic() > self.deadline:
            raise AssertionError(self._timeout_message())

    def interrupted(self, error: BaseException) -> None:
        """Attach the unfinished ranks' stacks to an interruption from outside (pytest-timeout, Ctrl-C)."""
        stacks = self._stacks()
        if stacks:
            print(stacks, file=sys.stderr)  # shown as the test's captured output
            if hasattr(error, "add_note"):  # Python 3.11+: part of the error itself
                error.add_note(stacks)

    def _timeout_message(self) -> str:
        if self.started:
            head = f"distributed workers timed out after {self.timeout}s of work; finished: {sorted(self.outcomes)}"
        else:
            ready = self.store.add(_READY, 0)
            head = (
                f"distributed workers did not start within {self.startup_timeout}s "
                f"({ready} of {len(self.processes)} ranks ready: spawning, importing and connecting)"
            )
        return head + self._stacks()

    def _stacks(self) -> str:
        """Every unfinished rank's Python stacks, dumped by the rank itself on ``SIGUSR1``."""
        hung = [rank for rank, process in enumerate(self.processes) if rank not in self.outcomes and process.is_alive()]
        if not _CAN_DUMP or not hung:
            return ""
        for rank in hung:
            os.kill(self.processes[rank].pid, signal.SIGUSR1)
        time.sleep(1.0)  # the handler runs in the rank as soon as its interpreter gets the signal
        parts = []
        for rank in hung:
            try:
                with open(self.stack_files[rank]) as file:
                    stacks = file.read().strip()
            except FileNotFoundError:
                stacks = ""
            stacks = stacks or "(no stack: the rank had not reached its entry point, e.g. still importing)"
            parts.append(f"\n--- rank {rank} (pid {self.processes[rank].pid}) ---\n{stacks}")
        return "\nstacks of the unfinished ranks:" + "".join(parts)

    def stop(self, succeeded: bool) -> None:
        """Let finished ranks exit (they tear their group down); kill any rank still running after a failure."""
        for process in self.processes:
            process.join(timeout=10 if succeeded else 5)
            if process.is_alive():
                process.kill()
                process.join()


def run_workers(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    startup_timeout: float = 600.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return results ordered by rank.

    ``startup_timeout`` bounds spawning, imports and the rendezvous; ``timeout`` the work, from the
    moment every rank is ready (it is also the process group's timeout for collectives).

    Raises ``AssertionError`` carrying the worker's traceback when any rank fails, or the hung
    ranks' stacks when a deadline passes.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be a positive number of processes, got {world_size}")
    if timeout <= 0 or startup_timeout <= 0:
        raise ValueError(f"timeouts must be positive seconds, got timeout={timeout}, startup_timeout={startup_timeout}")
    context = mp.get_context("spawn")
    results = context.Queue()
    # Bound here, on a port the kernel picks: nothing can take it before the ranks connect.
    store = dist.TCPStore(
        HOST, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=startup_timeout + timeout)
    )
    stack_dir = tempfile.mkdtemp(prefix="danling-workers-")
    stack_files = [os.path.join(stack_dir, f"rank{rank}.stacks") for rank in range(world_size)]
    processes = [
        context.Process(
            target=_entry,
            args=(
                rank,
                world_size,
                store.port,
                fn,
                args,
                results,
                dict(env or {}),
                (startup_timeout, timeout),
                stack_files[rank],
            ),
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    run = _Run(processes, store, stack_files, (startup_timeout, timeout))
    succeeded = False
    try:
        while len(run.outcomes) < world_size:
            try:
                rank, ok, value = results.get(timeout=0.2)
            except queue.Empty:
                run.poll()
                continue
            run.outcomes[rank] = (ok, value)
            if not ok:
                raise AssertionError(f"rank {rank} failed:\n{value}")
        succeeded = True
    except AssertionError:
        raise
    except BaseException as error:  # stopped from outside while ranks run: say where they were
        run.interrupted(error)
        raise
    finally:
        run.stop(succeeded)
        for path in stack_files:
            if os.path.exists(path):
                os.remove(path)
        os.rmdir(stack_dir)
        del store  # closes the rendezvous port once no rank can need it any more
    return [run.outcomes[rank][1] for rank in range(world_size)]
