"""DeepSpeed engine setup and whole-model state: functions usable without a runner.

- ``init_deepspeed_distributed``: join (or, for one process, start) the torch process group and
  point DeepSpeed's communication layer at it;
- ``build_engine``: ``deepspeed.initialize`` for a module, an optional optimizer and a config
  from ``build_deepspeed_config``;
- ``gather_model_state`` / ``load_model_state``: the full, unsharded ``state_dict`` of the
  engine's module, and loading one back (ZeRO-3 gathers and scatters the partitions; the
  optimizer's fp32 master weights follow).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from danling.runners.distributed import get_rank, is_initialized

__all__ = [
    "build_engine",
    "gather_model_state",
    "init_deepspeed_distributed",
    "is_engine",
    "load_model_state",
    "zero_stage",
]


def init_deepspeed_distributed(device: torch.device | None = None, backend: str | None = None) -> bool:
    r"""
    Make sure a default process group exists and DeepSpeed communicates over it.

    A group started by the launcher (``torchrun``, or the runner from ``WORLD_SIZE``) is reused.
    A single process without one gets a one-rank group on an in-memory store (DeepSpeed needs a
    group even alone; no port is opened); the groups DeepSpeed cached from an earlier group, torn
    down since (an earlier runner in this process), are forgotten first.  Returns ``True`` when this call started the group, so
    the caller owns it and destroys it when done.
    """
    import deepspeed

    started = False
    if not is_initialized():
        _forget_stale_groups()
        backend = backend or ("nccl" if device is not None and device.type == "cuda" else "gloo")
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        os.environ.setdefault("LOCAL_RANK", "0")  # deepspeed.initialize insists on it, launcher or not
        started = True
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False, verbose=False)
    return started


def _forget_stale_groups() -> None:
    """Drop DeepSpeed's cached process groups of a world destroyed meanwhile (they cannot be used again)."""
    import deepspeed.utils.groups as groups

    release = getattr(groups, "_release_process_group_references", None)
    if callable(release):
        release(None)


def build_engine(model: nn.Module, optimizer: Any, config: Mapping[str, Any]) -> Any:
    r"""
    ``deepspeed.initialize`` of ``model`` with ``optimizer`` (or the config's ``optimizer`` section, or none).

    The runner keeps its schedulers (they wrap the same parameter groups DeepSpeed steps), so no
    scheduler is handed over; a ``scheduler`` section of the config makes DeepSpeed build and
    step its own.  Returns the engine.
    """
    import deepspeed

    parameters = None
    if optimizer is None and "optimizer" in config:
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=parameters,
        config=dict(config),
        dist_init_required=False,
    )
    return engine


def is_engine(model: Any) -> bool:
    """Whether ``model`` is a ``DeepSpeedEngine`` (without importing DeepSpeed when it cannot be one)."""
    if not isinstance(model, nn.Module) or type(model).__module__.split(".")[0] != "deepspeed":
        return False
    from deepspeed import DeepSpeedEngine

    return isinstance(model, DeepSpeedEngine)


def zero_stage(engine: Any) -> int:
    """The ZeRO stage the engine runs (0 without ZeRO)."""
    return int(engine.zero_optimization_stage())


def gather_model_state(engine: Any) -> dict[str, torch.Tensor] | None:
    r"""
    The engine's whole module ``state_dict`` on the CPU, on rank 0 (``None`` on the other ranks).

    Every rank must call it: under ZeRO-3 the partitions are gathered layer by layer (DeepSpeed's
    consolidation, which also keeps tied weights tied); below ZeRO-3 every rank holds the whole
    module and rank 0 copies it.
    """
    if zero_stage(engine) == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        return dict(state) if state is not None else None
    if get_rank() != 0:
        return None
    return {name: tensor.detach().cpu().clone() for name, tensor in engine.module.state_dict().items()}


def load_model_state(engine: Any, state: Mapping[str, Any], strict: bool = True) -> Any:
    r"""
    Load a whole-module ``state_dict`` (plain names) into the engine's module, on every rank.

    Under ZeRO-3 the parameters are gathered, loaded and scattered back; the optimizer's fp32
    master copies are then refreshed, or the next step would bring the old weights back.  Every
    rank must call it.  Returns what ``load_state_dict`` returns.
    """
    module = engine.module
    if zero_stage(engine) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
            result = module.load_state_dict(state, strict=strict)
    else:
        result = module.load_state_dict(state, strict=strict)
    refresh = getattr(engine.optimizer, "refresh_fp32_params", None)
    if callable(refresh):
        refresh()
    return result
