"""One training step: unpack the batch, weigh the loss, run backward, and apply the optimizer.

- ``split_batch``: the default batch contract (``{"input", "target"}``, ``(input, target)``, or a
  bare input).
- ``loss_normalizer``: how many items a batch's mean loss averages over (valid tokens, target
  elements), so accumulated micro-batches of different sizes are weighed by their size.
- ``autocast_dtype`` / ``forward_context`` / ``build_grad_scaler``: mixed precision (bf16 on CPU
  and CUDA; fp16 with a ``GradScaler``).
- ``GradientWindow``: the micro-batches accumulated since the last optimizer step.
- ``OptimizerContainer``: everything around ``optimizer.step()``: loss scaling, gradient
  normalisation over the window and the ranks, clipping by value and norm, skipping non-finite
  gradients, stepping the per-step scheduler, zeroing gradients.

Nothing here reads a tensor back to the host unless asked to: checking for non-finite gradients
(``skip_nonfinite_grad``, or fp16 loss scaling, which must know whether to skip) synchronises
once per optimizer step; every other path only queues kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from danling.optim import BuiltScheduler

from .config import PRECISIONS
from .distributed import all_reduce_sum, any_rank, start_all_reduce_sum

if TYPE_CHECKING:
    from .ddp_comm import WindowTotalHook

#: Batch keys (and keys of a mapping target) that state the loss normalizer explicitly.
NORMALIZER_KEYS = ("loss_normalizer", "num_valid_tokens", "valid_tokens", "num_tokens", "token_count")
#: The context of a step that needs none (``nullcontext`` holds no state, so one serves every step).
NO_CONTEXT = contextlib.nullcontext()


def split_batch(data: Any) -> tuple[Any, Any]:
    r"""
    ``(inputs, target)`` of a batch: ``data["input"], data.get("target")`` for mappings,
    ``data[0], data[1]`` for sequences, ``data, None`` for anything else (a tensor).

    Examples:
        >>> split_batch({"input": 1, "target": 2}), split_batch((1, 2)), split_batch([1]), split_batch(3)
        ((1, 2), (1, 2), (1, None), (3, None))
    """
    kind = type(data)
    if kind is list or kind is tuple:  # what ``default_collate`` makes of (input, target) samples
        return data[0], (data[1] if len(data) > 1 else None)
    if isinstance(data, Mapping):
        if "input" not in data:
            raise KeyError(
                f"a mapping batch needs an 'input' key, got keys {sorted(data)}; override train_step() otherwise"
            )
        return data["input"], data.get("target")
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return data[0], (data[1] if len(data) > 1 else None)
    return data, None


def _as_count(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, Tensor) and value.numel() == 1:
        return int(value.detach().item())
    return None


def _explicit_normalizer(mapping: Mapping[str, Any]) -> int | None:
    for key in NORMALIZER_KEYS:
        if key in mapping:
            count = _as_count(mapping[key])
            if count is not None:
                return count
    return None


def _target_normalizer(target: Any, criterion: Any) -> int | None:
    if not isinstance(target, Tensor):
        return None
    ignore_index = getattr(criterion, "ignore_index", None)
    if isinstance(ignore_index, int):
        return int((target != ignore_index).sum())
    if getattr(criterion, "reduction", None) == "mean":
        return target.numel()
    return None


def loss_normalizer(data: Any, criterion: Any) -> int | None:
    r"""
    How many items the batch's (mean) loss averages over, or ``None`` when it cannot be told.

    In order: an explicit count in the batch (``num_tokens``, ``loss_normalizer`` ... see
    ``NORMALIZER_KEYS``) or in a mapping target; the targets ``criterion`` counts (those not equal
    to its ``ignore_index``; every element for a ``reduction="mean"`` loss); the sum of
    ``input["attention_mask"]``.  Counts that are not positive mean "unknown".

    Examples:
        >>> criterion = torch.nn.CrossEntropyLoss()
        >>> loss_normalizer((torch.zeros(3, 5), torch.tensor([1, -100, 2])), criterion)
        2
        >>> loss_normalizer({"input": torch.zeros(2), "num_tokens": 7}, criterion)
        7
        >>> loss_normalizer(torch.zeros(2), criterion) is None
        True
    """
    count: int | None = None
    if isinstance(data, Mapping):
        count = _explicit_normalizer(data)
        target = data.get("target")
        if count is None and isinstance(target, Mapping):
            count = _explicit_normalizer(target)
        if count is None:
            count = _target_normalizer(target, criterion)
        inputs = data.get("input")
        if count is None and isinstance(inputs, Mapping) and isinstance(inputs.get("attention_mask"), Tensor):
            count = int(inputs["attention_mask"].sum())
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) > 1:
        target = data[1]
        count = _explicit_normalizer(target) if isinstance(target, Mapping) else _target_normalizer(target, criterion)
    return count if count is not None and count > 0 else None


def autocast_dtype(precision: str | None) -> torch.dtype | None:
    r"""
    The autocast dtype of ``config.precision``: ``None`` (full precision), ``torch.float16`` or ``torch.bfloat16``.

    Examples:
        >>> autocast_dtype("bf16"), autocast_dtype("half"), autocast_dtype(None)
        (torch.bfloat16, torch.float16, None)
        >>> autocast_dtype("fp32")
        Traceback (most recent call last):
        ValueError: Unknown precision: 'fp32'. Valid options are: bf16, bfloat16, float16, fp16, half (or None for full precision)
    """
    if precision is None:
        return None
    name = str(precision).strip().lower()
    if name not in PRECISIONS:
        raise ValueError(
            f"Unknown precision: {precision!r}. Valid options are: {', '.join(sorted(PRECISIONS))} "
            "(or None for full precision)"
        )
    return getattr(torch, PRECISIONS[name])


def forward_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context for full precision."""
    if dtype is None:
        return NO_CONTEXT
    return torch.autocast(device.type, dtype=dtype)


