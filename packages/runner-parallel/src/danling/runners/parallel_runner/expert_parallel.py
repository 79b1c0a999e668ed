"""Expert parallelism: the experts of a mixture-of-experts layer spread over the ranks of the ``expert`` axis.

``MixtureOfExperts`` is the worked example: a router picks ``top_k`` of ``num_experts`` MLP
experts for each token, and the layer adds the chosen experts' outputs, weighed by the router's
probabilities.  Its expert weights are stacked, ``(num_experts, ...)``; ``apply_ep`` turns them
into ``DTensor``\\ s sharded along the expert dimension, so each expert rank holds
``num_experts / expert`` of them (and DCP, FSDP and clipping see one tensor per weight).

Expert-parallel peers read the same batch (the ``expert`` axis is not part of the ``data``
domain), so the forward of an expert-parallel layer is:

1. route every token (the router is replicated; computing it on every token keeps its gradient
   whole on every rank);
2. take this rank's share of the tokens (``1 / expert`` of them);
3. dispatch: an all-to-all sends each (token, chosen expert) pair to the rank holding that expert;
4. run the local experts on what arrived;
5. combine: a second all-to-all brings the results back, and each token adds its experts'
   outputs, weighed;
6. all-gather the shares, so every rank has the whole output again.

The backward of each collective is its mirror image (all-to-all back, the all-gather's
gradient is this rank's share), so gradients equal those of the unsharded layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.nn import functional as F

__all__ = ["MixtureOfExperts", "apply_ep"]


class _AllToAll(torch.autograd.Function):
    """Rows of ``tensor`` in blocks of ``send`` sizes to each rank; receives blocks of ``receive`` sizes."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, send: list[int], receive: list[int], group: Any) -> Tensor:
        ctx.send, ctx.receive, ctx.group = send, receive, group
        output = tensor.new_empty((sum(receive), *tensor.shape[1:]))
        dist.all_to_all_single(output, tensor.contiguous(), receive, send, group=group)
        return output

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        output = grad.new_empty((sum(ctx.send), *grad.shape[1:]))
        dist.all_to_all_single(output, grad.contiguous(), ctx.send, ctx.receive, group=ctx.group)
        return output, None, None, None


class _ShareRows(torch.autograd.Function):
    """This rank's equal share of the rows of each (replicated) tensor; the backward gathers the shares' gradients."""

    @staticmethod
    def forward(ctx: Any, group: Any, *tensors: Tensor) -> tuple[Tensor, ...]:
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        ctx.group = group
        return tuple(tensor.chunk(size)[rank].clone() for tensor in tensors)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Any, ...]:
        size = dist.get_world_size(ctx.group)
        gathered = []
        for grad in grads:
            parts = [torch.empty_like(grad) for _ in range(size)]
            dist.all_gather(parts, grad.contiguous(), group=ctx.group)
            gathered.append(torch.cat(parts))
        return (None, *gathered)


