"""Gradient norms and clipping over sharded parameters, and the optimizer step container that uses them.

With FSDP2 and tensor parallelism a parameter's gradient is a ``DTensor``: each rank holds a
shard, and the norm of the whole gradient needs a reduction over the mesh.  ``total_norm``
works on the local shards and adds the partial sums over each mesh dimension that shards them
(one small all-reduce per distinct mesh and sharding, none over replicated dimensions), plus
the axes where ranks hold *different plain* parameters (pipeline stages), so every rank gets the
same norm of the whole model's gradient.  ``clip_grad_norm_`` scales by it;
``ParallelOptimizerContainer`` is runner-core's ``OptimizerContainer`` with that clipping, a
non-finite check every rank agrees on, and a shard-aware gradient scaler for fp16.

Everything element-wise (scaling, clamping, finiteness) runs on the local shards directly:
the same arithmetic as on the ``DTensor``, without its per-operation dispatch.  Gradients that
still hold a pending sum (``Partial``: a sequence-parallel norm's, without FSDP) are summed first
(``reduce_partial_gradients``); norms or clamps of their parts would be wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist
from torch.distributed.tensor import DTensor, Replicate

from danling.runners.distributed import any_rank
from danling.runners.step import OptimizerContainer

__all__ = [
    "ParallelOptimizerContainer",
    "build_sharded_grad_scaler",
    "clip_grad_norm_",
    "local_tensors",
    "reduce_partial_gradients",
    "total_norm",
]


def local_tensors(tensors: Iterable[Tensor]) -> list[Tensor]:
    """This rank's part of each tensor: the local shard of a ``DTensor``, a plain tensor as it is."""
    return [tensor.to_local() if isinstance(tensor, DTensor) else tensor for tensor in tensors]


def _reduced(tensor: Tensor) -> Tensor:
    """``tensor`` with pending sums (``Partial`` placements) carried out; other tensors as they are."""
    if isinstance(tensor, DTensor) and any(placement.is_partial() for placement in tensor.placements):
        placements = [Replicate() if placement.is_partial() else placement for placement in tensor.placements]
        return tensor.redistribute(tensor.device_mesh, placements)
    return tensor


def reduce_partial_gradients(parameters: Iterable[Tensor]) -> None:
    r"""
    Carry out the pending sums of gradients that are still ``Partial`` ``DTensor``\ s, in place.

    A replicated parameter used on sharded activations (a sequence-parallel norm) gets a gradient
    that each rank holds only a part of until the optimizer's update sums it; clamping or taking
    norms of those parts would be wrong.  FSDP's reduce-scatter leaves no such gradients.
    """
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad = _reduced(parameter.grad)


def _split_dims(tensor: Tensor) -> tuple[Any, tuple[int, ...]]:
    """The mesh of a ``DTensor`` and the mesh dimensions its value is split over (``None, ()`` if plain)."""
    if not isinstance(tensor, DTensor):
        return None, ()
    return tensor.device_mesh, tuple(i for i, p in enumerate(tensor.placements) if not p.is_replicate())


def total_norm(
    grads: Iterable[Tensor], norm_type: float = 2.0, *, stage_groups: Sequence[Any] = (), device: Any = None
) -> Tensor:
    r"""
    The ``norm_type``-norm of all ``grads`` together, sharded or not, identical on every rank.

    Args:
        grads: Gradients: plain tensors (taken as they are) and ``DTensor``\ s (pending sums
            carried out first, then reduced over the mesh dimensions that shard them).
        norm_type: ``p`` of the p-norm (``inf`` for the largest magnitude).
        stage_groups: Process groups across which ranks hold *different* plain parameters
            (pipeline stages): the partial norms are summed (or maxed) over them.
        device: Device of the result (default: the first gradient's).

    Examples:
        >>> total_norm([torch.tensor([3.0]), torch.tensor([4.0])]).item()
        5.0
        >>> total_norm([torch.tensor([3.0, -4.0])], float("inf")).item()
        4.0
    """
    inf = math.isinf(norm_type)
    groups: dict[Any, tuple[Any, tuple[int, ...], list[Tensor]]] = {}
    for grad in map(_reduced, grads):
        mesh, dims = _split_dims(grad)
        local = grad.to_local() if isinstance(grad, DTensor) else grad
        key = (id(mesh), dims, local.device)
        groups.setdefault(key, (mesh, dims, []))[2].append(local)
    if device is None:
        device = next(iter(groups))[2] if groups else torch.device("cpu")
    op = dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM
    total = torch.zeros((), device=device)
    for mesh, dims, members in groups.values():
        norms = torch.stack(torch._foreach_norm(members, norm_type)).to(device=device, dtype=torch.float32)
        # this rank's share: the largest magnitude, or the sum of p-th powers
        share = norms.max() if inf else norms.pow(norm_type).sum()
        for dim in dims:  # shards along these mesh dimensions hold different elements: combine them
            dist.all_reduce(share, op=op, group=mesh.get_group(dim))
        total = torch.maximum(total, share) if inf else total + share
    for group in stage_groups:
        dist.all_reduce(total, op=op, group=group)
    return total if inf else total.pow(1.0 / norm_type)


