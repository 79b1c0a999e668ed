"""The runner's loops: training by epochs or by steps, evaluation and inference, top to bottom.

``train`` → ``train_epochs`` (or ``train_steps``) → one pass over a split (``train_epoch``, or a
split's turn ``train_split_steps``) → ``_train_batch`` → the runner's ``train_step`` (forward,
loss, metrics, backward, optimizer step) → meters → progress line → checkpoint → evaluation.

Each function takes the runner and calls its step-level hooks (``train_step``, ``evaluate_step``,
``infer_step``, ``save_checkpoint``, ``begin_step_log`` ...); none of them calls back into this module.
On several ranks a progress line's reduction travels while the next batch computes, and the line
is reported after that batch (``finish_step_log``), so no rank waits for the others to log.
The runner's public loop methods (``TorchRunner.train``, ``train_epoch``, ``evaluate_epoch`` ...)
only enter it.  A subclass that overrides one of the pass-level methods (``train_epoch``,
``evaluate_epoch``, ``train_split_steps``, ``evaluate_steps``) gets its override called for each
pass: ``_pass`` looks for it, so an override is never silently skipped.

``LoopState`` records where training is inside an epoch or a round (which split, how many of
its batches are done, how many passes over each split are complete).  It is saved with every
checkpoint next to the dataloaders' positions, so a run resumed from any optimizer step trains
on exactly the batches an uninterrupted run would, in the same order.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from danling.metrics import RoundDict

from .dataloaders import loader_length, set_sampler_epoch
from .reporting import LoopProgress, format_epoch_line
from .step import loss_normalizer
from .utils import RunnerMode

if TYPE_CHECKING:
    from .torch_runner import TorchRunner

__all__ = [
    "evaluate",
    "evaluate_epoch",
    "infer",
    "loop_entry",
    "train",
    "train_epoch",
    "train_epochs",
    "train_split_steps",
    "train_steps",
]


@dataclass(frozen=True)
class _Turn:
    """One split's turn in a step-mode round: the global step it ends at, the save cadence, its progress."""

    target: int
    checkpoint_interval: int
    progress: LoopProgress


def loop_entry(method: Callable) -> Callable:
    """Mark a runner method that only enters this module; the loop calls the module's function instead."""
    method.__loop_entry__ = True  # type: ignore[attr-defined]
    return method


def _pass(runner: TorchRunner, name: str, default: Callable) -> Callable:
    """The pass-level step the loop runs: the runner's override of ``name`` if it has one, else ``default``."""
    if getattr(getattr(type(runner), name, None), "__loop_entry__", False):
        return functools.partial(default, runner)
    return getattr(runner, name)


def train(runner: TorchRunner, train_splits: Sequence[str], evaluate_splits: Sequence[str]) -> RoundDict:
    """Train by epochs when ``config.epochs`` is set, else by optimizer steps; return ``runner.results``."""
    print(f"train: splits={list(train_splits)}")
    print(f"evaluate: splits={list(evaluate_splits)}")
    if runner.is_step_mode:
        return _pass(runner, "train_steps", train_steps)(train_splits, evaluate_splits)
    return _pass(runner, "train_epochs", train_epochs)(train_splits, evaluate_splits)


def _begin(runner: TorchRunner, mode: RunnerMode, split: str, metrics: Any) -> None:
    if runner.train_metrics is None and runner.evaluate_metrics is None:
        metrics = runner.metrics  # metrics assigned to ``self.metrics`` alone serve every mode
    runner.mode = mode
    runner.split = split
    runner.meters.reset()
    runner.metrics = metrics
    if metrics is not None:
        metrics.reset()


def _train_batch(runner: TorchRunner, batch: Any, meters: tuple[Any, Any, dict | None, bool], weigh: bool) -> None:
    """One micro-batch: weigh it (when accumulating or distributed), run ``train_step``, record loss and rate.

    With one micro-batch per step on one process the weight changes nothing (it cancels out), so
    it is not computed and the loss meter averages per-batch losses.
    """
    loss_meter, lr_meter, param_group, on_cpu = meters
    normalizer = None
    if weigh:
        normalizer = loss_normalizer(batch, runner.criterion)
        runner.set_loss_normalizer(normalizer)
    _, loss = runner.train_step(batch)
    if loss is not None:
        # A CPU loss is read at once (no device to wait for); an accelerator's stays there until a log line.
        loss_meter.update(loss.item() if on_cpu and loss.numel() == 1 else loss, n=normalizer or 1)
    if param_group is not None:
        lr_meter.update(param_group["lr"])


