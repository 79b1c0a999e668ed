"""FSDP2 (``fully_shard``) on a module: each block first, then the root.

- ``build_mp_policy`` / ``build_offload_policy``: ``config.fsdp.mp_policy`` and
  ``config.fsdp.offload_policy`` (a policy object or its keyword mapping; dtypes may be spelled
  ``"bf16"``, ``"fp32"`` ...) as torch policy objects.
- ``fsdp_blocks``: the modules sharded one by one (the entries of the model's outermost
  ``nn.ModuleList``\\ s, the transformer layers of a usual model), so that only one block's
  parameters are gathered at a time.
- ``apply_fsdp``: shard a module over a mesh; it works on CPU (gloo) as on CUDA.

CPU offload works on a CPU-only machine too, but pinned host memory (``pin_memory=True``, the torch
default) needs an accelerator: that one setting is rejected there, with an error that says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

__all__ = ["FSDP_KEYS", "apply_fsdp", "build_mp_policy", "build_offload_policy", "fsdp_blocks"]

#: The ``config.fsdp`` keys FSDP2 understands.
FSDP_KEYS = (
    "enabled",
    "mesh",
    "reshard_after_forward",
    "shard_placement_fn",
    "mp_policy",
    "offload_policy",
    "ignored_params",
)

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
_MP_DTYPE_KEYS = ("param_dtype", "reduce_dtype", "output_dtype")


def _dtype(value: Any, key: str) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).strip().lower().removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"fsdp.mp_policy.{key}: unknown dtype {value!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def build_mp_policy(policy: Any) -> MixedPrecisionPolicy | None:
    r"""
    ``config.fsdp.mp_policy`` as a ``MixedPrecisionPolicy`` (``None`` stays ``None``: full precision).

    Examples:
        >>> build_mp_policy({"param_dtype": "bf16", "reduce_dtype": "fp32"}).param_dtype
        torch.bfloat16
        >>> build_mp_policy(True)
        Traceback (most recent call last):
        ValueError: fsdp.mp_policy must be a mapping or a MixedPrecisionPolicy, got bool True
    """
    if policy is None or isinstance(policy, MixedPrecisionPolicy):
        return policy
    if not isinstance(policy, Mapping):
        raise ValueError(
            f"fsdp.mp_policy must be a mapping or a MixedPrecisionPolicy, got {type(policy).__name__} {policy!r}"
        )
    kwargs = dict(policy)
    for key in _MP_DTYPE_KEYS:
        if key in kwargs:
            kwargs[key] = _dtype(kwargs[key], key)
    try:
        return MixedPrecisionPolicy(**kwargs)
    except TypeError as error:
        raise ValueError(
            f"fsdp.mp_policy: {error}; valid keys are {', '.join(_MP_DTYPE_KEYS)}, cast_forward_inputs"
        ) from None


def build_offload_policy(policy: Any) -> OffloadPolicy | None:
    r"""
    ``config.fsdp.offload_policy`` as an ``OffloadPolicy``: a mapping gives ``CPUOffloadPolicy(**mapping)``.

    Examples:
        >>> build_offload_policy({"pin_memory": False})
        CPUOffloadPolicy(pin_memory=False)
        >>> build_offload_policy(None) is None
        True
    """
    if policy is None or isinstance(policy, OffloadPolicy):
        return policy
    if not isinstance(policy, Mapping):
        raise ValueError(
            f"fsdp.offload_policy must be a mapping or an OffloadPolicy, got {type(policy).__name__} {policy!r}"
        )
    try:
        return CPUOffloadPolicy(**policy)
    except TypeError as error:
        raise ValueError(f"fsdp.offload_policy: {error}; the only key is pin_memory") from None


def _check_offload(policy: OffloadPolicy | None) -> None:
    if isinstance(policy, CPUOffloadPolicy) and policy.pin_memory and not torch.accelerator.is_available():
        raise ValueError(
            "fsdp.offload_policy: pin_memory=True needs an accelerator (pinned host memory exists to speed up "
            "copies to a device) and none is available; set fsdp.offload_policy.pin_memory=False to offload "
            "on a CPU-only machine"
        )


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    r"""
    The entries of every outermost ``nn.ModuleList`` in ``model`` (its stack of layers); ``[]`` if none.

    Examples:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)]))
        >>> len(fsdp_blocks(model))
        2
    """
    blocks: list[nn.Module] = []
    lists: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(f"{outer}.") for outer in lists):
            lists.append(name)
            blocks.extend(module)
    return blocks


def _fsdp_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(key for key, value in config.items() if key not in FSDP_KEYS and value is not None)
    if unknown:
        raise ValueError(f"unsupported fsdp configuration for FSDP2: {', '.join(unknown)}; valid keys are {FSDP_KEYS}")
    reshard = config.get("reshard_after_forward")
    kwargs: dict[str, Any] = {"reshard_after_forward": True if reshard is None else reshard}
    mp_policy = build_mp_policy(config.get("mp_policy"))
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    offload_policy = build_offload_policy(config.get("offload_policy"))
    _check_offload(offload_policy)
    if offload_policy is not None:
        kwargs["offload_policy"] = offload_policy
    if config.get("shard_placement_fn") is not None:
        kwargs["shard_placement_fn"] = config["shard_placement_fn"]
    return kwargs


def apply_fsdp(
    model: nn.Module,
    mesh: Any,
    config: Mapping[str, Any] | None = None,
    *,
    blocks: Iterable[nn.Module] | None = None,
) -> nn.Module:
    r"""
    Shard ``model`` with FSDP2 over ``mesh``: ``fully_shard`` on each block, then on the root.

    Args:
        model: The module (already tensor-parallel, checkpointed or compiled per block, if at all).
        mesh: A 1-D mesh (shard) or 2-D mesh (replicate, shard: HSDP); ``config["mesh"]`` wins when set.
        config: ``config.fsdp`` (keys in ``FSDP_KEYS``): ``reshard_after_forward`` (default
            ``True``), ``mp_policy``, ``offload_policy``, ``shard_placement_fn``, ``ignored_params``.
        blocks: Modules to shard one by one (default: ``fsdp_blocks(model)``).

    Returns:
        ``model``, sharded in place (its class is now also an ``FSDPModule``).
    """
    config = {} if config is None else config
    kwargs = _fsdp_kwargs(config)
    mesh = config.get("mesh") or mesh
    ignored = config.get("ignored_params")
    ignored = set(ignored) if ignored is not None else None
    for block in fsdp_blocks(model) if blocks is None else blocks:
        block_ignored = None if ignored is None else {p for p in block.parameters() if p in ignored}
        fully_shard(block, mesh=mesh, ignored_params=block_ignored or None, **kwargs)
    fully_shard(model, mesh=mesh, ignored_params=ignored, **kwargs)
    return model