def clip_grad_norm_(
    parameters: Iterable[Tensor], max_norm: float, norm_type: float = 2.0, *, stage_groups: Sequence[Any] = ()
) -> Tensor:
    r"""
    Scale the gradients of ``parameters`` so their total norm (over the whole mesh) is at most ``max_norm``.

    Returns the total norm before clipping (non-finite gradients give a non-finite norm and are
    left as they are: the caller decides to skip the step).

    Examples:
        >>> weight = torch.nn.Parameter(torch.zeros(2)); weight.grad = torch.tensor([3.0, 4.0])
        >>> clip_grad_norm_([weight], max_norm=1.0).item(), [round(g, 4) for g in weight.grad.tolist()]
        (5.0, [0.6, 0.8])
    """
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    norm = total_norm(grads, norm_type, stage_groups=stage_groups)
    if grads and bool(torch.isfinite(norm)):
        coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(local_tensors(grads), coefficient)
    return norm


def build_sharded_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> Any:
    """A ``ShardedGradScaler`` for fp16 (it agrees on overflow across ranks); one process gets a plain ``GradScaler``."""
    if dtype is not torch.float16:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return torch.amp.GradScaler(device.type)
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler(device=device.type)


class ParallelOptimizerContainer(OptimizerContainer):
    r"""
    ``OptimizerContainer`` for sharded parameters: clipping by the norm over the whole mesh, a
    non-finite skip every rank agrees on, and (fp16) a ``ShardedGradScaler``.

    Args:
        *args: As for ``OptimizerContainer``.
        **kwargs: As for ``OptimizerContainer``.
        stage_groups: Process groups across which ranks hold different plain parameters (see
            ``total_norm``); empty without pipeline parallelism.

    Gradient normalisation over micro-batches and ranks is runner-core's: every rank in the
    world divides by the world-wide sum of loss normalizers times ``world_size``, which is
    what FSDP's mean over the data ranks needs when model-parallel peers repeat each batch.
    """

    def __init__(self, *args: Any, stage_groups: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage_groups = tuple(stage_groups)

    def gradients(self) -> list[Tensor]:
        """This rank's shards of the gradients the next step applies (scaling them scales the whole)."""
        return local_tensors(super().gradients())

    def clip_gradients(self) -> Tensor | None:
        """Clip by value (element-wise, on the shards), then by the total norm over the mesh."""
        if self.max_grad_value is not None or self.max_grad_norm is not None:
            reduce_partial_gradients(self.parameters)
        if self.max_grad_value is not None:
            gradients = self.gradients()
            torch._foreach_clamp_min_(gradients, -self.max_grad_value)
            torch._foreach_clamp_max_(gradients, self.max_grad_value)
        if self.max_grad_norm is not None:
            return clip_grad_norm_(self.parameters, self.max_grad_norm, stage_groups=self.stage_groups)
        return None

    def gradients_finite(self, total: Tensor | None = None) -> bool:
        """Whether every gradient on every rank is finite; all ranks get the same answer."""
        if total is None:
            gradients = self.gradients()  # local shards: a non-finite element shows on its own rank
            total = torch.stack(torch._foreach_norm(gradients)).sum() if gradients else torch.zeros(())
        return not any_rank(not bool(torch.isfinite(total)))
