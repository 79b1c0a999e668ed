"""``DeepSpeedStepContainer``: the runner's optimizer step, done by a DeepSpeed engine.

It keeps the contract of ``danling.runners.step.OptimizerContainer`` (``backward``, ``step``,
``step_scheduler``, ``lr``, ``normalize``, ``window``, ``discard``), so the shared loop drives a
DeepSpeed run exactly like a DDP one.  The engine runs with ``managed_gradient_accumulation``
off: every ``backward`` adds to the accumulated gradients, and ``step`` (once per window) reduces
them across ranks, clips them and applies the update.

Accumulation weighs micro-batches as ``OptimizerContainer`` does (``GradientWindow``): each
micro-batch's loss is multiplied by its loss normaliser (or by 1) before ``engine.backward``,
and the window's summed gradients are multiplied by ``world_size / total`` at the step, so an
update follows the mean loss over every item of the window on every rank.  That last factor is
only known when the window ends.  Under ZeRO the gradients are not in ``param.grad`` by then
(ZeRO-2/3 reduce them into partitions during each backward, ZeRO-1 in mixed precision keeps them
in a separate accumulator), so the factor goes through the ZeRO optimizer's loss scale, by which
it divides the gradients before clipping and the update: the scale is divided by the factor for
the step and restored afterwards (multiplicative updates of fp16's dynamic scale are kept).
Without ZeRO the gradients sit in ``param.grad`` until the step and are multiplied directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from danling.optim import BuiltScheduler
from danling.runners.step import GradientWindow

__all__ = ["DeepSpeedStepContainer", "rescaled_gradients"]


def _is_zero_optimizer(optimizer: Any) -> bool:
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    return isinstance(optimizer, ZeROOptimizer)


@contextmanager
def rescaled_gradients(engine: Any, factor: float | None) -> Iterator[None]:
    r"""
    Within the block, ``engine.step()`` applies the accumulated gradients multiplied by ``factor``.

    ZeRO optimizers (stages 1-3) divide their gradients by their loss scale at the step, so the
    scale is divided by ``factor`` inside the block; other optimizers (stage 0) have the
    gradients in ``param.grad``, which are multiplied in place.  ``None`` or ``1.0`` does nothing.
    """
    if factor is None or factor == 1.0:
        yield
        return
    optimizer = engine.optimizer
    if not _is_zero_optimizer(optimizer):
        gradients = [param.grad for param in engine.module.parameters() if param.grad is not None]
        if gradients:
            torch._foreach_mul_(gradients, factor)
        yield
        return
    optimizer.loss_scale = optimizer.loss_scale / factor
    try:
        yield
    finally:
        # fp16's dynamic scale may have grown or shrunk during the step: keep that change
        optimizer.loss_scale = optimizer.loss_scale * factor


class DeepSpeedStepContainer:
    r"""
    Backward and optimizer step through a DeepSpeed engine, with the runner's accumulation weighting.

    Args:
        engine: A ``DeepSpeedEngine`` built with ``managed_gradient_accumulation`` off.
        scheduler: A ``BuiltScheduler`` of the runner's own (``None`` when DeepSpeed owns the
            scheduler, which ``engine.step()`` then steps).  Stepped here after each applied
            update when its interval is ``"step"``; per-epoch ones by ``step_scheduler``.
        normalize: Weigh micro-batches and normalise the window's gradients (see the module
            docstring); the runner turns it off for one micro-batch per step on one process.
        world_size: Data-parallel ranks whose gradients the engine averages.
        meters: Where to record ``grad_norm`` (when the engine computed one) and ``skipped``
            (1 for a skipped update, 0 for an applied one) after each step, e.g. the runner's
            ``meters``.

    Attributes:
        grad_norm: Global gradient norm of the last step, before clipping (``None`` where
            DeepSpeed computes none: ZeRO stage 0 in full precision).
        skipped_steps: Updates skipped so far (fp16 overflow), as counted by the engine.
    """

    def __init__(
        self,
        engine: Any,
        scheduler: BuiltScheduler | None = None,
        *,
        normalize: bool = True,
        world_size: int = 1,
        meters: Any = None,
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.normalize = normalize
        self.world_size = world_size
        self.meters = meters
        self.window = GradientWindow()
        self.grad_norm: float | Tensor | None = None

    @property
    def optimizer(self) -> Any:
        return self.engine.optimizer

    @property
    def skipped_steps(self) -> int:
        return int(self.engine.skipped_steps)

    def backward(self, loss: Tensor) -> None:
        """``engine.backward`` of ``loss`` times its window weight (no division by the accumulation steps)."""
        if self.normalize:
            scale = self.window.loss_scale()
            if scale != 1.0:
                loss = loss * scale
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> bool:
        """Reduce, normalise, clip and apply the window's gradients; ``False`` when the engine skipped the update."""
        factor = None
        if self.normalize:
            factor = self.window.gradient_scale(self.world_size)
            self.window.reset()
        if factor is None or factor == 1.0:
            self.engine.step()
        else:
            with rescaled_gradients(self.engine, factor):
                self.engine.step()
        applied = bool(self.engine.was_step_applied())
        self.grad_norm = self.engine.get_global_grad_norm()
        if applied and self.scheduler is not None and self.scheduler.interval == "step":
            self.scheduler.step()
        if self.meters is not None:
            if self.grad_norm is not None and applied:
                self.meters["grad_norm"].update(self.grad_norm)
            self.meters["skipped"].update(0.0 if applied else 1.0)
        return applied

    def discard(self) -> None:
        """Drop the accumulated gradients without applying them (ZeRO stages 0 and 1).

        Raises:
            NotImplementedError: under ZeRO-2/3, whose backward passes reduce gradients into
                partitions that DeepSpeed clears only in its own step.
        """
        if self.engine.zero_optimization_stage() >= 2:
            raise NotImplementedError(
                f"cannot discard accumulated gradients under ZeRO stage {self.engine.zero_optimization_stage()}: "
                "DeepSpeed reduces them into partitions during backward and clears those only in engine.step()"
            )
        self.window.reset()
        optimizer = self.engine.optimizer
        if _is_zero_optimizer(optimizer):
            optimizer.zero_grad(set_to_none=True)  # also drops ZeRO-1's separate fp32 accumulators
        self.engine.zero_grad()

    def step_scheduler(self, metric: Callable[[], Any] | None = None) -> bool:
        """Step a per-epoch scheduler of the runner; ``metric()`` is called only when it needs one."""
        if self.scheduler is None or self.scheduler.interval != "epoch":
            return False
        self.scheduler.step(metric() if self.scheduler.requires_metric and metric is not None else None)
        return True

    @property
    def lr(self) -> float:
        """Learning rate of the first parameter group."""
        lr = self.engine.optimizer.param_groups[0]["lr"]
        return float(lr) if not isinstance(lr, Tensor) else float(lr.item())
