"""A training job that a test preempts with SIGTERM: ``python preemptible.py ROOT STEPS [--sleep S]``.

It trains a small classifier in step mode with ``auto_resume`` (so the same command continues a
stopped run), writes ``progress-{rank}`` with its global step after every optimizer step and its
pid in ``pid-{rank}``, and at the end saves the trained weights to ``final-{rank}.pt``.  Launched
by ``torchrun`` it trains under DDP on gloo.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from danling.runners import TorchRunner


class Preemptible(TorchRunner):
    def __init__(self, config, sleep: float, dropout: float) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(96, 8, generator=generator)
        self.datasets.train = torch.utils.data.TensorDataset(inputs, (inputs.sum(-1) > 0).long())
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))
        self.criterion = nn.CrossEntropyLoss()
        self.sleep = sleep

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        path = os.path.join(self.config.workspace_root, f"progress-{self.rank}")
        with open(path + ".tmp", "w") as file:
            file.write(str(self.train_state.global_step))
        os.replace(path + ".tmp", path)
        time.sleep(self.sleep)  # leave time for the signal to arrive mid-run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("steps", type=int)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--dropout", type=float, default=0.1)
    args = parser.parse_args()
    config = {
        "workspace_root": args.root,
        "name": "preemptible",
        "steps": args.steps,
        "seed": 7,
        "log": False,
        "auto_resume": True,
        "optim": {"type": "adamw", "lr": 0.01},
        "dataloader": {"batch_size": 8, "shuffle": True},
        "checkpoint": {"interval": 5},
    }
    runner = Preemptible(config, args.sleep, args.dropout)
    with open(os.path.join(args.root, f"pid-{runner.rank}"), "w") as file:
        file.write(str(os.getpid()))
    runner.train()
    torch.save(runner.unwrap(runner.model).state_dict(), os.path.join(args.root, f"final-{runner.rank}.pt"))
    runner.close()


if __name__ == "__main__":
    main()
