"""An exponential moving average of a model's weights, kept by ``torch.optim.swa_utils.AveragedModel``.

``build_ema(model, config)`` copies the model; ``update_ema(ema, model, step)`` after each applied
optimizer step folds the new weights in::

    ema = decay * ema + (1 - decay) * weights

During the first ``warmup_steps`` steps the average copies the weights instead (early weights
change too fast to be worth averaging), and afterwards it is updated every ``interval`` steps
(each update applies ``decay`` once, so the per-step decay is ``decay ** (1 / interval)``).
Floating-point buffers (batch-norm statistics) are averaged like parameters; integer buffers
(``num_batches_tracked``) are copied.  The average's ``state_dict`` (weights plus the update
counter ``n_averaged``) is what a checkpoint stores; ``ema.module`` is the averaged model itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import chanfig
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EmaConfig(chanfig.Config):
    r"""
    Exponential moving average of the weights (``config.ema``); setting the section turns it on.

    Attributes:
        decay: Weight of the old average at each update, in ``[0, 1]``.
        warmup_steps: For the first ``warmup_steps`` optimizer steps the average copies the
            model instead of averaging it.
        interval: Update the average every ``interval`` optimizer steps.
        device: Where the average lives (``"cpu"`` saves accelerator memory); ``None``: with the model.
        evaluate: Evaluation and inference use the average instead of the trained weights.

    Examples:
        >>> EmaConfig(decay=0.99).interval
        1
        >>> EmaConfig(decay=1.5)
        Traceback (most recent call last):
        ValueError: ema.decay must be a number in [0, 1], got 1.5
    """

    decay: float = 0.999
    warmup_steps: int = 0
    interval: int = 1
    device: str | None = None
    evaluate: bool = True

    def validate(self) -> None:
        super().validate()
        decay = self.get("decay", 0.999)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema.decay must be a number in [0, 1], got {decay!r}")
        for key, minimum in (("warmup_steps", 0), ("interval", 1)):
            value = self.get(key, minimum)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"ema.{key} must be an integer >= {minimum}, got {value!r}")
        device = self.get("device")
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"ema.device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}"
                ) from None


def _average(decay: float):
    """``get_ema_multi_avg_fn(decay)`` for floating-point tensors; integer tensors are copied."""
    ema_update = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def average(averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor], n_averaged: Any) -> None:
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            ema_update(averaged, current, n_averaged)
        else:  # step counters and the like: averaging integers only truncates them
            for target, source in zip(averaged, current, strict=True):
                target.copy_(source)

    return average


class ExponentialMovingAverage(AveragedModel):
    r"""
    An ``AveragedModel`` that knows its schedule (``warmup_steps``, ``interval``); see ``build_ema``.

    It starts as a copy of ``model`` (``n_averaged == 1``), so the first update already averages.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        *,
        warmup_steps: int = 0,
        interval: int = 1,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(model, device=device, multi_avg_fn=_average(decay), use_buffers=True)
        self.module.requires_grad_(False)
        self.n_averaged.fill_(1)
        self.decay, self.warmup_steps, self.interval = decay, warmup_steps, interval

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Make the average equal to ``model``'s current parameters and buffers."""
        targets = itertools.chain(self.module.parameters(), self.module.buffers())
        sources = itertools.chain(model.parameters(), model.buffers())
        for target, source in zip(targets, sources, strict=True):
            target.copy_(source.detach())


def build_ema(model: nn.Module, config: EmaConfig | dict[str, Any]) -> ExponentialMovingAverage:
    r"""
    A moving average of ``model``, configured by ``config`` (an ``EmaConfig`` or its mapping).

    Pass the bare model, not its ``DistributedDataParallel`` wrapper: the average is a deep copy.

    Examples:
        >>> model = nn.Linear(2, 1)
        >>> ema = build_ema(model, {"decay": 0.5})
        >>> with torch.no_grad():
        ...     _ = model.bias.fill_(1.0)
        >>> ema.module.bias.data = torch.zeros(1)
        >>> update_ema(ema, model, step=1), ema.module.bias.item()
        (True, 0.5)
    """
    if not isinstance(config, EmaConfig):
        config = EmaConfig(**dict(config))
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError("build_ema needs the bare model, got a DistributedDataParallel wrapper: pass model.module")
    return ExponentialMovingAverage(
        model, config.decay, warmup_steps=config.warmup_steps, interval=config.interval, device=config.device
    )


def update_ema(ema: ExponentialMovingAverage, model: nn.Module, step: int) -> bool:
    r"""
    Fold ``model``'s weights into ``ema`` after optimizer step ``step`` (1 for the first); returns whether it changed.

    Steps up to ``ema.warmup_steps`` copy the weights; later steps average them when ``step`` is
    a multiple of ``ema.interval``.
    """
    if step <= ema.warmup_steps:
        ema.copy_from(model)
        return True
    if step % ema.interval:
        return False
    ema.update_parameters(model)
    return True
