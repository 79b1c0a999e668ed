"""``RunnerRecords``: a run's results and scores, its progress lines and its scalar logs.

``BaseRunner`` mixes this in.  Results are rows ``{index: {split: {metric: value}}}`` (index: the
epoch, or the global step in step mode); scores pick one metric of one split to rank them (best
result, early stopping).  Progress lines and TensorBoard/W&B scalars report the loop as it runs.
The functions doing the work live in ``results`` and ``reporting``; this mixin binds them to the
runner's state, so a subclass can override any of them.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from chanfig import FlatDict

from danling.metrics import RoundDict

from . import results as results_lib
from .dataloaders import loader_length
from .reporting import (
    LoopProgress,
    format_epoch_line,
    format_result,
    is_interactive,
    log_to_files,
    log_to_wandb,
    step_prefix,
)
from .utils import RunnerMode

__all__ = ["RunnerRecords"]


class RunnerRecords:
    r"""
    Results, scores, progress lines and scalar logs of ``BaseRunner`` (a mixin: it reads the runner's
    ``config``, ``results``, ``meters``, ``metrics``, ``train_state``, ``writer`` and ``wandb``).
    """

    # results and scores

    @property
    def score_split(self) -> str | None:
        return results_lib.resolve_score_split(self.evaluate_splits, self.config.score_split)

    @property
    def scores(self) -> dict[int, float] | None:
        """``{index: score}`` of the results that have a score; ``None`` if none has."""
        return results_lib.collect_scores(self.results, self.score_split, self.config.score_name) or None

    @property
    def best_index(self) -> int | None:
        return results_lib.best_index(self.scores or {}, self.config.score_name)

    @property
    def latest_result(self) -> RoundDict | None:
        return results_lib.indexed_row(self.results, next(reversed(list(self.results)), None))

    @property
    def best_result(self) -> RoundDict | None:
        return results_lib.indexed_row(self.results, self.best_index)

    @property
    def latest_score(self) -> float | None:
        scores = self.scores
        return scores[next(reversed(list(scores)))] if scores else None

    @property
    def best_score(self) -> float | None:
        scores = self.scores
        return scores[self.best_index] if scores else None

    @property
    def is_best(self) -> bool:
        """Whether the latest result is the best (``True`` before the first result)."""
        if not self.results:
            return True  # without computing scores: every save asks
        return results_lib.is_best(self.results, self.scores or {}, self.config.score_name)

    def should_stop_early(self) -> bool:
        """Whether more than ``patience`` scored results came after the best one."""
        return results_lib.rows_since_best(self.scores or {}, self.config.score_name) > self.patience

    def append_result(self, result: Mapping[str, Any], index: int | None = None) -> None:
        """Add ``result`` as row ``index`` (default: the current epoch), merging into an existing row."""
        results_lib.merge_result(self.results, result, self.train_state.epoch if index is None else index)

    def get_step_result(self) -> RoundDict:
        """The latest values of the meters (averaged over ranks) and metrics, for progress lines."""
        return RoundDict(self._step_values())

    def _step_values(self) -> dict[str, Any]:
        # A plain dict: progress lines are frequent, and building chanfig mappings is not free.
        if self.distributed:
            latest = self.meters.batch()
            values = {name: latest[name] for name, meter in self.meters.items() if meter.count}
        else:
            values = {name: meter.value() for name, meter in self.meters.items() if meter.count}
        # the same on every rank: the loss meters of a loop.  The default reduction is the meters' own
        # weighted mean (already in ``values``), so only an override costs a reduction of its own.
        overridden = not getattr(type(self).reduce_loss_for_logging, "averages_like_the_meters", False)
        if "loss" in self.meters and overridden:
            logged = self._logged_loss(self.meters["loss"])
            if logged is not None and "loss" in values:
                values["loss"] = logged
        if self.metrics is not None:
            values.update(self.metrics.value())
        return values

    def _logged_loss(self, meter: Any) -> float | None:
        """The latest loss as ``reduce_loss_for_logging`` reports it (collective: every rank calls it)."""
        loss = torch.tensor(meter.val, dtype=torch.float64) if meter.count else None
        logged = self.reduce_loss_for_logging(loss, meter.n)
        if isinstance(logged, torch.Tensor):
            return logged.item()
        return logged

    def get_epoch_result(self) -> RoundDict:
        """The averages of the meters and metrics over the loop."""
        result = RoundDict({name: value for name, value in self.meters.average().items() if self.meters[name].count})
        if self.metrics is not None:
            result.merge(RoundDict(self.metrics.average()))
        return result

    def save_result(self) -> None:
        """Write ``results.json``, ``latest.json`` and, for the best result, ``best.json`` (main process)."""
        if not self.is_main_process or not self.results:
            return
        header = {"name": self.name, "id": self.id, "timestamp": self.timestamp}
        try:
            results_lib.save_results(
                self.workspace.dir, self.results, header=header, latest=self.latest_result, best=self.is_best
            )
        except OSError as error:
            warnings.warn(f"failed to write results in {self.workspace.dir!r}: {error}", RuntimeWarning, stacklevel=2)

    # progress lines and scalar logs

    def format_result(self, result: Mapping[str, Any], format_spec: str = ".4f") -> str:
        return format_result(result, format_spec)

    def format_step_result(self, result: Mapping[str, Any], split: str, steps: int, length: int | str | None) -> str:
        """``training on {split} [{steps}/{length}]`` and the result (``length`` ``None``: unknown, shown as ``∞``)."""
        return f"{step_prefix(self.mode, split, steps, length)}\t{self.format_result(result)}"

    def format_epoch_result(
        self, result: Mapping[str, Any], epochs: int | None = None, total_epochs: int | None = None
    ) -> str:
        """``epoch [e+1/E]`` and the result; ``epochs`` is the 0-based epoch (default: the current one)."""
        epochs = self.train_state.epoch if epochs is None else epochs
        return format_epoch_line(result, epochs + 1, self.epochs if total_epochs is None else total_epochs)

    def loop_time(self, *, sync: bool = False) -> float:
        """Seconds on a monotonic clock, for loop timings; ``sync`` first waits for queued CUDA work."""
        if sync and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    @property
    def reports_batch_telemetry(self) -> bool:
        """Whether progress lines carry the seconds per batch (``time``)."""
        return True

    def loop_progress(self, split: str, *, total: int | None, start: int = 0) -> LoopProgress:
        """Progress of a loop over ``split``: a bar on the main process's terminal, periodic lines otherwise."""
        interactive = self.is_main_process and is_interactive()
        progress = LoopProgress(
            split if self.mode == RunnerMode.train else f"{self.mode} {split}",
            total=total,
            interval=self.log_interval,
            emit=self._emit_line,
            stream=sys.stdout if interactive else None,
            start=start,
            clock=self.loop_time,
        )
        self._loop_progress = (split, progress)  # where ``step_log`` reports while the loop runs
        return progress

    def _emit_line(self, line: str, console: bool) -> None:
        if console:
            print(line)
        else:
            log_to_files(self.logger, line)

    def step_log(
        self,
        split: str,
        iteration: int,
        length: int | str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> RoundDict:
        r"""
        Report progress of a loop over ``split``: a line (or a progress bar's postfix), and scalars in training.

        ``iteration`` is the 0-based index of the batch just done (in step mode: of the optimizer
        step within the split's turn) and ``length`` the index of the last one (``None``: from
        ``split``'s loader).  The line counts from 1: ``[3/3]`` after the last of three batches.
        ``result`` defaults to ``get_step_result()``; while a loop over ``split`` runs, the
        seconds per batch since the previous report are added as ``time``.  Returns what was reported.
        """
        return RoundDict(self._log_step(split, iteration, length, result))

    def _log_step(
        self, split: str, iteration: int, length: int | str | None, result: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        # ``step_log`` without building its ``RoundDict`` (a chanfig mapping: a third of a line's cost)
        length = self._last_index(split, length)
        values = self._reported_values() if result is None else dict(result)
        progress = self._active_progress(split)
        if progress is not None and self.reports_batch_telemetry and "time" not in values:
            values["time"] = progress.seconds_per_iteration(iteration)
        self._report_step(split, iteration, length, values, progress, self.mode, self.train_state.global_step)
        return values

    def _last_index(self, split: str, length: int | str | None) -> int | str | None:
        if length is None and split in self.dataloaders:
            size = loader_length(self.dataloaders[split])
            length = None if size is None else size - 1
        return length

    def _report_step(
        self,
        split: str,
        iteration: int,
        length: int | str | None,
        values: dict[str, Any],
        progress: LoopProgress | None,
        mode: RunnerMode,
        steps: int,
    ) -> None:
        line = self.format_step_result(values, split, iteration + 1, length + 1 if isinstance(length, int) else length)
        if progress is not None:
            progress.report(line, values)
        else:
            print(line)
        if mode == RunnerMode.train:
            self.write_result(values, split, steps)

    # progress lines overlapped with the next batch

    def begin_step_log(self, split: str, iteration: int, length: int | str | None = None) -> None:
        r"""
        ``step_log`` as the loops call it: on several ranks the meters travel while training goes on.

        A distributed progress line averages the meters over the ranks, and a collective that
        is waited for at once stalls every rank until the slowest arrives (about 1 ms per line
        on a loaded 2-core machine).  Here the reduction begins now, riding the next gradient
        all-reduce where the backend offers that (``_progress_line_carrier``), else as an
        asynchronous all-reduce; everything else the line shows (metrics, seconds per batch, the
        global step its scalars are written at) is read now.  ``finish_step_log`` reports it:
        the loops call it after each batch (it reports once the sums have arrived) and,
        unconditionally, at the end of the loop.  The line is the one ``step_log`` would print,
        a batch or an optimizer step later.  With one process, or in a subclass that overrides
        ``step_log``, ``get_step_result`` or ``reduce_loss_for_logging``, this is ``step_log``.
        """
        self.finish_step_log()
        cls = type(self)
        if cls.step_log is not RunnerRecords.step_log:
            self.step_log(split, iteration, length)
            return
        if not (
            self.distributed
            and cls.get_step_result is RunnerRecords.get_step_result
            and getattr(cls.reduce_loss_for_logging, "averages_like_the_meters", False)
        ):
            self._log_step(split, iteration, length)
            return
        counted = [name for name, meter in self.meters.items() if meter.count]
        reduction = self.meters.start_batch(self._progress_line_carrier())
        local = {} if self.metrics is None else dict(self.metrics.value())
        progress = self._active_progress(split)
        if progress is not None and self.reports_batch_telemetry and "time" not in local:
            local["time"] = progress.seconds_per_iteration(iteration)
        last, mode, steps = self._last_index(split, length), self.mode, self.train_state.global_step

        def report() -> None:
            if progress is not None and progress.closed:
                return  # its loop ended by an exception: the line would be out of place
            latest = reduction.values()
            values = {name: latest[name] for name in counted}
            values.update(local)
            self._report_step(split, iteration, last, values, progress, mode, steps)

        self._pending_step_log = (reduction, report)

    def finish_step_log(self, *, if_ready: bool = False) -> None:
        """
        Report the line ``begin_step_log`` began, if one waits; with ``if_ready``, only once its sums arrived.

        Collective: every rank calls it at the same points (readiness is the same on every rank).
        """
        pending = self.__dict__.get("_pending_step_log")
        if pending is None or (if_ready and not pending[0].ready()):
            return
        self._pending_step_log = None
        pending[1]()

    def _progress_line_carrier(self) -> Callable[[torch.Tensor], Any] | None:
        """What carries a progress line's sums over the ranks (``MeterReduction``'s ``start``); ``None``: its own all-reduce."""
        return None

    def _reported_values(self) -> dict[str, Any]:
        # ``get_step_result`` builds a RoundDict; unless it is overridden, take the plain values it is made of
        if type(self).get_step_result is RunnerRecords.get_step_result:
            return self._step_values()
        return dict(self.get_step_result())

    def _active_progress(self, split: str) -> LoopProgress | None:
        if self._loop_progress is None:
            return None
        progress_split, progress = self._loop_progress
        return progress if progress_split == split and not progress.closed else None

    def flatten_result(self, result: Mapping[str, Any]) -> FlatDict:
        """Every number in ``result`` under a ``/``-joined name (``metrics/acc``, ``per_class/0``); meters give their average."""
        return FlatDict(results_lib.flatten_result(result))

    def write_result(self, result: Mapping[str, Any], split: str, steps: int | None = None) -> None:
        r"""
        Send every number of ``result`` to ``write_score`` (TensorBoard), and all of them to W&B in one call
        (against the split's own x-axis ``{split}/step``: see ``reporting.log_to_wandb``).

        ``steps`` defaults to the global step.  Without a writer and W&B nothing is flattened.
        """
        if self.writer is None and self.wandb is None:
            return
        steps = self.train_state.global_step if steps is None else steps
        scores = self.flatten_result(result)
        for name, score in scores.items():
            self.write_score(name, score, split, steps)
        if self.wandb is not None and scores:
            log_to_wandb(self.wandb, split, scores, steps, self.__dict__.setdefault("_wandb_splits", set()))

    def write_score(self, name: str, score: float, split: str, steps: int) -> None:
        """Write one scalar to TensorBoard as ``{split}/{name}``; a full or vanished disk does not stop training."""
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.add_scalar(f"{split}/{name}", score, steps)
