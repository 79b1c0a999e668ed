"""Context parallelism: each rank of the ``context`` axis holds one contiguous slice of every sequence.

Everything position-wise (embeddings, norms, projections, the MLP, a token loss) runs on the
local slice unchanged; attention is the one place where a token needs the others' keys and
values.  ``ring_attention`` computes it exactly: the key/value blocks travel around the ring of
context ranks (one send and one receive a step, ``context - 1`` steps), each rank attends its
queries to every block it sees, and the partial results are merged with their log-sum-exp.
Under a causal mask, blocks from later slices are passed on without being used.

- ``ring_attention``: the attention itself, differentiable (the backward sends the key/value
  gradients back around the ring to the ranks that own them).
- ``apply_cp``: make the attention modules of a model use it over the context sub-mesh: inside
  their forward, ``F.scaled_dot_product_attention`` becomes ``ring_attention``.
- ``split_sequence`` / ``gather_sequence``: a batch's slice for one context rank (what
  ``ParallelRunner`` feeds each rank), and the full sequence back from the slices.

``torch.distributed.tensor.experimental.context_parallel`` does the same with CUDA kernels; on
CPU its SDPA has no sharding rule (torch 2.15 raises ``NotImplementedError``), hence this module,
which runs on gloo as well as nccl.  The ranks of the context axis hold the whole model: their
gradients are averaged like data-parallel ones (the ``fsdp`` and ``loss`` domains include
``context``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["apply_cp", "gather_sequence", "ring_attention", "split_sequence"]


def _exchange(tensor: Tensor, group: Any, shift: int) -> Tensor:
    """Send ``tensor`` ``shift`` ranks ahead on the ring of ``group``; return what arrives from ``shift`` behind."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    tensor = tensor.contiguous()
    received = torch.empty_like(tensor)
    ops = [
        dist.P2POp(dist.isend, tensor, dist.get_global_rank(group, (rank + shift) % size), group),
        dist.P2POp(dist.irecv, received, dist.get_global_rank(group, (rank - shift) % size), group),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _RingPass(torch.autograd.Function):
    """One step around the ring: forward to the next rank; the gradient goes back to the previous one."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return _exchange(tensor, group, 1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _exchange(grad, ctx.group, -1), None


class _Depends(torch.autograd.Function):
    """``tensor`` unchanged, with ``others`` as (zero-gradient) inputs.

    A block that a causal mask leaves unused must still be part of the graph: its ring step's
    backward exchanges gradients with a neighbour that did use the block, and both must take part.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, *others: Tensor) -> Tensor:
        ctx.shapes = [(other.shape, other.dtype, other.device) for other in others]
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        zeros = (torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.shapes)
        return (grad, *zeros)


def _attend(query: Tensor, key: Tensor, value: Tensor, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    """Attention of one query block to one key/value block: the output and the log-sum-exp of each row."""
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if causal:  # the diagonal block: query i sees keys 0..i of the same slice
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), value), torch.logsumexp(scores, dim=-1)


def ring_attention(
    query: Tensor, key: Tensor, value: Tensor, group: Any, *, is_causal: bool = False, scale: float | None = None
) -> Tensor:
    r"""
    Exact softmax attention over a sequence split in contiguous, equal slices across ``group``.

    ``query``, ``key`` and ``value`` are this rank's slices, ``(..., length, head_dim)``, rank
    ``i`` of ``group`` holding positions ``[i * length, (i + 1) * length)``; the result is this
    rank's slice of ``scaled_dot_product_attention`` over the whole sequence.  ``is_causal``
    masks keys after each query's global position.  Every rank of ``group`` must call it;
    ``group`` ``None`` is a sequence held whole (plain attention).

    Examples:
        On a group of one rank it is plain attention:

        >>> q, k, v = torch.randn(3, 1, 2, 4, 8)
        >>> out = ring_attention(q, k, v, group=None, is_causal=True)
        >>> torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
        True
    """
    if query.shape[-2] != key.shape[-2] or key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"ring attention needs equal slices of queries, keys and values, got lengths "
            f"{query.shape[-2]}, {key.shape[-2]} and {value.shape[-2]}"
        )
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    size = dist.get_world_size(group) if group is not None else 1
    rank = dist.get_rank(group) if size > 1 else 0
    key_value = torch.cat([key, value], dim=-1)  # one message a step instead of two
    outputs, lses, unused = [], [], []
    for step in range(size):
        if step:
            key_value = _RingPass.apply(key_value, group)
        source = (rank - step) % size  # whose slice this block is
        if is_causal and source > rank:
            unused.append(key_value)
            continue
        block_key, block_value = key_value.split([key.shape[-1], value.shape[-1]], dim=-1)
        output, lse = _attend(query, block_key, block_value, scale, causal=is_causal and source == rank)
        outputs.append(output)
        lses.append(lse)
    total = torch.logsumexp(torch.stack(lses), dim=0)
    merged = sum(output * torch.exp(lse - total).unsqueeze(-1) for output, lse in zip(outputs, lses))
    return _Depends.apply(merged, *unused) if unused else merged