class _GatherRows(torch.autograd.Function):
    """Every rank's share concatenated; the gradient of a share is its rows of the (replicated) gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        size, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(size)[rank].contiguous(), None


def _run_experts(tokens: Tensor, expert: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """``w2[e](gelu(w1[e](token)))`` for each row, ``e`` its entry of ``expert`` (an index into ``w1`` / ``w2``)."""
    output = tokens.new_zeros(tokens.shape[0], w2.shape[-1])
    for index in range(w1.shape[0]):
        rows = (expert == index).nonzero(as_tuple=True)[0]
        hidden = F.gelu(tokens.index_select(0, rows) @ w1[index])
        output = output.index_copy(0, rows, hidden @ w2[index])
    return output


def _local(weight: Tensor) -> Tensor:
    return weight.to_local() if isinstance(weight, DTensor) else weight


class MixtureOfExperts(nn.Module):
    r"""
    A mixture-of-experts MLP on ``(..., dim)`` inputs: each token goes to ``top_k`` of ``num_experts`` experts.

    Each expert is ``w2(gelu(w1(x)))`` without biases; a token's output is the sum of its chosen
    experts' outputs, each times the router's softmax probability for it.  ``parallelize``
    spreads the experts over the ``expert`` axis (``apply_ep``).

    Examples:
        >>> layer = MixtureOfExperts(dim=8, hidden_dim=16)  # two experts, one per token
        >>> layer(torch.randn(3, 4, 8)).shape, tuple(layer.w1.shape)
        (torch.Size([3, 4, 8]), (2, 8, 16))
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int = 2, top_k: int = 1) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        nn.init.uniform_(self.w1, -1 / math.sqrt(dim), 1 / math.sqrt(dim))
        nn.init.uniform_(self.w2, -1 / math.sqrt(hidden_dim), 1 / math.sqrt(hidden_dim))
        #: The expert sub-mesh once ``apply_ep`` has spread the experts (``None``: all experts here).
        self.expert_mesh: Any = None

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        probabilities = torch.softmax(self.router(tokens), dim=-1)
        weights, experts = probabilities.topk(self.top_k, dim=-1)
        if self.expert_mesh is None:
            output = self._combine(tokens, weights, experts)
        else:
            output = self._expert_parallel(tokens, weights, experts)
        return output.view(*x.shape[:-1], -1)

    def _combine(self, tokens: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        """All experts on this rank: each (token, choice) through its expert, weighed and summed."""
        choices = _run_experts(tokens.repeat_interleave(self.top_k, dim=0), experts.reshape(-1), self.w1, self.w2)
        return (choices.view(*weights.shape, -1) * weights.unsqueeze(-1)).sum(dim=1)

    def _expert_parallel(self, tokens: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        group, size = self.expert_mesh.get_group(), self.expert_mesh.size()
        local_experts = self.num_experts // size
        count = tokens.shape[0]
        pad = -count % size  # equal shares: padded rows go to expert 0 with weight 0, and are dropped at the end
        if pad:
            tokens, weights = F.pad(tokens, (0, 0, 0, pad)), F.pad(weights, (0, 0, 0, pad))
            experts = F.pad(experts, (0, 0, 0, pad))
        tokens, weights = _ShareRows.apply(group, tokens, weights)
        experts = experts.chunk(size)[dist.get_rank(group)]
        # (token, choice) pairs sorted by expert, so the pairs for each rank are one block
        choice_experts = experts.reshape(-1)
        order = torch.argsort(choice_experts, stable=True)
        send_rows = tokens.index_select(0, order // self.top_k)
        counts = torch.bincount(choice_experts, minlength=self.num_experts)
        received_counts = torch.empty_like(counts)  # per source rank, the count for each local expert
        dist.all_to_all_single(received_counts, counts, group=group)
        send = counts.view(size, local_experts).sum(dim=1).tolist()
        receive = received_counts.view(size, local_experts).sum(dim=1).tolist()
        arrived = _AllToAll.apply(send_rows, send, receive, group)
        local_index = torch.arange(local_experts, device=counts.device).repeat(size)
        outputs = _run_experts(
            arrived, local_index.repeat_interleave(received_counts), _local(self.w1), _local(self.w2)
        )
        returned = _AllToAll.apply(outputs, receive, send, group)
        choices = returned.index_select(0, torch.argsort(order))  # back in (token, choice) order
        share = (choices.view(*weights.shape, -1) * weights.unsqueeze(-1)).sum(dim=1)
        return _GatherRows.apply(share, group)[:count]

    def parallelize(self, parallel: Any) -> None:
        """Spread the experts over ``parallel``'s expert axis (the hook ``ParallelRunner`` calls)."""
        if parallel.degree("expert") > 1:
            apply_ep(self, parallel.submesh("expert"))


def apply_ep(model: nn.Module, mesh: Any) -> nn.Module:
    r"""
    Spread the experts of every ``MixtureOfExperts`` in ``model`` over the 1-D expert ``mesh``; returns ``model``.

    Expert rank ``i`` keeps experts ``[i * n, (i + 1) * n)``, ``n = num_experts / mesh.size()``,
    as the local shard of ``DTensor`` weights (``Shard(0)``); tokens reach them through
    all-to-all dispatch.  Every rank must have built the same model (same seed): rank 0's
    weights are the ones distributed.  On a mesh of one rank nothing changes.
    """
    if mesh.ndim != 1:
        raise ValueError(f"apply_ep needs the 1-D expert mesh, got a {mesh.ndim}-D mesh {mesh.mesh_dim_names}")
    layers = [module for module in model.modules() if isinstance(module, MixtureOfExperts)]
    if not layers:
        raise ValueError(
            f"apply_ep: {type(model).__name__} has no MixtureOfExperts layer to spread over the expert axis"
        )
    size = mesh.size()
    for layer in layers:
        if layer.num_experts % size:
            raise ValueError(
                f"apply_ep: {layer.num_experts} experts cannot be spread evenly over parallel.axes.expert={size}; "
                f"expected a degree that divides {layer.num_experts}"
            )
    if size == 1:
        return model
    for layer in layers:
        for name in ("w1", "w2"):
            weight = getattr(layer, name)
            if not isinstance(weight, DTensor):
                setattr(layer, name, nn.Parameter(distribute_tensor(weight.detach(), mesh, [Shard(0)])))
        layer.expert_mesh = mesh
    return model
