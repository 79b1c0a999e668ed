"""Runners and data shared by the runner tests: the example transformer on a tiny next-token task."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.runners import TorchRunner
from danling.runners.parallel_runner import ParallelRunner
from danling.runners.parallel_runner.transformer import Transformer

VOCAB, LENGTH, SAMPLES = 11, 6, 16


class SequenceCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy over ``(batch, sequence, vocab)`` logits."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.flatten(0, 1), target.flatten())


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (SAMPLES, LENGTH + 1), generator=generator)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def build_model() -> Transformer:
    # drawn from the runner's seeded generator: every rank of a ParallelRunner must draw the same weights
    return Transformer(VOCAB, dim=8, num_layers=2, num_heads=2)


def config(root: str, batch_size: int, **overrides) -> dict:
    settings = {
        "epochs": 2,
        "seed": 0,
        "log": False,
        "workspace_root": root,
        "optim": {"type": "adamw", "lr": 0.01},
        "dataloader": {"batch_size": batch_size, "shuffle": False},
        "checkpoint": {"async_mode": "disabled"},
        "adopt_process_group": True,  # under run_workers the group exists before the runner
    }
    settings.update(overrides)
    return settings


class _Task:
    def __init__(self, config):
        super().__init__(config)
        self.datasets.train = dataset()
        self.model = build_model()
        self.criterion = SequenceCrossEntropy()


class TransformerRunner(_Task, ParallelRunner):
    """``ParallelRunner`` on the example transformer."""


class TransformerTorchRunner(_Task, TorchRunner):
    """The same task on a one-process ``TorchRunner``: the reference."""


def full_parameters(runner) -> dict[str, torch.Tensor]:
    """Every parameter as a whole tensor (gathered from shards), by name."""
    model = runner.unwrap(runner.model)
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in model.named_parameters()
    }
