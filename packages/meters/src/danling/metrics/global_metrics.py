"""``GlobalMetrics``: exact dataset-level metrics from stored predictions or a confusion matrix.

The container keeps what its metric descriptors declare they read, and nothing more: every
prediction and target when some metric needs them (AUROC, Spearman ...), and one running
confusion matrix when some metric reads it (accuracy, F1 ...).  Updates only append and add on
the batch's device; all communication and metric math happens when a result is read.

Across ranks, ``average()`` gathers predictions of any length from every rank (only the rows
added since the previous gather travel again) and sums the confusion matrices; the result is
the metric on the concatenated data, in rank order.  ``batch()`` does the same for the latest
batch only.  Results are cached until some rank updates; every rank must read ``bat``/``avg``
together, as for any collective.

Unlike the reference implementation, results are Python floats when they have one element
(tensors otherwise), the same as for ``StreamMetrics``, so the two mix in ``MultiTaskMetrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .distributed import all_reduce_max, all_reduce_sum, gather_rows, reduction_device, world_size
from .functional.inputs import as_tensors, check_same_length
from .metric_func import MetricFunc, iter_metric_funcs, merge_metric_entries
from .preprocess import base_preprocess, detach
from .round_dict import RoundDict, format_number
from .state import MetricState, collect_requirements

if TYPE_CHECKING:
    from typing_extensions import Self  # only for annotations: no runtime dependency


class MetricRequirementError(RuntimeError):
    """A metric needs an artifact (predictions, a confusion matrix) that the container does not hold."""


def _rows(tensor: Tensor) -> int:
    return 1 if tensor.ndim == 0 else tensor.shape[0]


def _concat(chunks: list[Tensor]) -> Tensor | None:
    chunks = [chunk if chunk.ndim else chunk.reshape(1) for chunk in chunks]
    if not chunks:
        return None
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _result(value: Any) -> float | Tensor:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.detach()
    return float(value)


class GlobalMetrics:
    r"""
    Exact metrics over everything seen since the last ``reset()``, synchronised across ranks.

    Args:
        *metric_funcs: :class:`MetricFunc` descriptors, named by their ``name``; lists are flattened.
        preprocess: Applied to every batch before it is stored.
        distributed: Gather across ranks when a process group exists.
        device: Where stored predictions and targets live (default: where they come from).
        **meters: Descriptors by name; they override positional ones of the same name.

    Examples:
        >>> import torch
        >>> from danling.metrics.factory import binary_metric_funcs
        >>> from danling.metrics.preprocess import preprocess_binary
        >>> funcs = binary_metric_funcs()
        >>> metrics = GlobalMetrics(acc=funcs["acc"], auroc=funcs["auroc"], preprocess=preprocess_binary)
        >>> metrics.update(torch.tensor([0.1, 0.8, 0.6, 0.2]), torch.tensor([0, 1, 0, 0]))
        >>> metrics.update(torch.tensor([0.1, 0.7, 0.3, 0.2, 0.8, 0.4]), torch.tensor([0, 1, 1, 0, 0, 1]))
        >>> f"{metrics:.4f}"
        'acc: 0.5000 (0.6000)\tauroc: 0.6667 (0.7708)'
        >>> metrics.confmat
        tensor([[4, 2],
                [2, 2]])
        >>> metrics.n, metrics.count
        (6, 10)
        >>> metrics
        GlobalMetrics('acc', 'auroc')
    """

    def __init__(
        self,
        *metric_funcs: MetricFunc,
        preprocess: Callable = base_preprocess,
        distributed: bool = True,
        device: torch.device | str | None = None,
        **meters: MetricFunc,
    ) -> None:
        positional = [(self._check_metric(metric).name, metric) for metric in iter_metric_funcs(metric_funcs)]
        named = {name: self._check_metric(metric) for name, metric in meters.items()}
        self.metrics: dict[str, MetricFunc] = merge_metric_entries(positional, named)
        self.requirements = collect_requirements(self.metrics.values(), require_nonempty=True)
        self.preprocess = preprocess
        self.distributed = distributed
        self.device = torch.device(device) if device is not None else None
        self.reset()

    @staticmethod
    def _check_metric(metric: Any) -> MetricFunc:
        if not isinstance(metric, MetricFunc):
            raise ValueError(f"Expected metric functions to be MetricFunc instances, got {type(metric)}")
        return metric

    def reset(self) -> Self:
        """Forget every batch and return the container."""
        self._preds: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._confmat: Tensor | None = None
        self._last: MetricState | None = None
        self._local_n = 0
        self._local_count = 0
        # Rows already gathered from every rank, and how many local chunks they cover.
        self._gathered: tuple[list[list[Tensor]], list[list[Tensor]]] | None = None
        self._gathered_chunks = 0
        self._synced: tuple[MetricState, int] | None = None  # valid until the next update
        self._cache: RoundDict | None = None
        return self

    def update(self, input: Any, target: Any) -> None:
        """Store one batch (or add it to the confusion matrix); never synchronises."""
        input, target = self.preprocess(input, target)
        input, target = as_tensors(detach(input), detach(target))
        if input.ndim and target.ndim:
            check_same_length(input, target)  # stored rows must pair up across batches and ranks
        confmat = self.requirements.confmat.compute(input, target) if self.requirements.confmat else None
        self._last = MetricState(input, target, confmat)
        self._local_n = _rows(target)
        self._local_count += self._local_n
        if self.requirements.preds_targets:
            self._preds.append(input if self.device is None else input.to(self.device))
            self._targets.append(target if self.device is None else target.to(self.device))
        if confmat is not None:
            self._confmat = confmat if self._confmat is None else self._confmat + confmat
        self._synced = None
        self._cache = None

    # Evaluation
    def _evaluate(self, state: MetricState | None, count: int) -> RoundDict:
        if state is None or count == 0:
            return RoundDict({name: float("nan") for name in self.metrics})
        if self.requirements.preds_targets and state.preds is None:
            raise MetricRequirementError("predictions and targets are required but none are stored")
        return RoundDict({name: _result(metric(state)) for name, metric in self.metrics.items()})

    def _local_state(self) -> MetricState:
        return MetricState(_concat(self._preds), _concat(self._targets), self._confmat)

    def value(self) -> RoundDict:
        """Metrics of the latest local batch."""
        return self._evaluate(self._last, self._local_n if self._last is not None else 0)

    def batch(self) -> RoundDict:
        """Metrics of the latest batch of every rank together."""
        if world_size(self.distributed) == 1:
            return self.value()
        last = self._last
        preds = targets = None
        if self.requirements.preds_targets:
            preds = _concat(gather_rows(last.preds if last is not None else None))
            targets = _concat(gather_rows(last.targets if last is not None else None))
        confmat, count = self._reduce_confmat_and_count(last.confmat if last is not None else None, self._local_n)
        if targets is not None:
            count = _rows(targets)
        return self._evaluate(MetricState(preds, targets, confmat), count)

    def average(self) -> RoundDict:
        """Metrics of every batch of every rank since the last reset (cached until the next update)."""
        self.sync()
        if self._cache is None:
            state, count = self._synced
            self._cache = self._evaluate(state, count)
        return RoundDict(self._cache)

    # Synchronisation
    def _reduce_confmat_and_count(self, confmat: Tensor | None, count: int) -> tuple[Tensor | None, int]:
        """Sum a confusion matrix (if any is required) and a count over ranks in one collective."""
        spec = self.requirements.confmat
        device = reduction_device(confmat.device if confmat is not None else self.device)
        local = confmat.to(device) if confmat is not None else spec.empty(device) if spec else None
        counts = torch.tensor([count], dtype=torch.int64, device=device)
        packed = all_reduce_sum(counts if local is None else torch.cat([local.reshape(-1), counts]))
        total = int(packed[-1].item())
        return (None if local is None else packed[:-1].reshape(local.shape)), total

    def _gather_new_rows(self) -> tuple[Tensor | None, Tensor | None]:
        """All ranks' predictions and targets, gathering only rows added since the previous call."""
        if self._gathered is None:
            self._gathered = ([], [])
            self._gathered_chunks = 0
        fresh_preds = _concat(self._preds[self._gathered_chunks :])
        fresh_targets = _concat(self._targets[self._gathered_chunks :])
        self._gathered_chunks = len(self._preds)
        preds_by_rank, targets_by_rank = self._gathered
        for by_rank, fresh in ((preds_by_rank, fresh_preds), (targets_by_rank, fresh_targets)):
            gathered = gather_rows(fresh)
            while len(by_rank) < len(gathered):
                by_rank.append([])
            for chunks, rows in zip(by_rank, gathered):
                if rows.ndim and rows.shape[0]:
                    chunks.append(rows)
        return _concat([c for chunks in preds_by_rank for c in chunks]), _concat(
            [c for chunks in targets_by_rank for c in chunks]
        )

    def sync(self) -> None:
        """Bring every rank's data together (collective); cheap while no rank has new data.

        Whether to gather is agreed on by all ranks (one small ``all_reduce``), so a rank without
        new batches still takes part in every collective its peers start.
        """
        distributed = world_size(self.distributed) > 1
        if distributed:
            stale = torch.tensor([self._synced is None], dtype=torch.int64, device=reduction_device(self.device))
            if not all_reduce_max(stale).item():
                return
        elif self._synced is not None:
            return
        self._cache = None
        if not distributed:
            self._synced = (self._local_state(), self._local_count)
            return
        preds = targets = None
        if self.requirements.preds_targets:
            preds, targets = self._gather_new_rows()
        confmat, count = self._reduce_confmat_and_count(self._confmat, self._local_count)
        if targets is not None:
            count = _rows(targets)
        self._synced = (MetricState(preds, targets, confmat), count)

    # Views
    val = property(lambda self: self.value(), doc="Shorthand for ``value()``: the latest local result.")
    bat = property(lambda self: self.batch(), doc="Shorthand for ``batch()``: the latest step over all ranks.")
    avg = property(lambda self: self.average(), doc="Shorthand for ``average()``: everything so far, all ranks.")

    @property
    def preds(self) -> Tensor:
        """Synchronised predictions right after ``average()``/``sync()``, local ones otherwise."""
        preds = self._synced[0].preds if self._synced is not None else _concat(self._preds)
        return preds if preds is not None else torch.empty(0, device=self.device or "cpu")

    @property
    def targets(self) -> Tensor:
        targets = self._synced[0].targets if self._synced is not None else _concat(self._targets)
        return targets if targets is not None else torch.empty(0, device=self.device or "cpu")

    @property
    def confmat(self) -> Tensor | None:
        return self._synced[0].confmat if self._synced is not None else self._confmat

    @property
    def n(self) -> int:
        """Rows in the latest local batch."""
        return self._local_n

    @property
    def count(self) -> int:
        """Rows seen locally since the last reset."""
        return self._local_count

    # Checkpointing
    def state_dict(self) -> dict[str, Any]:
        """This rank's stored data; ``load_state_dict`` restores it."""
        return {
            "preds": _concat(self._preds),
            "targets": _concat(self._targets),
            "confmat": self._confmat,
            "n": self._local_n,
            "count": self._local_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self._preds = [state["preds"]] if state["preds"] is not None else []
        self._targets = [state["targets"]] if state["targets"] is not None else []
        self._confmat = state["confmat"]
        self._local_n = int(state["n"])
        self._local_count = int(state["count"])

    # Presentation
    def __format__(self, spec: str) -> str:
        value = self.value()
        average = self._evaluate(self._local_state(), self._local_count)
        return "\t".join(
            f"{name}: {format_number(value[name], spec)} ({format_number(average[name], spec)})"
            for name in self.metrics
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}{tuple(self.metrics)}"
