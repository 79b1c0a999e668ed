"""What the runner shows while it works: log lines, progress bars and scalar logs.

- ``format_result`` / ``format_step_line`` / ``format_epoch_line``: the text of progress and
  result lines.
- ``LoopProgress``: one loop's progress.  On an interactive terminal it is a tqdm bar whose
  postfix shows the latest numbers; otherwise it prints a plain line every ``interval``
  iterations (and the log file gets those lines either way).
- ``build_tensorboard_writer`` / ``log_to_wandb``: ``{split}/{metric}`` scalars for TensorBoard
  and Weights & Biases (each split on its own x-axis).

Formatting reads numbers off the device, so it happens only when a line is actually shown.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

import torch
from tqdm.auto import tqdm

__all__ = [
    "LoopProgress",
    "build_tensorboard_writer",
    "build_wandb_run",
    "format_epoch_line",
    "format_result",
    "format_step_line",
    "is_interactive",
    "log_to_files",
    "log_to_wandb",
    "step_prefix",
]

_VERBS = {"train": "training", "evaluate": "evaluating", "infer": "inferring"}


def _format_value(value: Any, spec: str) -> str:
    if type(value) is not float:
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else value.tolist()
        if isinstance(value, bool) or not isinstance(value, float):
            return str(value)
    text = format(value, spec)
    if value and spec[-1:] == "f" and not text.strip("-0."):  # e.g. a small learning rate would print as 0.0000
        return format(value, ".3e")
    return text


def format_result(result: Mapping[str, Any], spec: str = ".4f") -> str:
    r"""
    ``result`` as text: numbers as ``name: value`` joined by tabs; each nested mapping on its own
    line as ``key: <its numbers>``.

    Examples:
        >>> format_result({"loss": 0.123456, "steps": 3, "lr": 2e-6})
        'loss: 0.1235\tsteps: 3\tlr: 2.000e-06'
        >>> print(format_result({"train": {"loss": 0.5}, "val": {"loss": 0.25, "acc": torch.tensor(0.875)}}))
        train: loss: 0.5000
        val: loss: 0.2500	acc: 0.8750
    """
    scalars = [
        f"{key}: {_format_value(value, spec)}" for key, value in result.items() if not isinstance(value, Mapping)
    ]
    lines = ["\t".join(scalars)] if scalars else []
    lines += [f"{key}: {format_result(value, spec)}" for key, value in result.items() if isinstance(value, Mapping)]
    return "\n".join(lines)


def step_prefix(mode: str, split: str, iteration: int, length: int | str | None) -> str:
    r"""
    The start of a progress line: what the runner does, on which split, how far (``None``: unknown length).

    Examples:
        >>> step_prefix("evaluate", "val", 3, 8), step_prefix("infer", "test", 3, None)
        ('evaluating on val [3/8]', 'inferring on test [3/∞]')
    """
    verb = _VERBS.get(str(mode), f"running in {mode}")
    return f"{verb} on {split} [{iteration}/{'∞' if length is None else length}]"


def format_step_line(mode: str, split: str, iteration: int, length: int | None, result: Mapping[str, Any]) -> str:
    r"""
    A progress line: ``training on train [12/100]\tloss: 0.4000``.

    Examples:
        >>> format_step_line("train", "train", 12, None, {"loss": 0.4})
        'training on train [12/∞]\tloss: 0.4000'
    """
    return f"{step_prefix(mode, split, iteration, length)}\t{format_result(result)}"


def format_epoch_line(result: Mapping[str, Any], epoch: int | None, total_epochs: int | None) -> str:
    r"""
    An epoch summary: ``epoch [e/E]`` (``epoch`` counted from 1 here) and the result, one split per line.

    Examples:
        >>> print(format_epoch_line({"train": {"loss": 0.5}, "val": {"loss": 0.25}}, 1, 10))
        epoch [1/10]
        train: loss: 0.5000
        val: loss: 0.2500
    """
    text = format_result(result)
    if epoch is None:
        return text
    prefix = f"epoch [{epoch}/{total_epochs}]" if total_epochs is not None else f"epoch [{epoch}]"
    return f"{prefix}\n{text}" if text else prefix


def is_interactive(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default: standard output) is a terminal, where a progress bar can redraw."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def log_to_files(logger: logging.Logger | None, message: str) -> None:
    """Write ``message`` at INFO to ``logger``'s file handlers only (the console shows a progress bar)."""
    if logger is None:
        return
    handlers = [handler for handler in logger.handlers if isinstance(handler, logging.FileHandler)]
    if not handlers:
        return
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None)
    for handler in handlers:
        handler.handle(record)