def _training_meters(runner: TorchRunner) -> tuple[Any, Any, dict | None, bool]:
    """The loss and learning-rate meters, the parameter group whose rate is recorded, and whether on the CPU."""
    group = runner.optimizer.param_groups[0] if runner.optimizer is not None else None
    return runner.meters["loss"], runner.meters["lr"], group, runner.device.type == "cpu"


def _unrestored_position(runner: TorchRunner, split: str) -> int:
    r"""
    Batches of ``split``'s current pass to skip when a resume did not restore its loader's position.

    That happens when the checkpoint's loader states were left out (``checkpoint.exclude_from_loading``),
    typically because the run resumes on another number of ranks: the global batch is the same, so
    skipping the batches the loop state counts puts the new ranks where the old ones were.  Once.
    """
    done = runner.loop_state.batches.get(split, 0)
    if not done or split in runner.restored_loaders:
        return 0
    runner.restored_loaders = frozenset({*runner.restored_loaders, split})
    return done


# epoch mode


def train_epochs(runner: TorchRunner, train_splits: Sequence[str], evaluate_splits: Sequence[str]) -> RoundDict:
    """Train epoch after epoch until ``config.epochs``, evaluating and saving after each."""
    total = runner.epochs
    if total is None:
        raise ValueError("cannot run epoch-mode training: config.epochs is not set")
    state, loop = runner.train_state, runner.loop_state
    print(f"train: epoch mode start epoch={state.epoch} total_epochs={total}")
    for epoch in range(state.epoch, total):
        state.epoch = epoch
        result = RoundDict()
        train_pass = _pass(runner, "train_epoch", train_epoch)
        evaluate_pass = _pass(runner, "evaluate_epoch", evaluate_epoch)
        for split in loop.remaining(train_splits):
            result[split] = train_pass(split)
        for split in evaluate_splits:
            result[split] = evaluate_pass(split)
        runner.step_epoch_scheduler(result)
        runner.append_result(result, index=epoch)
        print(runner.format_epoch_result(result, epoch, total))
        runner.save_result()
        state.epoch = epoch + 1
        loop.done.clear()
        stop = runner.should_stop_early()
        if epoch + 1 < total and not stop:
            runner.save_checkpoint(epochs=epoch)  # the final save below covers the last epoch
        if stop:
            print("train: early-stop triggered")
            break
    runner.save_checkpoint(last_step=True)
    return runner.results


def train_epoch(runner: TorchRunner, split: str = "train") -> RoundDict:
    """One pass over ``split`` (the rest of it, after a resume); return the epoch's averages."""
    loader = runner.dataloaders[split]
    loop = runner.loop_state
    continued = loop.begin(split)
    if not continued or split not in loop.batches:
        loop.batches[split] = 0
    set_sampler_epoch(loader, runner.train_state.epoch)
    skip = _unrestored_position(runner, split) if continued else 0
    _begin(runner, RunnerMode.train, split, runner.train_metrics)
    length = loader_length(loader)
    progress = runner.loop_progress(split, total=length, start=loop.batches[split])
    meters, weigh = _training_meters(runner), runner.weighs_micro_batches
    try:
        for batch in itertools.islice(loader, skip, None):
            iteration, step_before = loop.batches[split], runner.train_state.global_step
            _train_batch(runner, batch, meters, weigh)
            runner.finish_step_log(if_ready=True)  # the previous line, once its sums travelled
            loop.batches[split] = iteration + 1
            progress.advance()
            if progress.due(iteration):
                runner.begin_step_log(split, iteration, None if length is None else length - 1)
            if runner.train_state.global_step != step_before and runner.stop_requested():
                runner.shut_down_on_signal()  # after the bookkeeping: the checkpoint resumes at the next batch
        runner.finish_step_log()
        loop.end_pass(split)
        loop.finish(split)  # before the partial-window step, which may be checkpointed
        runner.flush_gradients()
    finally:
        progress.close()
    return runner.get_epoch_result()


# step mode


