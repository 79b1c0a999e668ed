"""Tensor parallelism on a module: a plan of ``{module name: ParallelStyle}`` applied with ``parallelize_module``.

- ``build_tp_plan``: a plan as written in a config (style names and layout strings) as torch
  ``ParallelStyle`` objects.
- ``apply_tp``: apply a plan over the tensor axis' 1-D mesh (a no-op on a mesh of one rank).
- ``transformer_block_plan`` / ``transformer_plan``: the built-in plan for the example
  transformer of ``danling.runners.parallel_runner.transformer``, the usual Megatron layout: the
  attention's query/key/value and the MLP's first projection column-wise (each rank computes
  some heads, some hidden units), the output projections row-wise (partial sums reduced into
  a sequence-sharded output), and the norms sequence-parallel (each rank normalises its slice
  of the sequence, so activations between the matmuls are not replicated).

A config plan names modules by their dotted path and gives each a style::

    {"attention.wq": "colwise", "attention.wo": "rowwise",
     "norm": {"style": "sequence_parallel", "sequence_dim": 1},
     "output": {"style": "colwise", "input_layouts": "shard(1)", "output_layouts": "replicate"}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from torch.distributed.tensor import Placement, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

__all__ = ["PARALLEL_STYLES", "apply_tp", "build_tp_plan", "transformer_block_plan", "transformer_plan"]

#: Style names a config plan may use.
PARALLEL_STYLES: dict[str, type[ParallelStyle]] = {
    "colwise": ColwiseParallel,
    "rowwise": RowwiseParallel,
    "sequence_parallel": SequenceParallel,
    "prepare_input": PrepareModuleInput,
    "prepare_output": PrepareModuleOutput,
    "prepare_input_output": PrepareModuleInputOutput,
}
_LAYOUT_KEYS = ("input_layouts", "output_layouts", "desired_input_layouts", "desired_output_layouts")
_SHARD = re.compile(r"shard\((-?\d+)\)")


def _layout(value: Any, where: str) -> Any:
    if value is None or isinstance(value, Placement):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_layout(item, where) for item in value)
    name = str(value).strip().lower().replace(" ", "")
    if name == "replicate":
        return Replicate()
    match = _SHARD.fullmatch(name)
    if match:
        return Shard(int(match.group(1)))
    raise ValueError(f"tensor plan {where}: unknown layout {value!r}; expected 'replicate' or 'shard(<dim>)'")


def _style(name: str, value: Any) -> ParallelStyle:
    if isinstance(value, ParallelStyle):
        return value
    kwargs: dict[str, Any] = {}
    if isinstance(value, Mapping):
        kwargs = dict(value)
        value = kwargs.pop("style", None)
    key = str(value).strip().lower().replace("-", "_")
    if key not in PARALLEL_STYLES:
        raise ValueError(
            f"tensor plan entry {name!r}: unknown style {value!r}; expected a ParallelStyle or one of "
            f"{sorted(PARALLEL_STYLES)}"
        )
    for layout_key in _LAYOUT_KEYS:
        if layout_key in kwargs:
            kwargs[layout_key] = _layout(kwargs[layout_key], f"entry {name!r} {layout_key}")
    try:
        return PARALLEL_STYLES[key](**kwargs)
    except TypeError as error:
        raise ValueError(f"tensor plan entry {name!r}: {error}") from None


def build_tp_plan(plan: Mapping[str, Any]) -> dict[str, ParallelStyle]:
    r"""
    A plan of ``{module name: style}`` with every style as a ``ParallelStyle``.

    A style is a ``ParallelStyle``, a name in ``PARALLEL_STYLES``, or a mapping with ``style`` and
    the style's keyword arguments (layouts written ``"replicate"`` or ``"shard(<dim>)"``).

    Examples:
        >>> plan = build_tp_plan({"w1": "colwise", "w2": {"style": "rowwise", "output_layouts": "shard(1)"}})
        >>> type(plan["w1"]).__name__, plan["w2"].output_layouts
        ('ColwiseParallel', (Shard(dim=1),))
        >>> build_tp_plan({"w1": "diagonal"})
        Traceback (most recent call last):
        ValueError: tensor plan entry 'w1': unknown style 'diagonal'; expected a ParallelStyle or one of ['colwise', 'prepare_input', 'prepare_input_output', 'prepare_output', 'rowwise', 'sequence_parallel']
    """
    if not isinstance(plan, Mapping):
        raise ValueError(f"a tensor plan must be a mapping of module names to styles, got {type(plan).__name__}")
    return {str(name): _style(str(name), style) for name, style in plan.items()}


def apply_tp(model: nn.Module, mesh: Any, plan: Mapping[str, Any]) -> nn.Module:
    r"""
    Apply a tensor-parallel plan to ``model`` over a 1-D mesh (the ``tensor`` axis); returns ``model``.

    Every module the plan names must exist (a typo would otherwise leave a layer unsharded).  On a
    mesh of one rank nothing is changed.
    """
    styles = build_tp_plan(plan)
    if mesh.ndim != 1:
        raise ValueError(f"apply_tp needs the 1-D tensor mesh, got a {mesh.ndim}-D mesh {mesh.mesh_dim_names}")
    if mesh.size() == 1:
        return model
    names = {name for name, _ in model.named_modules()}
    missing = sorted(name for name in styles if name and name not in names and "*" not in name)
    if missing:
        raise ValueError(f"tensor plan names modules that {type(model).__name__} does not have: {missing}")
    root = styles.pop("", None)  # the module itself: its boundary style goes on last
    parallelize_module(model, mesh, styles)
    if root is not None:
        parallelize_module(model, mesh, root)
    return model


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def transformer_block_plan(prefix: str = "", *, boundary: bool = True) -> dict[str, ParallelStyle]:
    r"""
    The tensor plan of one ``TransformerBlock`` (attention and MLP, sequence-parallel norms).

    Inside the block, activations between the norms and the projections are sharded along the
    sequence (dim 1).  With ``boundary`` the block itself takes and returns full (replicated)
    tensors, so it is a drop-in replacement for the unsharded block; a model that keeps the
    sequence sharded between its blocks (``transformer_plan``) leaves it off.

    Examples:
        >>> sorted(transformer_block_plan("layers.0", boundary=False))[:3]
        ['layers.0.attention', 'layers.0.attention.wk', 'layers.0.attention.wo']
    """
    sequence = Shard(1)
    plan: dict[str, ParallelStyle] = {
        "attention_norm": SequenceParallel(),
        # the norm's output is sequence-sharded: gather it before the column-wise projections
        "attention": PrepareModuleInput(input_layouts=(sequence,), desired_input_layouts=(Replicate(),)),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        # each rank holds some heads: the row-wise projection reduce-scatters into sequence shards
        "attention.wo": RowwiseParallel(output_layouts=sequence),
        "ffn_norm": SequenceParallel(),
        "feed_forward": PrepareModuleInput(input_layouts=(sequence,), desired_input_layouts=(Replicate(),)),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=sequence),
    }
    if boundary:
        plan[""] = PrepareModuleInputOutput(
            input_layouts=(Replicate(),),
            desired_input_layouts=(sequence,),
            use_local_input=True,
            output_layouts=(sequence,),
            desired_output_layouts=(Replicate(),),
            use_local_output=True,
        )
    return {_prefixed(prefix, name): style for name, style in plan.items()}


def transformer_plan(num_layers: int) -> dict[str, ParallelStyle]:
    r"""
    The tensor plan of the example ``Transformer``: embedding, ``num_layers`` blocks, final norm and head.

    The embedding is split row-wise (by vocabulary) and leaves its output sharded along the
    sequence, which stays so through the blocks; the head is split column-wise and gathers the logits.

    Examples:
        >>> plan = transformer_plan(2)
        >>> type(plan["embedding"]).__name__, type(plan["layers.1.feed_forward.w2"]).__name__
        ('RowwiseParallel', 'RowwiseParallel')
    """
    plan: dict[str, ParallelStyle] = {
        "embedding": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    }
    for index in range(num_layers):
        plan.update(transformer_block_plan(f"layers.{index}", boundary=False))
    return plan
