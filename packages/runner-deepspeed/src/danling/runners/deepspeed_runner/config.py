"""The DeepSpeed config a run hands to ``deepspeed.initialize``: ``build_deepspeed_config``.

The runner derives the batch-size keys, the precision section, gradient clipping and the
accumulation mode from its own settings; ``config.deepspeed`` may add any DeepSpeed key and may
restate the derived ones, but a restated value that disagrees with the runner is an error (two
sources of truth for one number), as is anything DeepSpeed would only reject later, or not at all:

- ``train_micro_batch_size_per_gpu`` is the loaders' batch size, ``gradient_accumulation_steps``
  is ``accum_steps`` and ``train_batch_size`` is their product with the world size;
- ``bf16`` / ``fp16`` follow ``precision`` (fp16 needs an accelerator: DeepSpeed's CPU backend
  has no fp16 kernels);
- ``gradient_clipping`` is ``max_grad_norm``; without one it is ``0.0`` (off) unless
  ``config.deepspeed`` sets it: DeepSpeed's own default would clip at 1.0 without being asked;
- ``managed_gradient_accumulation`` is off: the runner counts micro-batches and calls
  ``engine.step()`` once per window, and DeepSpeed reduces gradients at that boundary;
- ``zero_optimization.stage`` is one of 0-3, and an offload target needs its compiled extension
  (``cpu_adam`` for ``offload_optimizer.device="cpu"``, ``async_io`` for ``"nvme"``);
- an ``optimizer`` or ``scheduler`` section and an optimizer or scheduler of the runner's own
  (``config.optim`` / ``config.sched`` or one set in ``__init__``) cannot both be given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["DeepSpeedConfigError", "build_deepspeed_config", "op_compatible", "precision_section"]

#: ``precision`` spellings -> DeepSpeed section (``None``: full precision).
PRECISION_SECTIONS = {
    None: None,
    "fp32": None,
    "float32": None,
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
}
ZERO_STAGES = (0, 1, 2, 3)
#: offload device -> the DeepSpeed op it needs (``None``: nothing to compile).
OFFLOAD_OPS = {"none": None, "cpu": "cpu_adam", "nvme": "async_io"}
_OP_BUILDERS = {"cpu_adam": "CPUAdamBuilder", "async_io": "AsyncIOBuilder"}


class DeepSpeedConfigError(ValueError):
    """A ``config.deepspeed`` key whose value is invalid or contradicts the runner's own settings."""


def op_compatible(op: str) -> bool:
    """Whether DeepSpeed can build (or has built) extension ``op`` here (``cpu_adam``, ``async_io``)."""
    from deepspeed.ops import op_builder

    return bool(getattr(op_builder, _OP_BUILDERS[op])().is_compatible(verbose=False))


def precision_section(precision: str | None) -> str | None:
    r"""
    The DeepSpeed section (``"bf16"``, ``"fp16"``) that ``config.precision`` enables, ``None`` for full precision.

    Examples:
        >>> precision_section("BF16"), precision_section("half"), precision_section(None)
        ('bf16', 'fp16', None)
        >>> precision_section("fp8")
        Traceback (most recent call last):
        danling.runners.deepspeed_runner.config.DeepSpeedConfigError: precision='fp8' is not supported by DeepSpeedRunner; expected one of bf16, bfloat16, float16, float32, fp16, fp32, half, or None
    """
    key = None if precision is None else str(precision).strip().lower().replace("-", "_")
    if key not in PRECISION_SECTIONS:
        names = ", ".join(sorted(name for name in PRECISION_SECTIONS if name is not None))
        raise DeepSpeedConfigError(
            f"precision={precision!r} is not supported by DeepSpeedRunner; expected one of {names}, or None"
        )
    return PRECISION_SECTIONS[key]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)


