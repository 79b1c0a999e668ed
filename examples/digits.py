"""Train a small MLP on scikit-learn's handwritten digits with ``TorchRunner``.

The digits dataset (1797 8x8 images, 10 classes) ships with scikit-learn, so nothing is
downloaded.  The run holds out a validation split, evaluates it after every epoch, keeps the
``latest`` and ``best`` checkpoints (best by validation accuracy), writes TensorBoard scalars and
the results as JSON, and prints a table of the epochs at the end::

    uv run examples/digits.py                       # 20 epochs, ~97% validation accuracy
    uv run examples/digits.py --epochs 5 --optim.lr 0.01 --tensorboard false
    uv run examples/digits.py --auto_resume true   # continue a run from its latest checkpoint

Outputs land in ``experiments/digits[-<git hash>]/<run id>/``: ``checkpoints/latest.pth``,
``checkpoints/best.pth``, ``tensorboard/``, ``results.json``, ``best.json`` and the log file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from danling.metrics import multiclass_metrics
from danling.runners import RunnerConfig, TorchRunner


class DigitsConfig(RunnerConfig):
    """Settings of the digits run; every key can be overridden on the command line (``--epochs 5``)."""

    epochs: int = 20
    seed: int = 1
    lineage: str = "digits"
    tensorboard: bool = True
    score_split: str = "val"
    score_name: str = "acc"
    hidden_size: int = 256
    dropout: float = 0.1
    val_fraction: float = 0.2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.optim.type = "adamw"
        self.optim.lr = 3e-3
        self.optim.weight_decay = 1e-4
        self.sched.type = "cosine"
        self.sched.scaling = "numerical"  # decay linearly in rate, not geometrically
        self.dataloader.batch_size = 64


def load_splits(val_fraction: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """The digits as float features in [0, 1] and integer labels, split at random into train and validation."""
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    features = torch.as_tensor(features, dtype=torch.float32) / 16.0  # pixel intensities are 0..16
    labels = torch.as_tensor(labels, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val_size = int(len(labels) * val_fraction)
    val, train = order[:val_size], order[val_size:]
    return TensorDataset(features[train], labels[train]), TensorDataset(features[val], labels[val])


class DigitsRunner(TorchRunner):
    """An MLP classifier of 8x8 digits; the runner builds loaders, optimizer and scheduler from the config."""

    def __init__(self, config: DigitsConfig) -> None:
        super().__init__(config)
        self.datasets.train, self.datasets.val = load_splits(config.val_fraction, config.seed)
        hidden = config.hidden_size
        self.model = nn.Sequential(
            nn.Linear(64, hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, 10),
        )
        self.criterion = nn.CrossEntropyLoss()
        self.evaluate_metrics = multiclass_metrics(num_classes=10, metrics=["acc", "f1"])


def result_table(runner: TorchRunner) -> str:
    """The per-epoch results as a text table, the best epoch marked with ``*``."""
    lines = [f"{'epoch':>5}  {'train loss':>10}  {'val loss':>8}  {'val acc':>7}  {'val f1':>6}"]
    for epoch, row in runner.results.items():
        marker = " *" if epoch == runner.best_index else ""
        train, val = row.get("train", {}), row.get("val", {})
        lines.append(
            f"{epoch + 1:>5}  {train.get('loss', float('nan')):>10.4f}  {val.get('loss', float('nan')):>8.4f}  "
            f"{val.get('acc', float('nan')):>7.4f}  {val.get('f1', float('nan')):>6.4f}{marker}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> DigitsRunner:
    """Parse command-line overrides, train, print the result table, and return the closed runner."""
    torch.set_num_threads(1)  # a model this small gains nothing from more threads, and loses on a busy machine
    config = DigitsConfig().parse(list(sys.argv[1:] if argv is None else argv))
    runner = DigitsRunner(config)
    try:
        runner.train()
        print(result_table(runner))
        best = runner.best_result
        if best is not None:
            print(f"best: epoch {best['index'] + 1}, val acc {best['val']['acc']:.4f}")
        print(f"outputs: {runner.workspace.dir}")
    finally:
        runner.close()
    return runner


if __name__ == "__main__":
    main()
