"""One TorchFT replica group of a test: ``python ft_replica.py ROOT REPLICA STEPS [--sleep S] [--stack parallel]``.

The lighthouse address comes from ``TORCHFT_LIGHTHOUSE``.  The job trains a small regressor in
step mode, one process per replica group, and writes into ``ROOT``:

- ``progress-{replica}``: its global step after every applied optimizer step;
- ``final-{replica}.pt``: the trained weights (full tensors), at the end;
- ``report-{replica}.json``: the loader position it started from (restored from its
  per-replica loader checkpoint), the global step of its first applied update in this process,
  and the seconds from its launch (and from the end of its imports) to that update.

It sleeps ``--sleep`` seconds after each update.  While the other group is out of the quorum and
the test is restarting it, it waits for that group's runner to be built, then trains slowly until
that group is back in the quorum (see ``wait_for_restarting_peer``).

With ``--stack parallel`` it is a ``ParallelRunner`` with FSDP2 (a one-rank shard axis per group).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn

from danling.runners import TorchRunner

IMPORTED = time.time()
#: When the test launched this process (``FT_LAUNCHED_AT``): a restart's recovery time includes the imports.
LAUNCHED = float(os.environ.get("FT_LAUNCHED_AT", IMPORTED))


def runner_class(stack: str) -> type:
    if stack == "parallel":
        from danling.runners.parallel_runner import ParallelRunner

        return ParallelRunner
    return TorchRunner


def build(base: type, sleep: float) -> type:
    class Replica(base):
        def __init__(self, config) -> None:
            super().__init__(config)
            generator = torch.Generator().manual_seed(0)
            inputs = torch.randn(256, 8, generator=generator)
            self.datasets.train = torch.utils.data.TensorDataset(inputs, inputs.sum(-1, keepdim=True))
            self.model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
            self.criterion = nn.MSELoss()
            self.first_update: dict | None = None

        def after_optimizer_step(self) -> None:
            super().after_optimizer_step()
            step = self.train_state.global_step
            if self.first_update is None:
                now = time.time()
                self.first_update = {"step": step, "since_launch": now - LAUNCHED, "since_import": now - IMPORTED}
            path = os.path.join(self.root, f"progress-{self.config.ft.replica_id}")
            with open(path + ".tmp", "w") as file:
                file.write(str(step))
            os.replace(path + ".tmp", path)
            time.sleep(sleep)  # leave time for the test to kill a group mid-run
            if self.ft.manager.num_participants() < self.ft.group_size:
                self.wait_for_restarting_peer()

        def wait_for_restarting_peer(self) -> None:
            # Test scaffolding: while the test restarts the other group (``restarting-{peer}``), the
            # survivor waits until that group's runner is built (``ready-{peer}``), then trains slowly
            # until the group joins the quorum: a cold start (imports) takes longer than this short run.
            peer = 1 - self.config.ft.replica_id
            restarting, ready = (os.path.join(self.root, f"{kind}-{peer}") for kind in ("restarting", "ready"))
            if not os.path.exists(restarting):
                return
            deadline = time.monotonic() + 120
            while not os.path.exists(ready) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.25)

    return Replica


def full_state(runner) -> dict[str, torch.Tensor]:
    state = runner.unwrap(runner.model).state_dict()
    return {
        name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
        for name, value in state.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("replica", type=int)
    parser.add_argument("steps", type=int)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--stack", default="ddp")
    args = parser.parse_args()
    config = {
        "dir": os.path.join(args.root, f"replica{args.replica}"),  # the restarted group finds its loader checkpoint
        "name": "ft",
        "stack": args.stack,
        "steps": args.steps,
        "seed": 3,
        "log": False,
        "optim": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
        "sched": {"type": "step", "step_size": 10, "gamma": 0.5},
        "dataloader": {"batch_size": 4, "shuffle": True},
        "checkpoint": {"interval": 5, "enable_ft_dataloader_checkpoints": True},
        "ft": {"enabled": True, "replica_id": args.replica, "group_size": 2, "process_group_timeout_ms": 5000},
    }
    if args.stack == "parallel":
        config["fsdp"] = {"enabled": True}
    else:  # windows of 3 batches: a pass of 32 ends mid-window, flushed across the groups
        config["accum_steps"] = 3
    runner = build(runner_class(args.stack), args.sleep)(config)
    runner.root = args.root
    start_position = dict(runner.loop_state.batches)
    with open(os.path.join(args.root, f"ready-{args.replica}"), "w"):
        pass
    # both groups start together (one that starts alone trains alone until the other arrives)
    peer_ready, deadline = os.path.join(args.root, f"ready-{1 - args.replica}"), time.monotonic() + 120
    while not os.path.exists(peer_ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.train()
    torch.save(full_state(runner), os.path.join(args.root, f"final-{args.replica}.pt"))
    report = {"start_position": start_position, "first_update": runner.first_update}
    with open(os.path.join(args.root, f"report-{args.replica}.json"), "w") as file:
        json.dump(report, file)
    runner.close()


if __name__ == "__main__":
    main()
