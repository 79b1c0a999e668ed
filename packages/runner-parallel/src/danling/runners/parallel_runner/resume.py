"""What a parallel checkpoint records about its topology, and whether another topology may resume it.

DCP stores every ``DTensor`` as its global tensor plus the shards each rank wrote, and reshards
on load to whatever the current mesh asks for.  That covers the data axes: FSDP's shards
(``shard``, ``replicate``) and ``context``, which holds no parameters.  The other axes change
which parameters a rank owns in ways a model may implement with plain tensors (a pipeline
stage's modules, an expert group, a hand-written tensor split), so changing their degree is
refused unless ``parallel.allow_degree_change`` says the model's state is all ``DTensor``\\ s.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .topology import AXES

__all__ = ["RESHARDABLE_AXES", "check_resumable", "topology_metadata"]

#: Axes whose degree may change between a save and a resume (DCP reshards them).
RESHARDABLE_AXES = ("replicate", "shard", "context")


def topology_metadata(axes: Mapping[str, int], *, fsdp: bool) -> dict[str, Any]:
    r"""
    The ``parallel`` entry of a checkpoint: the resolved degree of every axis and whether FSDP sharded it.

    Examples:
        >>> topology_metadata({"shard": 2, "tensor": 1}, fsdp=True)
        {'axes': {'shard': 2, 'tensor': 1}, 'fsdp': True}
    """
    return {"axes": {axis: int(degree) for axis, degree in axes.items()}, "fsdp": bool(fsdp)}


def check_resumable(
    saved: Mapping[str, Any] | None, current: Mapping[str, int], *, allow_degree_change: bool = False
) -> list[str]:
    r"""
    Check that a checkpoint saved on the ``saved`` topology can resume on ``current`` axes.

    Returns the axes whose degree changed (empty when none did).  A change of an axis outside
    ``RESHARDABLE_AXES`` raises ``ValueError`` naming the axis, both degrees and what to do,
    unless ``allow_degree_change`` (then it warns).  A checkpoint without topology (saved by
    another stack) is not checked.

    Examples:
        >>> check_resumable({"axes": {"shard": 2, "tensor": 1}}, {"shard": 1, "tensor": 1})
        ['shard']
        >>> check_resumable({"axes": {"shard": 1, "tensor": 2}}, {"shard": 2, "tensor": 1})
        Traceback (most recent call last):
        ValueError: cannot resume this checkpoint: parallel.axes.tensor was 2 when it was saved and is 1 now; DCP reshards only the replicate, shard and context degrees. Resume with parallel.axes.tensor=2, or set parallel.allow_degree_change=True if every parameter the tensor axis splits is a DTensor (the built-in plans make them so)
    """
    if not isinstance(saved, Mapping) or not isinstance(saved.get("axes"), Mapping):
        return []
    saved_axes = saved["axes"]
    changed = [axis for axis in AXES if int(saved_axes.get(axis, 1)) != int(current.get(axis, 1))]
    fixed = [axis for axis in changed if axis not in RESHARDABLE_AXES]
    if fixed and not allow_degree_change:
        axis = fixed[0]
        was, now = int(saved_axes.get(axis, 1)), int(current.get(axis, 1))
        others = "".join(f", {other} {saved_axes.get(other, 1)} -> {current.get(other, 1)}" for other in fixed[1:])
        raise ValueError(
            f"cannot resume this checkpoint: parallel.axes.{axis} was {was} when it was saved and is {now} now"
            f"{others}; DCP reshards only the replicate, shard and context degrees. Resume with "
            f"parallel.axes.{axis}={was}, or set parallel.allow_degree_change=True if every parameter the "
            f"{axis} axis splits is a DTensor (the built-in plans make them so)"
        )
    if fixed:
        warnings.warn(
            f"resuming with changed parallel degrees {', '.join(fixed)} (parallel.allow_degree_change=True): "
            f"saved axes {dict(saved_axes)}, current axes {dict(current)}",
            RuntimeWarning,
            stacklevel=2,
        )
    return changed
