"""``parallelize``: every parallelism applied to one model, in a fixed order.

The order is torchtitan's, and each step says why it comes where it does.  Every step is a
function on modules (``apply_tp``, ``apply_activation_checkpointing``, ``apply_fsdp``, ...) usable
on its own; this module only decides which ones run and in what sequence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from danling.runners.parallelize import apply_activation_checkpointing, apply_ddp, compile_options

from .fsdp import apply_fsdp, fsdp_blocks
from .tensor_parallel import apply_tp
from .topology import MODEL_PARALLEL_AXES, ParallelContext

__all__ = ["apply_model_parallel", "fsdp_mesh", "parallelize"]


def apply_model_parallel(
    model: nn.Module, parallel: ParallelContext, tensor_plan: Mapping[str, Any] | None = None
) -> nn.Module:
    r"""
    Tensor, context and expert parallelism: the model's ``parallelize(parallel)`` hook, else
    ``tensor_plan`` over the tensor axis.  The hook takes the sub-meshes it needs from
    ``parallel`` and calls ``apply_tp``, ``apply_cp`` (context), ``apply_ep`` (expert) or its own
    transforms.

    The hook runs whenever the model defines it, even when every axis has degree 1 (it may
    register things the model needs either way); it changes the model in place (returning
    ``None``) or returns the module to use.  Without hook or plan, a model-parallel degree above 1
    is an error: nothing would split the model.
    """
    hook = getattr(model, "parallelize", None)
    if callable(hook):
        result = hook(parallel)
        if result is not None and not isinstance(result, nn.Module):
            raise TypeError(
                f"model.parallelize(parallel) must return an nn.Module or None, got {type(result).__name__}"
            )
        return model if result is None else result
    if tensor_plan is not None and parallel.degree("tensor") > 1:
        return apply_tp(model, parallel.submesh("tensor"), tensor_plan)
    split = [axis for axis in MODEL_PARALLEL_AXES if parallel.degree(axis) > 1]
    if tensor_plan is not None:
        split = [axis for axis in split if axis != "tensor"]
    if split:
        raise NotImplementedError(
            f"parallel axes {', '.join(f'{axis}={parallel.degree(axis)}' for axis in split)} need a "
            f"model-specific transform: define `{type(model).__name__}.parallelize(parallel)`"
            + (" or set a tensor plan" if "tensor" in split else "")
        )
    return model


def fsdp_mesh(parallel: ParallelContext, fsdp_config: Mapping[str, Any]) -> Any:
    """The mesh FSDP shards over: ``fsdp.mesh`` if set, else (replicate, shard) for HSDP or shard alone."""
    if fsdp_config.get("mesh") is not None:
        return fsdp_config["mesh"]
    if parallel.degree("context") > 1:
        raise NotImplementedError(
            f"FSDP with context parallelism (parallel.axes.context={parallel.degree('context')}) needs a "
            "flattened shard x context mesh, which this release does not build; set fsdp.mesh or keep "
            "parallel.axes.context=1"
        )
    return parallel.submesh("data") if parallel.degree("replicate") > 1 else parallel.submesh("shard")


def _compile_in_place(model: nn.Module, compile_config: Mapping[str, Any]) -> None:
    # Block by block, in place (``nn.Module.compile``): parameter names stay as they were and FSDP's
    # per-block hooks stay outside each compiled graph.
    options = compile_options(compile_config)
    for block in fsdp_blocks(model) or [model]:
        block.compile(**options)


def parallelize(
    model: nn.Module,
    parallel: ParallelContext,
    config: Mapping[str, Any],
    *,
    tensor_plan: Mapping[str, Any] | None = None,
    device: Any = None,
) -> nn.Module:
    r"""
    Apply tensor parallelism, activation checkpointing, compilation and data parallelism to ``model``.

    Args:
        model: The model, on its device.
        parallel: The topology and its device mesh.
        config: The ``RunnerConfig`` (``fsdp``, ``activation_checkpoint``, ``compile`` are read).
        tensor_plan: A tensor plan for models without a ``parallelize`` hook.
        device: The device DDP needs when data is replicated without FSDP.

    Returns:
        The module to train (``model`` itself, changed in place, unless DDP wraps it).
    """
    # 1. Model parallelism first, through the model's hook (tensor, context, expert): tensor and
    #    expert parallelism turn parameters into DTensors on their axes, which FSDP then shards
    #    further (2-D); context parallelism hooks the attention modules, which activation
    #    checkpointing then recomputes inside the blocks.  All need the module structure unwrapped.
    model = apply_model_parallel(model, parallel, tensor_plan)
    # 2. Activation checkpointing around each block, before compiling (the graph then holds the
    #    recomputation) and before FSDP (FSDP's all-gathers stay outside the checkpointed region).
    model = apply_activation_checkpointing(model, config.get("activation_checkpoint"))
    # 3. Compile each block in place, so names and FSDP's per-block hooks are unchanged.
    if config.compile.enable:
        _compile_in_place(model, config.compile)
    # 4. Data parallelism last, outermost: FSDP2 (sharded, or replicated for HSDP) when enabled,
    #    else DDP over the data ranks, which only works on a model that is not otherwise split.
    if parallel.degree("data") * parallel.degree("context") == 1:
        return model
    if config.fsdp.enabled:
        return apply_fsdp(model, fsdp_mesh(parallel, config.fsdp), config.fsdp)
    # Context ranks hold the whole model (they split activations, not weights): DDP over every
    # rank, which is data x context when nothing else splits the model, averages their gradients too.
    model_split = [
        axis for axis in (*MODEL_PARALLEL_AXES, "pipeline") if axis != "context" and parallel.degree(axis) > 1
    ]
    if model_split:
        raise ValueError(
            f"data parallelism (data degree {parallel.degree('data')}) on a model split over "
            f"{', '.join(model_split)} needs FSDP: set fsdp.enabled=True"
        )
    return apply_ddp(model, device, process_group=None)