def build_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for fp16 autocast (whose small range underflows gradients); ``None`` otherwise."""
    if dtype is not torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


@dataclass
class GradientWindow:
    r"""
    The micro-batches accumulated since the last optimizer step.

    The first micro-batch decides how the window is weighed: by each batch's loss normalizer
    (``weighted``, when it has one) or uniformly.  Backward runs on ``loss * scale`` and the
    optimizer step multiplies gradients by ``world_size / total``, so the update follows the
    mean loss over every item of every micro-batch on every rank, however the items were split.
    On several ranks ``total`` is summed over them; ``start_sum`` starts that sum before the
    micro-batch's backward, so it travels while the gradients are computed and the step only
    collects it.  Under DDP it travels inside the gradient all-reduce instead (a
    ``ddp_comm.WindowTotalHook``); when the window's last backward did not carry it there, the
    step sums it with a separate all-reduce.

    Examples:
        >>> window = GradientWindow()
        >>> window.pending = 1; window.loss_scale()
        1.0
        >>> window.pending = 3; window.loss_scale()
        3.0
        >>> window.gradient_scale(world_size=1)
        0.25
    """

    weighted: bool | None = None
    total: float = 0.0
    pending: int | None = None
    summed: Callable[[], float | None] | None = None

    def loss_scale(self) -> float:
        """The factor for the next micro-batch's loss (consumes ``pending``)."""
        normalizer, self.pending = self.pending, None
        if self.weighted is None:
            self.weighted = normalizer is not None
        if not self.weighted:
            self.total += 1.0
            return 1.0
        if normalizer is None:
            raise ValueError(
                "loss normalizer became unavailable within the current accumulation window. Override "
                "`train_step()` or provide consistent batch metadata for weighted normalization."
            )
        self.total += normalizer
        return float(normalizer)

    def start_sum(self, hook: WindowTotalHook | None = None) -> None:
        """
        Start summing ``total`` over the ranks (each micro-batch restarts it; the step reads the last):
        inside DDP's gradient all-reduce when ``hook`` can carry it, else with an all-reduce of its own.
        """
        carried = hook.carry(self.total) if hook is not None else None
        self.summed = carried if carried is not None else start_all_reduce_sum(self.total)

    def gradient_scale(self, world_size: int) -> float | None:
        """The factor for the window's summed gradients; sums ``total`` over ranks when distributed."""
        if world_size == 1:
            total = self.total
        else:
            total = self.summed() if self.summed is not None else None
            if total is None:  # not started, or the DDP hook did not carry this window's total
                total = all_reduce_sum(self.total)
        return world_size / total if total > 0 else None

    def reset(self) -> None:
        self.weighted, self.total, self.pending, self.summed = None, 0.0, None, None


def _unique_parameters(optimizer: Optimizer) -> list[Tensor]:
    seen: dict[int, Tensor] = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            seen.setdefault(id(parameter), parameter)
    return list(seen.values())