class _RingAttentionMode(TorchFunctionMode):
    """Inside it, ``F.scaled_dot_product_attention`` is ``ring_attention`` over ``group``."""

    def __init__(self, group: Any) -> None:
        super().__init__()
        self.group = group

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: Mapping | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        bound = {**dict(zip(names, args)), **kwargs}
        unsupported = [
            name
            for name, used in (
                ("attn_mask", bound.get("attn_mask") is not None),
                ("dropout_p", bool(bound.get("dropout_p", 0.0))),
                ("enable_gqa", bool(bound.get("enable_gqa", False))),
            )
            if used
        ]
        if unsupported:
            raise NotImplementedError(
                f"context-parallel attention supports is_causal and scale only, got {sorted(unsupported)}; "
                "express the mask as is_causal, or keep parallel.axes.context=1"
            )
        return ring_attention(
            bound["query"],
            bound["key"],
            bound["value"],
            self.group,
            is_causal=bool(bound.get("is_causal", False)),
            scale=bound.get("scale"),
        )


def _enter_ring_attention(group: Any, modes: list[_RingAttentionMode]) -> Callable:
    def pre_hook(module: nn.Module, args: Any) -> None:
        modes.append(_RingAttentionMode(group))
        modes[-1].__enter__()

    return pre_hook


def _exit_ring_attention(modes: list[_RingAttentionMode]) -> Callable:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if modes:
            modes.pop().__exit__(None, None, None)

    return hook


def apply_cp(model: nn.Module, mesh: Any, modules: str | Sequence[str]) -> nn.Module:
    r"""
    Attention over the whole sequence while each rank holds a slice: ``ring_attention`` over the context mesh.

    ``modules`` names the attention modules (``fnmatch`` patterns of module names, such as
    ``"layers.*.attention"``; ``""`` is ``model`` itself): while one of them runs its forward,
    every ``F.scaled_dot_product_attention`` call it makes is ring attention over ``mesh``.
    Name the attention modules rather than whole blocks, so that activation checkpointing,
    which recomputes a block's forward in the backward pass, recomputes it the same way.  Their
    inputs must be this rank's slices (``split_sequence``); a mesh of one rank changes nothing.
    Returns ``model``.
    """
    patterns = [modules] if isinstance(modules, str) else list(modules)
    if mesh.ndim != 1:
        raise ValueError(f"apply_cp needs the 1-D context mesh, got a {mesh.ndim}-D mesh {mesh.mesh_dim_names}")
    named = dict(model.named_modules())
    chosen: dict[str, nn.Module] = {}
    for pattern in patterns:
        matches = {name: module for name, module in named.items() if fnmatchcase(name, pattern)}
        if not matches:
            raise ValueError(
                f"apply_cp: no module of {type(model).__name__} matches {pattern!r}; "
                f"expected a pattern of module names such as 'layers.*.attention'"
            )
        chosen.update(matches)
    if mesh.size() == 1:
        return model
    group = mesh.get_group()
    for module in chosen.values():
        modes: list[_RingAttentionMode] = []
        module.register_forward_pre_hook(_enter_ring_attention(group, modes))
        module.register_forward_hook(_exit_ring_attention(modes), always_call=True)
    return model


def _map_tensors(data: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(data, Tensor):
        return fn(data)
    if isinstance(data, Mapping):
        mapped = {key: _map_tensors(value, fn) for key, value in data.items()}
        try:
            return type(data)(mapped)
        except TypeError:
            return mapped
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # a named tuple
        return type(data)(*(_map_tensors(value, fn) for value in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_map_tensors(value, fn) for value in data)
    return data


def split_sequence(data: Any, rank: int, degree: int, dim: int = 1) -> Any:
    r"""
    Slice ``rank`` of ``degree`` contiguous, equal slices along ``dim`` of every tensor in ``data``.

    ``data`` may nest tensors in mappings, lists and tuples; tensors with no dimension ``dim``
    (per-sample labels, scalars) and other values are kept whole.  The length along ``dim``
    must divide by ``degree``: ring attention needs equal slices.

    Examples:
        >>> batch = {"input": torch.arange(12).view(2, 6), "label": torch.tensor([0, 1])}
        >>> local = split_sequence(batch, rank=1, degree=3)
        >>> local["input"].tolist(), local["label"].tolist()
        ([[2, 3], [8, 9]], [0, 1])
        >>> split_sequence(torch.zeros(2, 5), rank=0, degree=2)
        Traceback (most recent call last):
        ValueError: cannot split a sequence of length 5 (dim 1 of a (2, 5) tensor) into 2 equal context slices; pad it to a multiple of 2
    """
    if not 0 <= rank < degree:
        raise ValueError(f"context rank must be in [0, {degree}), got {rank}")

    def split(tensor: Tensor) -> Tensor:
        if tensor.dim() <= dim:
            return tensor
        length = tensor.shape[dim]
        if length % degree:
            raise ValueError(
                f"cannot split a sequence of length {length} (dim {dim} of a {tuple(tensor.shape)} tensor) into "
                f"{degree} equal context slices; pad it to a multiple of {degree}"
            )
        return tensor.narrow(dim, rank * (length // degree), length // degree)

    return data if degree == 1 else _map_tensors(data, split)


def gather_sequence(tensor: Tensor, mesh: Any, dim: int = 1) -> Tensor:
    r"""
    The whole sequence from every context rank's slice of ``tensor`` (concatenated along ``dim``, in rank order).

    For outputs (predictions, logged activations): the result carries no gradient back to the slices.
    """
    if mesh.size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(mesh.size())]
    dist.all_gather(parts, tensor.detach().contiguous(), group=mesh.get_group())
    return torch.cat(parts, dim=dim)
