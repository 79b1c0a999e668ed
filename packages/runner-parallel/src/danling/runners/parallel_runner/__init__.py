"""danling.runners.parallel_runner: ``ParallelRunner`` and the parallelisms it applies, as functions on modules.

- ``topology``: the seven mesh axes, named reduction domains, the device mesh.
- ``fsdp``: ``apply_fsdp`` (FSDP2 per block, then the root).
- ``tensor_parallel``: ``apply_tp`` and the built-in transformer plans.
- ``parallelize``: all of them on one model, in a fixed order.
- ``gradients``: clipping by the norm over the mesh, the optimizer step container.
- ``resume``: the topology a checkpoint records, and which changes a resume allows.
- ``transformer``: a small example transformer with a ``parallelize`` hook.
"""

from __future__ import annotations

from .fsdp import apply_fsdp, build_mp_policy, build_offload_policy, fsdp_blocks
from .gradients import ParallelOptimizerContainer, clip_grad_norm_, total_norm
from .parallelize import apply_model_parallel, parallelize
from .resume import check_resumable
from .runner import ParallelRunner
from .tensor_parallel import apply_tp, build_tp_plan, transformer_block_plan, transformer_plan
from .topology import AXES, DOMAINS, ParallelContext, ParallelTopology, build_device_mesh, build_topology

__all__ = [
    "AXES",
    "DOMAINS",
    "ParallelContext",
    "ParallelOptimizerContainer",
    "ParallelRunner",
    "ParallelTopology",
    "apply_fsdp",
    "apply_model_parallel",
    "apply_tp",
    "build_device_mesh",
    "build_mp_policy",
    "build_offload_policy",
    "build_topology",
    "build_tp_plan",
    "check_resumable",
    "clip_grad_norm_",
    "fsdp_blocks",
    "parallelize",
    "total_norm",
    "transformer_block_plan",
    "transformer_plan",
]
