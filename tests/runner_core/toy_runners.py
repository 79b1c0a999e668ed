"""Small runners and data shared by the runner tests (real models, real loaders, real files)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from danling.runners import TorchRunner


def base_config(tmp_path, **overrides: Any) -> dict[str, Any]:
    """A quiet config writing under ``tmp_path``: no log file, synchronous checkpoints."""
    config: dict[str, Any] = {
        "log": False,
        "workspace_root": str(tmp_path),
        "seed": 0,
        "checkpoint": {"async_mode": "disabled"},
    }
    config.update(overrides)
    return config


def classification_data(samples: int = 24, features: int = 4, classes: int = 3, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, features, generator=generator)
    labels = torch.randint(0, classes, (samples,), generator=generator)
    return TensorDataset(inputs, labels)


class ClassifierRunner(TorchRunner):
    """A linear classifier on random data with ``train`` and ``val`` splits."""

    def __init__(self, config: Any, *, samples: int = 24, val_samples: int = 8) -> None:
        super().__init__(config)
        self.datasets.train = classification_data(samples)
        self.datasets.val = classification_data(val_samples, seed=1)
        self.model = nn.Linear(4, 3)
        self.criterion = nn.CrossEntropyLoss()


class ListDataset(Dataset):
    """A dataset over a list of ready-made batches (``batch_size=None`` loaders yield them as they are)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Any:
        return self.batches[index]


class ScalarRunner(TorchRunner):
    """``y = w * x`` with ``w = 1`` and SGD: gradients are easy to compute by hand.

    ``batches`` are given as they should arrive (``dataloader.batch_size=None``, no shuffling).
    """

    def __init__(self, config: Any, batches: list[Any], criterion: Any = None) -> None:
        super().__init__(config)
        self.datasets.train = ListDataset(batches)
        self.model = nn.Linear(1, 1, bias=False)
        nn.init.ones_(self.model.weight)
        self.criterion = nn.MSELoss() if criterion is None else criterion


def scalar_config(tmp_path, **overrides: Any) -> dict[str, Any]:
    config = base_config(
        tmp_path,
        epochs=1,
        optim={"type": "sgd", "lr": 0.1},
        dataloader={"batch_size": None, "shuffle": False},
        checkpoint={"async_mode": "disabled", "load_only": True},
    )
    config.update(overrides)
    return config
