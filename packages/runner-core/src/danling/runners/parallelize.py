"""Parallelism and compilation as functions on modules.

Each function takes a bare ``nn.Module`` (plus a device, a process group or a sub-config) and
returns the module to use from then on, so it works without a runner and composes in a fixed
order.  ``TorchRunner.materialize_model`` is a short sequence of these calls; backends add their
own next to them (``apply_fsdp``, ``apply_tp`` in ``danling-runner-parallel``).

- ``apply_activation_checkpointing``: recompute activations in backward instead of storing them,
  for every block, every n-th block, or with a selective per-op policy.
- ``apply_compile``: ``torch.compile`` with the options of ``config.compile``, and its
  ``optimize_ddp`` as dynamo's process-wide setting.
- ``apply_ddp``: ``DistributedDataParallel`` with the device ids a device needs.

Order matters: activation checkpointing before compilation (so the compiled graph contains the
recomputation), compilation before DDP (DDP's hooks stay outside the graph).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config_sections import OPTIMIZE_DDP_MODES

__all__ = [
    "ActivationCheckpointPolicy",
    "apply_activation_checkpointing",
    "apply_compile",
    "apply_ddp",
    "checkpoint_blocks",
    "compile_options",
    "resolve_activation_checkpoint_policy",
    "set_optimize_ddp",
]

AC_MODES = ("full", "selective", "op")
#: Ops whose outputs the ``op`` policy keeps (everything else is recomputed): the expensive ones.
SAVED_OPS = frozenset(
    op
    for op in (
        getattr(torch.ops.aten, "mm", None),
        getattr(torch.ops.aten, "addmm", None),
        getattr(torch.ops.aten, "bmm", None),
        getattr(torch.ops.aten, "_scaled_dot_product_efficient_attention", None),
        getattr(torch.ops.aten, "_scaled_dot_product_flash_attention", None),
        getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None),
    )
    if op is not None
)


# activation checkpointing


class ActivationCheckpointPolicy(Mapping):
    r"""
    Which blocks recompute their activations: ``mode`` and ``every``.

    - ``full``: every block.
    - ``selective``: every ``every``-th block (the first, the ``every+1``-th, ...).
    - ``op``: every block, keeping the outputs of matrix products and attention (``SAVED_OPS``) and
      recomputing the cheap element-wise ops around them.

    Built from ``config.activation_checkpoint`` by ``resolve_activation_checkpoint_policy``.
    """

    def __init__(self, mode: str = "full", every: int = 1) -> None:
        if mode not in AC_MODES:
            raise ValueError(f"invalid activation_checkpoint.mode {mode!r}: expected one of {', '.join(AC_MODES)}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"invalid activation_checkpoint.every {every!r}: expected a positive integer")
        self.mode, self.every = mode, every

    def __getitem__(self, key: str) -> Any:
        return {"mode": self.mode, "every": self.every}[key]

    def __iter__(self):
        return iter(("mode", "every"))

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return f"ActivationCheckpointPolicy(mode={self.mode!r}, every={self.every})"


def resolve_activation_checkpoint_policy(setting: Any) -> ActivationCheckpointPolicy | None:
    r"""
    The policy ``config.activation_checkpoint`` asks for, or ``None`` (off).

    Accepts ``None``/``False``/``"none"`` (off), ``True`` or a mode name, an integer ``n`` (every
    ``n``-th block), or a mapping ``{"mode": ..., "every": ...}``.

    Examples:
        >>> resolve_activation_checkpoint_policy(True), resolve_activation_checkpoint_policy(2)
        (ActivationCheckpointPolicy(mode='full', every=1), ActivationCheckpointPolicy(mode='selective', every=2))
        >>> resolve_activation_checkpoint_policy({"mode": "op"}), resolve_activation_checkpoint_policy(None)
        (ActivationCheckpointPolicy(mode='op', every=1), None)
        >>> resolve_activation_checkpoint_policy("sometimes")
        Traceback (most recent call last):
        ValueError: invalid activation_checkpoint.mode 'sometimes': expected one of full, selective, op
    """
    if setting is None or setting is False or (isinstance(setting, str) and setting.lower() in ("none", "off")):
        return None
    if isinstance(setting, ActivationCheckpointPolicy):
        return setting
    if setting is True:
        return ActivationCheckpointPolicy("full")
    if isinstance(setting, int):
        return ActivationCheckpointPolicy("selective" if setting > 1 else "full", setting)
    if isinstance(setting, str):
        return ActivationCheckpointPolicy(setting.lower())
    if isinstance(setting, Mapping):
        unknown = sorted(set(setting) - {"mode", "every"})
        if unknown:
            raise ValueError(f"unknown activation_checkpoint key(s) {unknown}: expected 'mode' and 'every'")
        every = setting.get("every", 1)
        return ActivationCheckpointPolicy(setting.get("mode", "selective" if every != 1 else "full"), every)
    raise ValueError(
        f"invalid activation_checkpoint {setting!r}: expected a bool, a mode name, an integer or a mapping"
    )


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    r"""
    The blocks activation checkpointing wraps: ``model.activation_checkpoint_blocks()`` when the model
    defines it, else the items of every outermost ``nn.ModuleList`` (a transformer's layers).

    Examples:
        >>> model = nn.Sequential(nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)]), nn.Linear(2, 1))
        >>> len(checkpoint_blocks(model))
        2
    """
    custom = getattr(model, "activation_checkpoint_blocks", None)
    if callable(custom):
        return list(custom())
    blocks: list[nn.Module] = []
    inside: set[str] = set()
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, nn.ModuleList):
            inside.add(name)
            blocks.extend(module)
    return blocks


def _saved_ops_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _op_context() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_saved_ops_policy)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The block's own ``forward``, run under ``torch.utils.checkpoint`` (bound to the block on the instance)."""
    extra = {"context_fn": _op_context} if self.__dict__.get("_activation_checkpoint_mode") == "op" else {}
    return checkpoint(type(self).forward.__get__(self), *args, use_reentrant=False, **extra, **kwargs)