def _split_budget(remaining_steps: int, remaining_splits: int, loader: Any, accum_steps: int) -> int:
    """Optimizer steps ``loader``'s split gets in this round: a fair share, at most one pass."""
    if remaining_steps <= 0:
        return 0
    fair = max(math.ceil(remaining_steps / max(remaining_splits, 1)), 1)
    length = loader_length(loader)
    if length is None:
        return min(fair, remaining_steps)
    return min(fair, max(math.ceil(length / accum_steps), 1), remaining_steps)


def train_steps(runner: TorchRunner, train_splits: Sequence[str], evaluate_splits: Sequence[str]) -> RoundDict:
    """Train until ``config.steps`` optimizer steps, in rounds over the splits; then evaluate once."""
    total = runner.steps
    if total is None:
        raise ValueError("cannot run step-mode training: config.steps could not be resolved")
    state, loop = runner.train_state, runner.loop_state
    print(f"train: step mode start global_step={state.global_step} steps={total}")
    iterators: dict[str, Iterator | None] = {}
    result = RoundDict()
    turn = _pass(runner, "train_split_steps", train_split_steps)
    while state.global_step < total:
        # a run resumed right at the end of a split's turn finishes that round without a step
        start, resumed_turn = state.global_step, loop.split is not None
        round_result = RoundDict()
        splits = loop.remaining(train_splits)
        for index, split in enumerate(splits):
            target = loop.target if loop.split == split and loop.target is not None else None
            if target is None:
                budget = _split_budget(
                    total - state.global_step, len(splits) - index, runner.dataloaders[split], runner.accum_steps
                )
                target = state.global_step + budget
            round_result[split] = turn(split, target, iterators)
        if state.global_step == start and not resumed_turn:
            warnings.warn(
                f"step-mode training made no progress after one full split pass (target={total}, "
                f"reached={state.global_step}, remaining={total - state.global_step})",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        runner.step_epoch_scheduler(round_result)
        result = round_result
        state.epoch += 1
        loop.done.clear()
    if state.global_step < total:
        warnings.warn(
            f"step-mode training finished with {total - state.global_step} step(s) remaining "
            f"(target={total}, reached={state.global_step})",
            RuntimeWarning,
            stacklevel=2,
        )
    evaluate_pass = _pass(runner, "evaluate_steps", evaluate_epoch)
    for split in evaluate_splits:
        result[split] = evaluate_pass(split)
    runner.append_result(result, index=state.global_step)
    print(format_epoch_line(result, None, None))
    runner.save_result()
    runner.save_checkpoint(last_step=True)
    return runner.results


def train_split_steps(
    runner: TorchRunner, split: str, target: int, iterators: dict[str, Iterator | None] | None = None
) -> RoundDict:
    """Train on ``split`` until ``global_step == target``, continuing its pass and starting new ones as needed."""
    loader = runner.dataloaders[split]
    state, loop = runner.train_state, runner.loop_state
    iterators = {} if iterators is None else iterators
    loop.begin(split, target)
    skip = _unrestored_position(runner, split) if split not in iterators else 0
    _begin(runner, RunnerMode.train, split, runner.train_metrics)
    progress = runner.loop_progress(split, total=max(target - state.global_step, 0))
    turn = _Turn(target, runner.checkpoint_interval, progress)
    try:
        while state.global_step < target:
            iterator = iterators.get(split)
            if iterator is None:
                set_sampler_epoch(loader, loop.passes.get(split, 0))
                iterator = iterators[split] = itertools.islice(loader, skip, None)
                skip = 0
            if _train_until(runner, split, iterator, turn):
                break
            # the pass is over: apply a partial window, start the next pass
            empty = loop.batches.get(split, 0) == 0
            loop.end_pass(split)
            iterators[split] = None
            step_before = state.global_step
            runner.flush_gradients()
            if state.global_step != step_before:
                _after_update(runner, split, turn)
            if empty:
                break
        runner.finish_step_log()
    finally:
        progress.close()
    loop.finish(split)
    return runner.get_epoch_result()


def _train_until(runner: TorchRunner, split: str, iterator: Iterator, turn: _Turn) -> bool:
    """Train on ``iterator``'s batches until ``global_step`` reaches the turn's target (``True``) or the pass ends."""
    state, loop, target = runner.train_state, runner.loop_state, turn.target
    meters, weigh = _training_meters(runner), runner.weighs_micro_batches
    for batch in iterator:
        step_before = state.global_step
        _train_batch(runner, batch, meters, weigh)
        runner.finish_step_log(if_ready=True)  # the previous line, once its sums travelled
        loop.batches[split] = loop.batches.get(split, 0) + 1
        if state.global_step != step_before:
            _after_update(runner, split, turn)
            if state.global_step >= target:
                return True
    return False


def _after_update(runner: TorchRunner, split: str, turn: _Turn) -> None:
    """After an optimizer step: advance the progress, save on the checkpoint cadence, log on the log cadence."""
    step, progress = runner.train_state.global_step, turn.progress
    progress.advance()
    if turn.checkpoint_interval > 0 and step % turn.checkpoint_interval == 0:
        runner.save_checkpoint()
    if progress.interval > 0 and (step % progress.interval == 0 or step == turn.target):
        # numbered within the turn: the turn's first optimizer step is 0, its last is ``total - 1``
        runner.begin_step_log(split, step - (turn.target - progress.total) - 1, progress.total - 1)
    if runner.stop_requested():
        runner.shut_down_on_signal()


# evaluation and inference


@torch.inference_mode()
def evaluate_epoch(runner: TorchRunner, split: str = "val", steps: int | None = None) -> RoundDict:
    """Evaluate on ``split`` (its first ``steps`` batches, or all); return the averages."""
    if steps is not None and steps < 0:
        raise ValueError(f"invalid steps: expected a non-negative value, got {steps}")
    loader = runner.dataloaders[split]
    _begin(runner, RunnerMode.evaluate, split, runner.evaluate_metrics)
    length = loader_length(loader)
    total = length if steps is None else (steps if length is None else min(steps, length))
    progress = runner.loop_progress(split, total=total)
    loss_meter = runner.meters["loss"]
    consumed = 0
    try:
        for batch in loader:
            if steps is not None and consumed >= steps:
                break
            normalizer = loss_normalizer(batch, runner.criterion)
            _, loss = runner.evaluate_step(batch)
            runner.finish_step_log(if_ready=True)
            if loss is not None:
                loss_meter.update(loss, n=normalizer or 1)
            progress.advance()
            if progress.due(consumed):
                runner.begin_step_log(split, consumed, None if total is None else total - 1)
            consumed += 1
        runner.finish_step_log()
    finally:
        progress.close()
    if steps is not None and consumed < steps:
        raise ValueError(
            f"evaluate steps exhausted early on split '{split}': requested {steps} step(s), got {consumed}"
        )
    result = runner.get_epoch_result()
    runner.write_result(
        result, split, runner.train_state.global_step if runner.is_step_mode else runner.train_state.epoch
    )
    return result


def evaluate(runner: TorchRunner, splits: Sequence[str]) -> RoundDict:
    """Evaluate each split once; print and return ``{split: result}`` (not added to ``results``)."""
    print("evaluate: start")
    print(f"evaluate: splits={list(splits)}")
    result = RoundDict()
    evaluate_pass = _pass(runner, "evaluate_epoch", evaluate_epoch)
    for split in splits:
        result[split] = evaluate_pass(split)
    print(format_epoch_line(result, None, None))
    return result


@torch.inference_mode()
def _infer_batches(runner: TorchRunner, loader: Any, steps: int | None) -> Iterator[list[Any]]:
    for iteration, batch in enumerate(loader):
        if steps is not None and iteration >= steps:
            return
        yield runner.infer_step(batch)


def infer(runner: TorchRunner, split: str, *, steps: int | None = None, stream: bool | None = None) -> Any:
    """Predictions over ``split``: a flat list, or a generator of per-batch lists when streaming."""
    loader = runner.dataloaders[split]
    if steps is not None and steps < 0:
        raise ValueError(f"invalid steps: expected a non-negative value, got {steps}")
    length = loader_length(loader)
    if stream is None:
        stream = steps is None and length is None
    if not stream and length is None and steps is None:
        raise ValueError("infer with stream=False requires `steps` for unsized loaders")
    runner.mode = RunnerMode.infer
    runner.split = split
    batches = _infer_batches(runner, loader, steps)
    if stream:
        return batches
    total = length if steps is None else (steps if length is None else min(steps, length))
    progress = runner.loop_progress(split, total=total)
    outputs: list[Any] = []
    try:
        for values in batches:
            outputs.extend(values)
            progress.advance()
    finally:
        progress.close()
    return outputs