def _agree(config: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``config[key] = value``; a user value that differs is an error naming both."""
    if value is None:
        return
    if key in config and config[key] != value:
        raise DeepSpeedConfigError(f"deepspeed.{key}={config[key]!r} conflicts with {source}={value!r}")
    config[key] = value


def _enabled(section: Any) -> bool:
    return isinstance(section, Mapping) and bool(section.get("enabled", False))


def _apply_batch_sizes(config: dict[str, Any], micro_batch_size: int | None, world_size: int, accum_steps: int) -> None:
    _agree(config, "train_micro_batch_size_per_gpu", micro_batch_size, "dataloader.batch_size")
    _agree(config, "gradient_accumulation_steps", accum_steps, "accum_steps")
    micro = config.get("train_micro_batch_size_per_gpu")
    if micro is not None:
        expected = int(micro) * accum_steps * world_size
        source = f"micro batch {micro} x accum_steps {accum_steps} x world size {world_size}"
        _agree(config, "train_batch_size", expected, source)
    elif "train_batch_size" not in config:
        raise DeepSpeedConfigError(
            "cannot build the DeepSpeed config: the micro batch size is unknown; set dataloader.batch_size "
            "(or deepspeed.train_micro_batch_size_per_gpu)"
        )
    elif int(config["train_batch_size"]) % (accum_steps * world_size):
        raise DeepSpeedConfigError(
            f"deepspeed.train_batch_size={config['train_batch_size']!r} is not divisible by accum_steps "
            f"{accum_steps} x world size {world_size}"
        )


def _apply_precision(config: dict[str, Any], precision: str | None, device_type: str) -> None:
    wanted = precision_section(precision)
    for section in ("bf16", "fp16"):
        user = config.get(section)
        if user is not None and not isinstance(user, Mapping):
            raise DeepSpeedConfigError(f"deepspeed.{section} must be a mapping like {{'enabled': true}}, got {user!r}")
        if _enabled(user) and section != wanted:
            raise DeepSpeedConfigError(
                f"deepspeed.{section}.enabled=True conflicts with precision={precision!r}; "
                f"set precision={section!r} (the forward pass autocasts to it)"
            )
    if wanted is not None:
        section = dict(config.get(wanted) or {})
        if section.get("enabled") is False:
            raise DeepSpeedConfigError(f"deepspeed.{wanted}.enabled=False conflicts with precision={precision!r}")
        section["enabled"] = True
        config[wanted] = section
    if wanted == "fp16" and device_type == "cpu":
        raise DeepSpeedConfigError(
            f"precision={precision!r} (deepspeed.fp16) is not supported by DeepSpeed on the CPU: its CPU "
            "accelerator has no fp16 kernels; use precision='bf16', or run on CUDA"
        )


def _apply_zero(config: dict[str, Any], op_available: Callable[[str], bool]) -> None:
    zero = config.get("zero_optimization")
    if zero is None:
        return
    if not isinstance(zero, Mapping):
        raise DeepSpeedConfigError(f"deepspeed.zero_optimization must be a mapping, got {zero!r}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise DeepSpeedConfigError(
            f"deepspeed.zero_optimization.stage={stage!r} is invalid; expected one of {', '.join(map(str, ZERO_STAGES))}"
        )
    for key, least_stage in (("offload_optimizer", 1), ("offload_param", 3)):
        offload = zero.get(key)
        if offload is None:
            continue
        device = str(offload.get("device", "none") if isinstance(offload, Mapping) else offload).lower()
        if device not in OFFLOAD_OPS:
            raise DeepSpeedConfigError(
                f"deepspeed.zero_optimization.{key}.device={device!r} is invalid; expected one of "
                f"{', '.join(OFFLOAD_OPS)}"
            )
        if device != "none" and stage < least_stage:
            raise DeepSpeedConfigError(
                f"deepspeed.zero_optimization.{key}.device={device!r} needs ZeRO stage >= {least_stage}, "
                f"got stage {stage}"
            )
        op = OFFLOAD_OPS[device]
        if op is not None and not op_available(op):
            raise DeepSpeedConfigError(
                f"deepspeed.zero_optimization.{key}.device={device!r} needs DeepSpeed's {op!r} extension, "
                f"which cannot be built here (run `ds_report`); use another offload device or none"
            )


def _apply_ownership(config: dict[str, Any], client_optimizer: bool, client_scheduler: bool) -> None:
    if client_optimizer and "optimizer" in config:
        raise DeepSpeedConfigError(
            "deepspeed.optimizer is set and the runner has an optimizer of its own (config.optim or "
            "self.optimizer); keep one of them"
        )
    if client_scheduler and "scheduler" in config:
        raise DeepSpeedConfigError(
            "deepspeed.scheduler is set and the runner has a scheduler of its own (config.sched or "
            "self.scheduler); keep one of them"
        )


def build_deepspeed_config(
    user: Mapping[str, Any] | None = None,
    *,
    micro_batch_size: int | None,
    world_size: int = 1,
    accum_steps: int = 1,
    precision: str | None = None,
    max_grad_norm: float | None = None,
    device_type: str = "cpu",
    client_optimizer: bool = True,
    client_scheduler: bool = False,
    op_available: Callable[[str], bool] = op_compatible,
) -> dict[str, Any]:
    r"""
    The DeepSpeed config of a run: ``user`` (``config.deepspeed``) plus what the runner's settings fix.

    Args:
        user: ``config.deepspeed``: any DeepSpeed keys; never modified.
        micro_batch_size: Batch size of one loader step on one rank (``dataloader.batch_size``).
        world_size: Data-parallel ranks.
        accum_steps: Micro-batches per optimizer step.
        precision: ``config.precision``.
        max_grad_norm: Clip the global gradient norm to this; ``None`` turns clipping off.
        device_type: ``"cpu"`` or ``"cuda"`` ...: fp16 is refused on the CPU.
        client_optimizer: Whether the runner hands DeepSpeed an optimizer of its own.
        client_scheduler: Whether the runner hands DeepSpeed a scheduler of its own.
        op_available: Whether a DeepSpeed extension can be built (``op_compatible``).

    Raises:
        DeepSpeedConfigError: a key is invalid or contradicts the runner (the message names both).

    Examples:
        >>> config = build_deepspeed_config({"zero_optimization": {"stage": 2}}, micro_batch_size=8,
        ...                                 world_size=2, accum_steps=4, precision="bf16")
        >>> config["train_batch_size"], config["bf16"], config["gradient_clipping"]
        (64, {'enabled': True}, 0.0)
        >>> build_deepspeed_config({"train_batch_size": 32}, micro_batch_size=8, world_size=2, accum_steps=4)
        Traceback (most recent call last):
        danling.runners.deepspeed_runner.config.DeepSpeedConfigError: deepspeed.train_batch_size=32 conflicts with micro batch 8 x accum_steps 4 x world size 2=64
    """
    if user is not None and not isinstance(user, Mapping):
        raise DeepSpeedConfigError(f"config.deepspeed must be a mapping of DeepSpeed settings, got {user!r}")
    if accum_steps < 1 or world_size < 1:
        raise DeepSpeedConfigError(f"accum_steps and world size must be >= 1, got {accum_steps} and {world_size}")
    config: dict[str, Any] = _plain(user or {})
    _apply_batch_sizes(config, micro_batch_size, world_size, accum_steps)
    _apply_precision(config, precision, device_type)
    if config.get("managed_gradient_accumulation", False):
        raise DeepSpeedConfigError(
            "deepspeed.managed_gradient_accumulation=True conflicts with the runner, which counts micro-batches "
            "itself (accum_steps) and calls engine.step() once per window; leave the key out"
        )
    config["managed_gradient_accumulation"] = False
    if max_grad_norm is None:
        config.setdefault("gradient_clipping", 0.0)  # never DeepSpeed's default of 1.0
    else:
        _agree(config, "gradient_clipping", float(max_grad_norm), "max_grad_norm")
    _apply_zero(config, op_available)
    _apply_ownership(config, client_optimizer, client_scheduler)
    return config
