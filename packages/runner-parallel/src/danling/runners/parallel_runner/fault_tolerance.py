r"""TorchFT across replica groups for FSDP2: sharded (or HSDP) inside a group, averaged across groups.

Each replica group is a ``ParallelRunner`` job of its own (``config.ft``, see runner-core's
``danling.runners.fault_tolerance``): FSDP2 shards the model over the group's mesh (the shard axis,
or replicate x shard for HSDP inside the group), and after each reduce-scatter (and the group's own
all-reduce under HSDP) an all-reduce hook averages the gradient shard over the replica groups in
the current quorum through the TorchFT manager.  That is the replicate domain made
fault-tolerant: a group that dies leaves the quorum, and when it restarts it receives the
weights and optimizer state from a live group with the same layout.

A one-process group has no mesh of its own: ``apply_ft_fsdp`` shards over a one-rank mesh then, so
the hook has an FSDP reduction to follow and state dicts have the same shape as in larger groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

from .fsdp import apply_fsdp
from .parallelize import fsdp_mesh
from .topology import ParallelContext

__all__ = ["apply_ft_fsdp", "ft_all_reduce_hook"]


def ft_all_reduce_hook(manager: Any) -> Any:
    """An FSDP2 all-reduce hook that averages a gradient shard over the replica groups in the quorum."""

    def hook(output: torch.Tensor) -> None:
        # average in place; a failed peer makes the manager report the error and skip the commit
        manager.allreduce(output).wait()

    return hook


def apply_ft_fsdp(
    model: nn.Module, manager: Any, parallel: ParallelContext, fsdp_config: Mapping[str, Any], device: Any = None
) -> nn.Module:
    r"""
    FSDP2 inside the replica group and TorchFT's all-reduce across groups, on ``model``.

    ``model`` is what ``parallelize`` returned: already sharded when the group has several ranks,
    left whole in a one-rank group, which is then sharded over a one-rank mesh.  Every FSDP module
    gets ``ft_all_reduce_hook(manager)``.
    """
    if not any(isinstance(module, FSDPModule) for module in model.modules()):
        if parallel.mesh is not None:
            mesh = fsdp_mesh(parallel, fsdp_config)
        else:
            device_type = torch.device(device).type if device is not None else "cpu"
            mesh = init_device_mesh(device_type, (1,), mesh_dim_names=("shard",))
        model = apply_fsdp(model, mesh, fsdp_config)
    hook = ft_all_reduce_hook(manager)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_all_reduce_hook(hook)
    return model
