"""Gradient norms and clipping over sharded parameters, and the optimizer step container that uses them.

With FSDP2 and tensor parallelism a parameter's gradient is a ``DTensor``: each rank holds a
shard, and the norm of the whole gradient needs a reduction over the mesh.  ``total_norm``
groups the gradients by mesh and placement, reduces each group once (``full_tensor``), and
adds the axes where ranks hold *different plain* parameters (pipeline stages), so every rank
gets the same norm of the whole model's gradient.  ``clip_grad_norm_`` scales by it;
``ParallelOptimizerContainer`` is runner-core's ``OptimizerContainer`` with that clipping, a
non-finite check every rank agrees on, and a shard-aware gradient scaler for fp16.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist
from torch.distributed.tensor import DTensor

from danling.runners.distributed import any_rank
from danling.runners.step import OptimizerContainer

__all__ = ["ParallelOptimizerContainer", "build_sharded_grad_scaler", "clip_grad_norm_", "total_norm"]


def _group_key(grad: Tensor) -> Any:
    if isinstance(grad, DTensor):
        return (id(grad.device_mesh), grad.placements, grad.device, grad.dtype)
    return (None, None, grad.device, grad.dtype)


def total_norm(
    grads: Iterable[Tensor], norm_type: float = 2.0, *, stage_groups: Sequence[Any] = (), device: Any = None
) -> Tensor:
    r"""
    The ``norm_type``-norm of all ``grads`` together, sharded or not, identical on every rank.

    Args:
        grads: Gradients: plain tensors (taken as they are) and ``DTensor``\ s (reduced over their mesh).
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
    groups: dict[Any, list[Tensor]] = {}
    for grad in grads:
        groups.setdefault(_group_key(grad), []).append(grad)
    first = next(iter(groups.values()), [None])[0]
    device = device or (first.device if first is not None else torch.device("cpu"))
    inf = math.isinf(norm_type)
    partials = []
    for members in groups.values():
        norms = torch._foreach_norm(members, norm_type)
        norm = torch.linalg.vector_norm(torch.stack(norms), norm_type)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()  # one reduction per mesh/placement group
        partials.append(norm.to(device=device, dtype=torch.float32))
    if not partials:
        result = torch.zeros((), device=device)
    else:
        result = torch.linalg.vector_norm(torch.stack(partials), norm_type)
    if stage_groups:
        value = result if inf else result.pow(norm_type)
        for group in stage_groups:
            dist.all_reduce(value, op=dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM, group=group)
        result = value if inf else value.pow(1.0 / norm_type)
    return result


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
    parameters = [parameter for parameter in parameters if parameter.grad is not None]
    norm = total_norm([parameter.grad for parameter in parameters], norm_type, stage_groups=stage_groups)
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm, foreach=True)
    return norm


def build_sharded_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> Any:
    """A ``ShardedGradScaler`` for fp16 (it agrees on overflow across ranks and handles sharded gradients)."""
    if dtype is not torch.float16:
        return None
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler(device=device.type)


class ParallelOptimizerContainer(OptimizerContainer):
    r"""
    ``OptimizerContainer`` for sharded parameters: clipping by the norm over the whole mesh, a
    non-finite skip every rank agrees on, and (fp16) a ``ShardedGradScaler``.

    Args:
        *args, **kwargs: As for ``OptimizerContainer``.
        stage_groups: Process groups across which ranks hold different plain parameters (see
            ``total_norm``); empty without pipeline parallelism.

    Gradient normalisation over micro-batches and ranks is runner-core's: every rank in the
    world divides by the world-wide sum of loss normalizers times ``world_size``, which is
    what FSDP's mean over the data ranks needs when model-parallel peers repeat each batch.
    """

    def __init__(self, *args: Any, stage_groups: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage_groups = tuple(stage_groups)

    def clip_gradients(self) -> Tensor | None:
        """Clip by value (elementwise, shards alike), then by the total norm over the mesh."""
        if self.max_grad_value is not None:
            torch.nn.utils.clip_grad_value_(self.parameters, self.max_grad_value)
        if self.max_grad_norm is not None:
            return clip_grad_norm_(self.parameters, self.max_grad_norm, stage_groups=self.stage_groups)
        return None

    def gradients_finite(self, total: Tensor | None = None) -> bool:
        """Whether every gradient on every rank is finite; all ranks get the same answer."""
        if total is None:
            gradients = self.gradients()
            if not gradients:
                return not any_rank(False)
            total = total_norm(gradients, stage_groups=self.stage_groups)
        return not any_rank(not bool(torch.isfinite(total)))
