r"""Pipeline schedules: building one from a rank's parts, and running a batch through it.

- ``resolve_n_microbatches``: how many micro-batches a batch is cut into (``pipeline_n_microbatches``,
  else ``batch_size // pipeline_microbatch_size``).
- ``build_pipeline_schedule``: ``torch.distributed.pipelining`` stages for the local parts and the
  schedule named in the config (any name ``get_schedule_class`` knows: ``GPipe``, ``1F1B``,
  ``Interleaved1F1B``, ``LoopedBFS``, ``ZBVZeroBubble`` ...), with ``scale_grads=False``: the
  weighting below, not the schedule, decides how micro-batches add up.
- ``MicrobatchLoss``: the schedule's loss function.  Micro-batch ``m`` of a batch whose loss
  averages over ``N`` items contributes ``criterion(output_m, target_m) * n_m / N``, so the
  micro-batches add up to exactly the batch's loss (times the accumulation weight the runner's
  gradient window gives the batch), as one forward over the whole batch would.
- ``PipelineGradientWindow``: the gradient window of a pipelined run.  Every stage records each
  batch's weight (middle stages, which see no batch, get it from the last stage with the loss), so
  the totals need summing over the data ranks only: none at all without data parallelism.
- ``PipelineRuntime``: one batch through the schedule in training, evaluation or inference; the
  last stage's loss (or predictions) shared with the other stages.
- ``build_pipeline``: all of it for one model: split, parallelize each part, stages, schedule.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

from danling.runners.distributed import reduction_device
from danling.runners.step import GradientWindow, loss_normalizer, split_batch

from .pipeline import PipelineModel, split_model_parts, stage_indices

#: Tag of the loss the last stage sends, apart from the schedule's own activations and gradients.
_LOSS_TAG = 0x4C05

__all__ = [
    "MicrobatchLoss",
    "PipelineGradientWindow",
    "PipelineRuntime",
    "build_pipeline",
    "build_pipeline_schedule",
    "middle_stage",
    "resolve_n_microbatches",
    "schedule_class",
    "stage_style",
]


def schedule_class(name: str) -> type:
    r"""
    The ``torch.distributed.pipelining`` schedule class called ``name`` (case-insensitive).

    Examples:
        >>> schedule_class("gpipe").__name__, schedule_class("Interleaved1F1B").__name__
        ('ScheduleGPipe', 'ScheduleInterleaved1F1B')
    """
    from torch.distributed.pipelining.schedules import get_schedule_class

    try:
        return get_schedule_class(str(name).strip())
    except ValueError as error:
        raise ValueError(f"invalid parallel.pipeline_schedule: {error}") from None


def is_multi_stage(cls: type) -> bool:
    """Whether schedules of ``cls`` run several stages per rank (``PipelineScheduleMulti``)."""
    from torch.distributed.pipelining.schedules import PipelineScheduleMulti

    return issubclass(cls, PipelineScheduleMulti)


def stage_style(cls: type) -> str:
    """``"v"`` for the V-shaped schedules (a rank's stages meet in the middle), else ``"loop"``."""
    return "v" if cls.__name__ in ("ScheduleZBVZeroBubble", "ScheduleDualPipeV") else "loop"


def resolve_n_microbatches(
    batch_size: int | None, microbatch_size: int = 1, n_microbatches: int | None = None, pipeline_degree: int = 1
) -> int:
    r"""
    Micro-batches per batch: ``n_microbatches`` if set, else ``batch_size // microbatch_size``.

    Fewer micro-batches than stages leave stages idle (a warning says so).

    Examples:
        >>> resolve_n_microbatches(8, 2), resolve_n_microbatches(None, n_microbatches=3)
        (4, 3)
        >>> resolve_n_microbatches(6, 4)
        Traceback (most recent call last):
        ValueError: dataloader.batch_size (6) must be a multiple of parallel.pipeline_microbatch_size (4)
    """
    if n_microbatches is not None:
        if isinstance(n_microbatches, bool) or not isinstance(n_microbatches, int) or n_microbatches < 1:
            raise ValueError(f"parallel.pipeline_n_microbatches must be a positive integer, got {n_microbatches!r}")
        return n_microbatches
    if isinstance(microbatch_size, bool) or not isinstance(microbatch_size, int) or microbatch_size < 1:
        raise ValueError(f"parallel.pipeline_microbatch_size must be a positive integer, got {microbatch_size!r}")
    if batch_size is None:
        raise ValueError(
            "cannot tell the number of pipeline micro-batches: set parallel.pipeline_n_microbatches "
            "or dataloader.batch_size"
        )
    if batch_size % microbatch_size:
        raise ValueError(
            f"dataloader.batch_size ({batch_size}) must be a multiple of parallel.pipeline_microbatch_size "
            f"({microbatch_size})"
        )
    count = batch_size // microbatch_size
    if count < pipeline_degree:
        warnings.warn(
            f"{count} pipeline micro-batches for {pipeline_degree} pipeline ranks: some stages idle each step",
            RuntimeWarning,
            stacklevel=2,
        )
    return count


def build_pipeline_schedule(
    parts: Sequence[nn.Module],
    local_stages: Sequence[int],
    num_stages: int,
    *,
    schedule: str,
    n_microbatches: int,
    loss_fn: Any,
    device: torch.device,
    group: Any,
) -> Any:
    """The schedule ``schedule`` over this rank's ``parts`` (stages ``local_stages`` of ``num_stages``)."""
    from torch.distributed.pipelining import PipelineStage

    cls = schedule_class(schedule)
    if len(parts) != len(local_stages):
        raise ValueError(f"{len(parts)} pipeline parts for {len(local_stages)} local stages {tuple(local_stages)}")
    stages = [
        PipelineStage(part, index, num_stages, device, group=group)
        for part, index in zip(parts, local_stages, strict=True)
    ]
    if is_multi_stage(cls):
        return cls(stages, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)
    if len(stages) != 1:
        raise ValueError(
            f"parallel.pipeline_schedule {schedule!r} runs one stage per rank, but this rank has stages "
            f"{tuple(local_stages)}: pick a multi-stage schedule (Interleaved1F1B, LoopedBFS, ...)"
        )
    return cls(stages[0], n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)


def _rows(value: Any) -> int | None:
    """The leading dimension of the first tensor in ``value`` (the number of samples)."""
    if isinstance(value, Tensor):
        return value.shape[0] if value.ndim else None
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        rows = _rows(item)
        if rows is not None:
            return rows
    return None


class MicrobatchLoss:
    r"""
    The schedule's loss function: each micro-batch's loss weighted by its share of the batch.

    ``begin(target, scale)`` is called before each batch on the last stage.  A micro-batch's share
    is its loss normalizer over the batch's (``danling.runners.step.loss_normalizer``: valid
    targets, target elements), or its share of the samples when the criterion says nothing.

    Examples:
        >>> loss = MicrobatchLoss(nn.MSELoss())
        >>> target = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
        >>> loss.begin(target, scale=1.0)
        >>> parts = [loss(torch.zeros(2, 1), chunk) for chunk in target.split(2)]
        >>> float(sum(parts)) == float(nn.MSELoss()(torch.zeros(4, 1), target))
        True
    """

    def __init__(self, criterion: Any) -> None:
        self.criterion = criterion
        self.scale = 1.0
        self.count: int | None = None
        self.rows: int | None = None

    def begin(self, target: Any, scale: float = 1.0) -> None:
        self.scale = float(scale)
        self.count = self._count(target)
        self.rows = _rows(target)

    def _count(self, target: Any) -> int | None:
        return None if target is None else loss_normalizer((None, target), self.criterion)

    def share(self, target: Any) -> float:
        """The part of the batch ``target`` (one micro-batch's) accounts for."""
        count = self._count(target)
        if count is not None and self.count:
            return count / self.count
        rows = _rows(target)
        if rows is not None and self.rows:
            return rows / self.rows
        return 1.0

    def __call__(self, output: Any, target: Any) -> Tensor:
        if target is None:  # evaluation or inference without targets: nothing to weigh
            return torch.zeros((), device=output.device if isinstance(output, Tensor) else None)
        loss = self.criterion(output, target)
        if loss is None:
            raise ValueError("cannot compute the pipeline loss: the criterion returned None")
        if loss.ndim:
            loss = loss.mean()
        return loss * (self.share(target) * self.scale)


@dataclass
class PipelineGradientWindow(GradientWindow):
    r"""
    ``GradientWindow`` of a pipelined run, whose ``total`` every stage keeps alike.

    Gradients are multiplied by ``degree / (total summed over the loss domain)`` (replicate x
    shard x context, ``degree`` ranks, whose gradients FSDP averages): the factor
    ``GradientWindow`` gives with a world-wide sum, without the all-reduce when no rank reads
    other batches.

    Examples:
        >>> window = PipelineGradientWindow()
        >>> window.record(3.0); window.record(5.0); window.gradient_scale(world_size=2)
        0.125
    """

    parallel: Any = field(default=None)

    def record(self, weight: float) -> None:
        """Count a batch of ``weight`` that this rank did not weigh itself (a middle stage's)."""
        if self.weighted is None:
            self.weighted = True
        self.pending = None
        self.total += weight

    def gradient_scale(self, world_size: int) -> float | None:
        total, degree = self.total, 1 if self.parallel is None else self.parallel.degree("loss")
        if degree > 1:
            payload = torch.tensor([total], dtype=torch.float64, device=reduction_device())
            total = float(self.parallel.all_reduce(payload, domain="loss").item())
        return degree / total if total > 0 else None


@dataclass
class PipelineRuntime:
    r"""
    A batch through the pipeline: inputs into the first stage, targets and loss on the last.

    Attributes:
        schedule: The ``torch.distributed.pipelining`` schedule.
        parts: This rank's stage modules.
        local_stages: Their stage indices.
        num_stages: Stages in the whole pipeline.
        n_microbatches: Micro-batches per batch.
        loss: The schedule's ``MicrobatchLoss`` (``None`` without a criterion: inference only).
        group: The pipeline axis's process group (``None`` on one process).
        last_rank: Global rank of this rank's pipeline peer holding the last stage.
        peers: Global ranks of the other stages' ranks (the last stage sends them the loss).
        device: Where the pipeline group's collectives run (the CPU for gloo, the GPU for nccl).
    """

    schedule: Any
    parts: list[nn.Module]
    local_stages: tuple[int, ...]
    num_stages: int
    n_microbatches: int
    loss: MicrobatchLoss | None
    group: Any = None
    last_rank: int = 0
    device: Any = None
    peers: tuple[int, ...] = ()
    _sends: list[Any] = field(default_factory=list, repr=False)

    @property
    def has_first_stage(self) -> bool:
        return 0 in self.local_stages

    @property
    def has_last_stage(self) -> bool:
        return self.num_stages - 1 in self.local_stages

    def _inputs(self, data: Any) -> tuple[tuple, dict[str, Any], Any]:
        """``(args, kwargs, target)`` for this rank's stages: inputs on the first, the target on the last."""
        if data is None:
            if self.has_first_stage:
                raise ValueError("the first pipeline stage needs a batch, got None")
            return (), {}, None
        inputs, target = split_batch(data)
        args, kwargs = (), {}
        if self.has_first_stage:
            args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else ((inputs,), {})
            rows = _rows((args, kwargs))
            if rows is not None and rows < self.n_microbatches:
                raise ValueError(
                    f"a batch of {rows} samples cannot be cut into {self.n_microbatches} pipeline micro-batches; "
                    "use batches of at least that many samples (dataloader.drop_last for a short last batch)"
                )
        return args, kwargs, target if self.has_last_stage else None

    def train(self, data: Any, scale: float = 1.0) -> Tensor:
        """Forward and backward of every micro-batch (gradients accumulate).

        Returns ``[loss, scale]`` of the last stage, on every stage: the batch's loss and the
        accumulation weight its micro-batch losses were scaled by.
        """
        if self.loss is None:
            raise ValueError("cannot train through the pipeline: the runner has no criterion")
        args, kwargs, target = self._inputs(data)
        if self.has_last_stage:
            if target is None:
                raise ValueError("the last pipeline stage needs targets to train, got a batch without one")
            self.loss.begin(target, scale)
        losses: list[Tensor] = []
        self.schedule.step(*args, target=target, losses=losses, return_outputs=False, **kwargs)
        return self._shared_loss(losses, scale)

    def evaluate(self, data: Any) -> Tensor | None:
        """The forward of every micro-batch; the batch's loss on every stage (``None`` without targets)."""
        args, kwargs, target = self._inputs(data)
        losses: list[Tensor] = []
        self._forward(args, kwargs, target, losses)
        loss, valid = self._shared_loss(losses, 1.0, valid=target is not None)
        return loss if bool(valid > 0) else None

    def predict(self, data: Any) -> Any:
        """The last stage's merged output for the batch, on the last stage (``None`` elsewhere)."""
        args, kwargs, _ = self._inputs(data)
        return self._forward(args, kwargs, None, [])

    def _forward(self, args: tuple, kwargs: dict, target: Any, losses: list) -> Any:
        if self.loss is not None and self.has_last_stage:
            self.loss.begin(target)
            if target is None:  # the schedule splits no target: hand it empty micro-batch targets
                from torch.distributed.pipelining.microbatch import split_args_kwargs_into_chunks

                arg_mbs = kwarg_mbs = None
                if args or kwargs:
                    arg_mbs, kwarg_mbs = split_args_kwargs_into_chunks(args, kwargs, self.n_microbatches)
                return self.schedule.eval(
                    arg_mbs=arg_mbs, kwarg_mbs=kwarg_mbs, target_mbs=[None] * self.n_microbatches, losses=losses
                )
        return self.schedule.eval(*args, target=target, losses=losses, **kwargs)

    def _shared_loss(self, losses: list[Tensor], scale: float, valid: bool = True) -> Tensor:
        """``[loss, scale]`` from the last stage (its micro-batch losses' sum over ``scale``), on every stage.

        ``scale`` is 0 where there is no loss (``valid`` false: no targets).
        """
        payload = torch.zeros(2, device=self.device)
        if self.has_last_stage and losses and valid:
            payload[0] = torch.stack([loss.detach() for loss in losses]).sum() / scale
            payload[1] = scale
        if not self.peers:
            return payload
        self.finish_sends()
        if self.has_last_stage:
            # sent, not broadcast: the last stage goes on to its optimizer step while the first
            # still runs its final backward (1F1B), which then finds the loss waiting
            self._sends = [dist.isend(payload, dst=peer, group=self.group, tag=_LOSS_TAG) for peer in self.peers]
        else:
            dist.recv(payload, src=self.last_rank, group=self.group, tag=_LOSS_TAG)
        return payload

    def finish_sends(self) -> None:
        """Wait until the other stages have received the last loss this rank sent."""
        for work in self._sends:
            work.wait()
        self._sends = []

    def share_predictions(self, values: list[Any]) -> list[Any]:
        """The last stage's predictions on every stage of the pipeline."""
        if not self.peers:
            return values
        self.finish_sends()
        box = [values]
        dist.broadcast_object_list(box, src=self.last_rank, group=self.group)
        return box[0]


def build_pipeline(
    model: nn.Module,
    parallel: Any,
    config: Any,
    *,
    device: torch.device,
    criterion: Any,
    batch_size: int | None,
    parallelize_part: Callable[[nn.Module], nn.Module],
) -> tuple[PipelineModel, PipelineRuntime]:
    r"""
    Cut ``model`` into pipeline stages and build this rank's schedule over them.

    In order: the stage layout (``parallel.module_fqns_per_model_part``, else one stage per
    pipeline rank split evenly; several per rank for multi-stage schedules), this rank's parts,
    ``parallelize_part`` on each (tensor parallelism, activation checkpointing, FSDP ...: every
    part is a model of its own), then the stages and the schedule.

    Returns:
        ``(PipelineModel of the local parts, PipelineRuntime)``.
    """
    settings = config.parallel
    degree, rank = parallel.degree("pipeline"), parallel.rank("pipeline")
    cls = schedule_class(settings.pipeline_schedule)
    fqns = settings.get("module_fqns_per_model_part")
    num_stages = len(fqns) if fqns is not None else degree
    local_stages = stage_indices(rank, degree, num_stages, stage_style(cls))
    n_microbatches = resolve_n_microbatches(
        batch_size, settings.pipeline_microbatch_size, settings.pipeline_n_microbatches, degree
    )
    parts = split_model_parts(model, local_stages, num_stages, fqns, parallel)
    parts = [parallelize_part(part) for part in parts]
    loss = MicrobatchLoss(criterion) if criterion is not None else None
    group = parallel.group("pipeline")
    schedule = build_pipeline_schedule(
        parts,
        local_stages,
        num_stages,
        schedule=settings.pipeline_schedule,
        n_microbatches=n_microbatches,
        loss_fn=loss,
        device=device,
        group=group,
    )
    coordinates, style = parallel.topology.coordinates, stage_style(cls)
    ranks = [parallel.topology.rank_from_coordinates({**coordinates, "pipeline": p}) for p in range(degree)]
    holder = next(p for p in range(degree) if num_stages - 1 in stage_indices(p, degree, num_stages, style))
    runtime = PipelineRuntime(
        schedule=schedule,
        parts=parts,
        local_stages=local_stages,
        num_stages=num_stages,
        n_microbatches=n_microbatches,
        loss=loss,
        group=group,
        last_rank=ranks[holder],
        device=device,
        peers=tuple(peer for p, peer in enumerate(ranks) if p != holder) if group is not None else (),
    )
    return PipelineModel(parts), runtime


def middle_stage(parallel: Any, config: Any) -> bool:
    """Whether this rank runs neither the first nor the last stage (it reads no data)."""
    degree = parallel.degree("pipeline")
    if degree == 1:
        return False
    fqns = config.parallel.get("module_fqns_per_model_part")
    num_stages = len(fqns) if fqns is not None else degree
    style = stage_style(schedule_class(config.parallel.pipeline_schedule))
    local = stage_indices(parallel.rank("pipeline"), degree, num_stages, style)
    return 0 not in local and num_stages - 1 not in local