_checkpointed_forward.__danling_checkpointed__ = True  # type: ignore[attr-defined]


def apply_activation_checkpointing(model: nn.Module, policy: Any) -> nn.Module:
    r"""
    Recompute the activations of ``model``'s blocks (``checkpoint_blocks``) in backward, per ``policy``.

    Each chosen block's ``forward`` is replaced on the instance by a checkpointed call of the original,
    so parameter names, ``state_dict`` keys and hooks stay as they were.  A block already wrapped is
    left alone.  Returns ``model``.

    Examples:
        >>> model = nn.Sequential(nn.ModuleList([nn.Linear(4, 4) for _ in range(4)]))
        >>> _ = apply_activation_checkpointing(model, {"every": 2})
        >>> [hasattr(block.forward, "__danling_checkpointed__") for block in model[0]]
        [True, False, True, False]
    """
    resolved = resolve_activation_checkpoint_policy(policy)
    if resolved is None:
        return model
    blocks = checkpoint_blocks(model)
    if not blocks:
        raise ValueError(
            f"activation checkpointing found no blocks in {type(model).__name__}: put the layers in an "
            "nn.ModuleList or define `activation_checkpoint_blocks()` on the model"
        )
    for index, block in enumerate(blocks):
        if index % resolved.every or hasattr(block.forward, "__danling_checkpointed__"):
            continue
        # a method bound to the block (not a closure over it): a deep copy (an EMA) binds to the copy
        block._activation_checkpoint_mode = resolved.mode
        block.forward = types.MethodType(_checkpointed_forward, block)
    return model


# compilation


def compile_options(config: Mapping[str, Any] | None) -> dict[str, Any]:
    r"""
    The keyword arguments of ``torch.compile`` that ``config.compile`` sets (``None`` means torch's default).

    Examples:
        >>> compile_options({"enable": True, "mode": "reduce-overhead", "backend": None})
        {'mode': 'reduce-overhead'}
        >>> compile_options({"options": 3})
        Traceback (most recent call last):
        ValueError: `compile.options` must be a mapping, got int
    """
    config = config or {}
    kwargs = {key: config[key] for key in ("backend", "fullgraph", "dynamic", "mode") if config.get(key) is not None}
    options = config.get("options")
    if options is not None:
        if not isinstance(options, Mapping):
            raise ValueError(f"`compile.options` must be a mapping, got {type(options).__name__}")
        kwargs["options"] = dict(options)
    return kwargs


def set_optimize_ddp(mode: str | None) -> None:
    r"""
    Set ``torch._dynamo.config.optimize_ddp`` to ``mode`` (``None`` leaves it as it is).

    Dynamo reads the setting whenever it traces a frame under DDP (the first call of a compiled
    module and every recompilation) and DDP reads it when it wraps a module, not when
    ``torch.compile`` is called: so it is set process-wide, as torch's own setting is.

    Examples:
        >>> set_optimize_ddp("sideways")
        Traceback (most recent call last):
        ValueError: compile.optimize_ddp must be one of ddp_optimizer, python_reducer, python_reducer_without_compiled_forward, no_optimization; got 'sideways'
    """
    if mode is None:
        return
    if mode not in OPTIMIZE_DDP_MODES:
        raise ValueError(f"compile.optimize_ddp must be one of {', '.join(OPTIMIZE_DDP_MODES)}; got {mode!r}")
    torch._dynamo.config.optimize_ddp = mode


def apply_compile(model: nn.Module, config: Mapping[str, Any] | None = None) -> nn.Module:
    """``torch.compile(model, ...)`` with the options of ``config`` (see ``compile_options``) and its ``optimize_ddp``."""
    set_optimize_ddp((config or {}).get("optimize_ddp"))
    return torch.compile(model, **compile_options(config))


# data parallelism


def apply_ddp(
    model: nn.Module,
    device: torch.device | str,
    process_group: Any = None,
    **ddp_options: Any,
) -> nn.Module:
    r"""
    ``model`` wrapped in ``DistributedDataParallel`` over ``process_group`` (default: the world).

    ``device_ids`` is set for a CUDA device and left out elsewhere (DDP on CPU takes none).  A model
    that is already DDP is returned as it is.  Needs an initialised process group.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    device = torch.device(device)
    if device.type == "cuda" and "device_ids" not in ddp_options:
        ddp_options["device_ids"] = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(model, process_group=process_group, **ddp_options)