class LoopProgress:
    r"""
    Progress of one loop over a split.

    Args:
        description: Shown before the bar (``"train"``, ``"evaluate val"`` ...).
        total: Iterations in the loop, if known.
        interval: Report every ``interval`` iterations (and at the last one); ``<= 0`` never.
        emit: Writes a full line: ``emit(line, console)``; ``console=False`` asks for the log
            file only (the bar already shows the numbers).
        stream: Where the bar draws; ``None`` means no bar (plain lines).
        start: Iterations already done (a resumed loop).
        clock: Seconds on a monotonic clock (``time.perf_counter``), for the time per iteration.

    Examples:
        >>> lines = []
        >>> progress = LoopProgress("train", total=5, interval=2, emit=lambda line, console: lines.append(line))
        >>> [progress.due(i) for i in range(5)]
        [False, True, False, True, True]
        >>> progress.report("step 2", {"loss": 0.5}); progress.close(); lines
        ['step 2']
    """

    def __init__(
        self,
        description: str,
        *,
        total: int | None,
        interval: int,
        emit: Callable[[str, bool], None],
        stream: IO | None = None,
        start: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total = total
        self.interval = interval
        self.emit = emit
        self.clock = clock
        self.last_time = clock()
        self.last_iteration = start - 1
        self.closed = False
        self.bar = None
        if stream is not None:
            self.bar = tqdm(total=total, initial=start, desc=description, file=stream, leave=False, dynamic_ncols=True)

    def due(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (0-based) gets a report: every ``interval``-th and the last."""
        if self.interval <= 0:
            return False
        return (iteration + 1) % self.interval == 0 or (self.total is not None and iteration + 1 == self.total)

    def advance(self) -> None:
        """Count one iteration (moves the bar)."""
        if self.bar is not None:
            self.bar.update()

    def seconds_per_iteration(self, iteration: int) -> float:
        """Wall time per iteration since the previous call."""
        now = self.clock()
        elapsed = (now - self.last_time) / max(iteration - self.last_iteration, 1)
        self.last_time, self.last_iteration = now, iteration
        return elapsed

    def report(self, line: str, result: Mapping[str, Any]) -> None:
        """Show a report: the bar's postfix and the log file on a terminal, a plain line otherwise."""
        if self.bar is None:
            self.emit(line, True)
            return
        self.bar.set_postfix_str(format_result(result, ".4g").replace("\t", " ").replace("\n", " | "), refresh=False)
        self.emit(line, False)

    def close(self) -> None:
        self.closed = True
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def build_tensorboard_writer(log_dir: str) -> Any:
    """A ``SummaryWriter`` writing to ``log_dir`` (needs the ``tensorboard`` package)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=log_dir)


def build_wandb_run(
    config: Mapping[str, Any], *, lineage: str, experiment: str, run_id: str, directory: str, **kwargs: Any
) -> Any:
    r"""
    ``wandb.init(...)`` from ``config.wandb``: project, group, name and directory default to the run's
    lineage, experiment, id and directory; the whole config is logged.  ``kwargs`` take precedence.

    Raises:
        RuntimeError: the ``wandb`` package is not installed.
    """
    try:
        import wandb
    except ImportError as error:
        raise RuntimeError("wandb is enabled, but the `wandb` package is not installed") from error
    settings = config["wandb"]
    defaults = {
        "project": settings.get("project") or lineage,
        "entity": settings.get("entity"),
        "group": settings.get("group") or experiment,
        "name": settings.get("name") or run_id,
        "job_type": settings.get("job_type"),
        "tags": [settings["tags"]] if isinstance(settings.get("tags"), str) else settings.get("tags"),
        "dir": settings.get("dir") or directory,
        "mode": settings.get("mode"),
        "config": config.dict() if hasattr(config, "dict") else dict(config),
    }
    for key, value in defaults.items():
        if value is not None:
            kwargs.setdefault(key, value)
    return wandb.init(**kwargs)


def log_to_wandb(run: Any, split: str, scalars: Mapping[str, float], step: int, known_splits: set[str]) -> None:
    r"""
    Log ``{split}/{name}`` scalars to the W&B ``run`` against the split's own x-axis ``{split}/step``.

    W&B silently drops a ``log(..., step=s)`` whose ``s`` is below a step it has already seen, and the runner
    numbers epoch-mode evaluation results by epoch while training lines use the global step.  So each split
    gets its own axis (declared with ``define_metric`` the first time the split is seen, recorded in
    ``known_splits``), and W&B's internal step only orders the calls.
    """
    axis = f"{split}/step"
    if split not in known_splits:
        run.define_metric(axis)
        run.define_metric(f"{split}/*", step_metric=axis)
        known_splits.add(split)
    run.log({axis: step, **{f"{split}/{name}": value for name, value in scalars.items()}})