class OptimizerContainer:
    r"""
    An optimizer and what surrounds its step in a training loop.

    Args:
        optimizer: The optimizer.
        scheduler: A ``BuiltScheduler``; stepped here after each applied update when its
            interval is ``"step"`` (per-epoch schedulers are stepped by the loop).
        scaler: A ``GradScaler`` (fp16), which scales the loss before ``backward``.
        max_grad_value: Clip each gradient element to ``[-v, v]``.
        max_grad_norm: Clip the gradients' global L2 norm.
        skip_nonfinite_grad: Skip the update (and zero the gradients) when any gradient is
            ``inf`` or ``nan``, instead of writing it into the weights.
        normalize: Weigh micro-batches (by their loss normalizer, or uniformly) and normalise the
            gradients at the step (see ``GradientWindow``).  With one micro-batch per step on one
            process the factors cancel, so the runner turns this off and saves the work.
        world_size: Ranks whose gradients DDP averages.
        window_total_hook: The DDP communication hook that sums the window total over the ranks
            with the gradients (``ddp_comm.WindowTotalHook``); ``None`` sums it separately.

    Examples:
        >>> model = torch.nn.Linear(1, 1, bias=False); _ = torch.nn.init.ones_(model.weight)
        >>> container = OptimizerContainer(torch.optim.SGD(model.parameters(), lr=0.1), max_grad_value=0.5)
        >>> container.backward((model(torch.ones(1, 1)) - 0).pow(2).mean())  # gradient 2
        >>> container.step(), round(model.weight.item(), 6)  # clipped to 0.5: 1 - 0.1 * 0.5
        (True, 0.95)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        scheduler: BuiltScheduler | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        max_grad_value: float | None = None,
        max_grad_norm: float | None = None,
        skip_nonfinite_grad: bool = False,
        normalize: bool = True,
        world_size: int = 1,
        window_total_hook: WindowTotalHook | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.max_grad_value = max_grad_value
        self.max_grad_norm = max_grad_norm
        self.skip_nonfinite_grad = skip_nonfinite_grad
        self.normalize = normalize
        self.world_size = world_size
        self.window_total_hook = window_total_hook
        self.parameters = _unique_parameters(optimizer)
        self.window = GradientWindow()

    def backward(self, loss: Tensor) -> None:
        """Backward of ``loss`` scaled by its window weight (and the fp16 loss scale)."""
        if self.normalize:
            scale = self.window.loss_scale()
            if scale != 1.0:
                loss = loss * scale
            if self.world_size > 1:
                self.window.start_sum(self.window_total_hook)  # overlaps (or rides) the backward below
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def gradients(self) -> list[Tensor]:
        """The gradients the next step would apply (parameters without a gradient are left out)."""
        return [parameter.grad for parameter in self.parameters if parameter.grad is not None]

    def step(self) -> bool:
        """Apply the accumulated gradients; ``False`` when the update was skipped (non-finite gradients)."""
        if self.normalize:
            scale = self.window.gradient_scale(self.world_size)
            self.window.reset()
            if scale is not None and scale != 1.0:
                torch._foreach_mul_(self.gradients(), scale)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        total_norm = self.clip_gradients()
        if (self.skip_nonfinite_grad or self.scaler is not None) and not self.gradients_finite(total_norm):
            if self.scaler is not None:
                self.scaler.update()  # lowers the loss scale: unscale_ recorded the overflow
            self.zero_grad()
            return False
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None and self.scheduler.interval == "step":
            self.scheduler.step()
        self.zero_grad()
        return True

    def clip_gradients(self) -> Tensor | None:
        """Clip by value, then by norm (as configured); return the total norm before norm clipping."""
        if self.max_grad_value is not None:
            torch.nn.utils.clip_grad_value_(self.parameters, self.max_grad_value)
        if self.max_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        return None

    def gradients_finite(self, total_norm: Tensor | None = None) -> bool:
        """Whether every gradient is finite on every rank (one host synchronisation)."""
        if total_norm is None:
            gradients = self.gradients()
            if not gradients:
                return True
            total_norm = torch.stack(torch._foreach_norm(gradients)).sum()
        return not any_rank(not bool(torch.isfinite(total_norm)))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def discard(self) -> None:
        """Drop the accumulated gradients without stepping."""
        self.window.reset()
        self.zero_grad()

    def step_scheduler(self, metric: Callable[[], Any] | None = None) -> bool:
        """Step a per-epoch scheduler; ``metric()`` is called only when it needs one.  ``False`` if none is due."""
        if self.scheduler is None or self.scheduler.interval != "epoch":
            return False
        self.scheduler.step(metric() if self.scheduler.requires_metric and metric is not None else None)
        return True

    @property
    def lr(self) -> float:
        """Learning rate of the first parameter group."""
        lr = self.optimizer.param_groups[0]["lr"]
        return float(lr) if not isinstance(lr, Tensor) else float(lr.item())


def no_sync(modules: Sequence[Any], enabled: bool) -> contextlib.AbstractContextManager:
    """Enter ``module.no_sync()`` of every DDP module when ``enabled`` (gradient accumulation)."""
    if not enabled or not modules:
        return NO_CONTEXT
    stack = contextlib.ExitStack()
    for module in modules:
        stack.enter_context(module.no_sync())
    return stack
