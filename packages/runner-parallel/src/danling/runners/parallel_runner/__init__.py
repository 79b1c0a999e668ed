"""danling.runners.parallel_runner: the device mesh, FSDP2 and tensor parallelism as functions on modules."""

from __future__ import annotations

from .fsdp import apply_fsdp, build_mp_policy, build_offload_policy, fsdp_blocks
from .tensor_parallel import apply_tp, build_tp_plan, transformer_block_plan, transformer_plan
from .topology import AXES, DOMAINS, ParallelContext, ParallelTopology, build_device_mesh, build_topology

__all__ = [
    "AXES",
    "DOMAINS",
    "ParallelContext",
    "ParallelTopology",
    "apply_fsdp",
    "apply_tp",
    "build_device_mesh",
    "build_mp_policy",
    "build_offload_policy",
    "build_topology",
    "build_tp_plan",
    "fsdp_blocks",
    "transformer_block_plan",
    "transformer_plan",
]
