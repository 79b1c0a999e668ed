"""Where each rank sits in the parallel mesh, and the process groups of each axis.

- ``AXES``: the seven mesh axes, outermost first.  Ranks are laid out row-major over them: the
  last axis varies fastest, so tensor-parallel peers (the chattiest) are neighbouring ranks.
- ``DOMAINS``: named groups of axes that reductions run over (``data``: the axes whose ranks read
  different batches; ``loss``: those whose losses average together; ``model``: the axes whose ranks
  hold different parts of the model; ``optimizer``: every axis).
- ``build_topology``: resolve ``config.parallel.axes`` (one ``-1`` is filled from the world size)
  into a ``ParallelTopology`` and check that the degrees multiply to the world size.
- ``build_device_mesh`` / ``ParallelContext``: the 7-D ``DeviceMesh`` on CPU (gloo) or CUDA (nccl),
  its per-axis process groups, sub-meshes of domains, and reductions over a domain.

Every function here but ``build_device_mesh`` is pure arithmetic and works without a process group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import distributed as dist

__all__ = [
    "AXES",
    "DOMAINS",
    "MODEL_PARALLEL_AXES",
    "ParallelContext",
    "ParallelTopology",
    "build_device_mesh",
    "build_topology",
    "default_mesh_device_type",
]

#: The mesh axes, outermost (slowest-varying rank coordinate) first.
AXES = ("replicate", "shard", "context", "pipeline", "tensor", "expert", "expert_tensor")

#: Named reduction domains -> their axes.  Every axis is also a domain of its own.
DOMAINS: dict[str, tuple[str, ...]] = {
    # ranks that read different batches: the sampler shards over these, metrics average over them
    "data": ("replicate", "shard"),
    "batch": ("replicate", "shard"),
    # ranks whose losses together make the batch's loss (context ranks hold parts of each sequence)
    "loss": ("replicate", "shard", "context"),
    # the axes FSDP averages gradients over
    "fsdp": ("replicate", "shard", "context"),
    # ranks that hold different parameters (besides FSDP shards, which DTensor tracks itself)
    "model": ("pipeline", "tensor", "expert", "expert_tensor"),
    # every rank: decisions every rank must agree on (skip a non-finite step)
    "optimizer": AXES,
}

#: Axes that need a model-specific transform (a ``parallelize`` hook or a plan) when their degree exceeds 1.
MODEL_PARALLEL_AXES = ("tensor", "context", "expert", "expert_tensor")


def _product_text(axes: Mapping[str, int]) -> str:
    return " * ".join(f"{axis}({degree})" for axis, degree in axes.items())


def _resolve_axes(axes: Mapping[str, Any], world_size: int) -> dict[str, int]:
    unknown = sorted(set(axes) - set(AXES))
    if unknown:
        raise ValueError(f"invalid parallel topology: unknown axes {unknown}; valid axes are {list(AXES)}")
    degrees: dict[str, int] = {}
    for axis in AXES:
        degree = axes.get(axis, 1)
        if isinstance(degree, bool) or not isinstance(degree, int) or (degree < 1 and degree != -1):
            raise ValueError(
                f"invalid parallel topology: axis degrees must be positive integers (or -1 to fill from "
                f"WORLD_SIZE), got {axis}={degree!r}"
            )
        degrees[axis] = degree
    auto = [axis for axis, degree in degrees.items() if degree == -1]
    if len(auto) > 1:
        raise ValueError(
            f"invalid parallel topology: at most one axis degree may be -1 for auto-fill, got "
            f"{', '.join(f'{axis}=-1' for axis in auto)}"
        )
    if auto:
        known = {axis: degree for axis, degree in degrees.items() if degree != -1}
        product = math.prod(known.values())
        if world_size % product:
            raise ValueError(
                f"invalid parallel topology: WORLD_SIZE({world_size}) must be divisible by the known axis product "
                f"{_product_text(known)} = {product} to fill {auto[0]}=-1"
            )
        degrees[auto[0]] = world_size // product
    product = math.prod(degrees.values())
    if product != world_size:
        raise ValueError(
            f"invalid parallel topology: WORLD_SIZE({world_size}) must equal {_product_text(degrees)} = {product}"
        )
    return degrees


@dataclass(frozen=True)
class ParallelTopology:
    r"""
    The resolved degree of each axis and this rank's coordinate on each.

    Build it with ``build_topology``; the fields are read-only.

    Attributes:
        world_size: Number of ranks (the product of the degrees).
        rank: This process's global rank.
        axes: Degree of each axis, in ``AXES`` order (``-1`` already filled in).
        domains: Named reduction domains -> their axes (``DOMAINS`` unless given).

    Examples:
        >>> topology = build_topology({"shard": 2, "tensor": -1}, world_size=8, rank=5)
        >>> topology.axes["tensor"], topology.coordinates["shard"], topology.coordinates["tensor"]
        (4, 1, 1)
        >>> topology.domain_degree("data"), topology.domain_rank("data"), topology.domain_degree("model")
        (2, 1, 4)
        >>> topology.rank_from_coordinates({"shard": 1, "tensor": 1})
        5
    """

    world_size: int
    rank: int
    axes: dict[str, int]
    domains: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DOMAINS))

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(self.axes)

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        return tuple(self.axes.values())

    @property
    def coordinates(self) -> dict[str, int]:
        """This rank's index along each axis (row-major: the last axis varies fastest)."""
        coordinates, stride = {}, self.world_size
        for axis, degree in self.axes.items():
            stride //= degree
            coordinates[axis] = (self.rank // stride) % degree
        return coordinates

    def domain_axes(self, domain: str) -> tuple[str, ...]:
        """The axes of a named domain, or ``(domain,)`` for an axis name."""
        if domain in self.axes:
            return (domain,)
        if domain not in self.domains:
            raise KeyError(f"unknown parallel domain {domain!r}; known domains: {sorted(self.domains)}, axes: {AXES}")
        return self.domains[domain]

    def domain_degree(self, domain: str) -> int:
        """How many ranks a domain groups together (the product of its axes' degrees)."""
        return math.prod(self.axes[axis] for axis in self.domain_axes(domain))

    def domain_rank(self, domain: str) -> int:
        """This rank's index within its domain group (mixed radix over the domain's axes, in order)."""
        rank, coordinates = 0, self.coordinates
        for axis in self.domain_axes(domain):
            rank = rank * self.axes[axis] + coordinates[axis]
        return rank

    def rank_from_coordinates(self, coordinates: Mapping[str, int]) -> int:
        """The global rank at ``coordinates``; axes left out are taken at index 0."""
        unknown = sorted(set(coordinates) - set(self.axes))
        if unknown:
            raise ValueError(f"invalid parallel topology coordinates: unknown axes {unknown}; valid axes are {AXES}")
        rank = 0
        for axis, degree in self.axes.items():
            index = coordinates.get(axis, 0)
            if not 0 <= index < degree:
                raise ValueError(f"invalid parallel topology coordinates: {axis}={index} is outside [0, {degree})")
            rank = rank * degree + index
        return rank


def build_topology(
    axes: Mapping[str, Any], world_size: int, rank: int = 0, domains: Mapping[str, tuple[str, ...]] | None = None
) -> ParallelTopology:
    r"""
    Resolve ``config.parallel.axes`` into a ``ParallelTopology`` for ``world_size`` ranks.

    Axes left out have degree 1; one axis may be ``-1``, which becomes ``world_size`` divided by
    the others.  Every error names the axes, their product and the world size.

    Examples:
        >>> build_topology({"shard": -1}, world_size=4).axes["shard"]
        4
        >>> build_topology({"shard": 2, "tensor": 4}, world_size=4)
        Traceback (most recent call last):
        ValueError: invalid parallel topology: WORLD_SIZE(4) must equal replicate(1) * shard(2) * context(1) * pipeline(1) * tensor(4) * expert(1) * expert_tensor(1) = 8
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"invalid parallel topology: WORLD_SIZE must be a positive integer, got {world_size!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"invalid parallel topology: rank must be in [0, {world_size}), got {rank}")
    resolved = _resolve_axes(axes, world_size)
    named = dict(DOMAINS if domains is None else domains)
    for name, members in named.items():
        if not members or any(axis not in AXES for axis in members):
            raise ValueError(
                f"invalid parallel topology: domain {name!r} must list some of the axes {list(AXES)}, got {members!r}"
            )
    return ParallelTopology(world_size=world_size, rank=rank, axes=resolved, domains=named)


def default_mesh_device_type() -> str:
    """``"cuda"`` when CUDA is available, else ``"cpu"`` (gloo)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_device_mesh(topology: ParallelTopology, device_type: str | None = None) -> Any:
    r"""
    The 7-D ``DeviceMesh`` of ``topology`` (axes of degree 1 included), on the default process group.

    ``device_type`` ``None`` picks ``"cuda"`` when available (nccl), else ``"cpu"`` (gloo).  Every
    rank must call it: building the mesh creates a process group for each axis.
    """
    from torch.distributed.device_mesh import init_device_mesh

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("cannot build the device mesh: the default process group is not initialized")
    if dist.get_world_size() != topology.world_size:
        raise ValueError(
            f"cannot build the device mesh: the topology is for WORLD_SIZE({topology.world_size}) but the "
            f"process group has {dist.get_world_size()} ranks"
        )
    device_type = device_type or default_mesh_device_type()
    return init_device_mesh(device_type, topology.mesh_shape, mesh_dim_names=topology.axis_names)


class ParallelContext:
    r"""
    The topology together with its device mesh: what ``model.parallelize(parallel)`` hooks receive.

    Args:
        topology: The resolved topology.
        mesh: Its ``DeviceMesh`` (``None`` in single-process unit tests: reductions become no-ops).

    Examples:
        >>> context = ParallelContext(build_topology({}, world_size=1))
        >>> context.degree("tensor"), context.all_reduce(torch.ones(2), domain="data").tolist()
        (1, [1.0, 1.0])
    """

    def __init__(self, topology: ParallelTopology, mesh: Any = None) -> None:
        self.topology = topology
        self.mesh = mesh

    def degree(self, domain: str) -> int:
        return self.topology.domain_degree(domain)

    def rank(self, domain: str) -> int:
        return self.topology.domain_rank(domain)

    def group(self, axis: str) -> Any:
        """The process group of one axis (``None`` without a mesh)."""
        if axis not in self.topology.axes:
            raise KeyError(f"unknown parallel axis {axis!r}; valid axes are {AXES}")
        return None if self.mesh is None else self.mesh.get_group(axis)

    def submesh(self, domain: str) -> Any:
        """The sub-mesh over a domain's axes (``mesh["replicate", "shard"]`` for ``data``)."""
        if self.mesh is None:
            raise RuntimeError(f"cannot take the {domain!r} sub-mesh: this parallel context has no device mesh")
        axes = self.topology.domain_axes(domain)
        return self.mesh[axes[0]] if len(axes) == 1 else self.mesh[axes]

    def all_reduce(self, tensor: torch.Tensor, *, domain: str = "data", op: Any = None) -> torch.Tensor:
        """Reduce ``tensor`` in place over a domain (one collective per axis of degree > 1); returns it."""
        op = dist.ReduceOp.SUM if op is None else op
        for axis in self.topology.domain_axes(domain):
            if self.topology.axes[axis] > 1 and self.mesh is not None:
                dist.all_reduce(tensor, op=op, group=self.mesh.get_group(axis))
        return tensor
