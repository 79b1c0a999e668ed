"""A small example transformer with a ``parallelize`` hook: the worked example of tensor parallelism.

``TransformerBlock`` is a pre-norm block (causal self-attention, then a GELU MLP, each added back
to its input); ``Transformer`` stacks blocks between a token embedding and a vocabulary head.
Both define ``parallelize(parallel)``, the hook ``ParallelRunner`` calls with its
``ParallelContext``: they apply their built-in plan (``tensor_parallel.transformer_block_plan`` /
``transformer_plan``) over the ``tensor`` axis.  Any model can do the same with its own plan.

The modules compute the local number of heads from the width of their (possibly column-sharded)
projections, so one forward serves the sharded and the unsharded block alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .tensor_parallel import apply_tp, transformer_block_plan, transformer_plan

__all__ = ["Attention", "FeedForward", "Transformer", "TransformerBlock"]


class Attention(nn.Module):
    """Causal multi-head self-attention with separate query, key, value and output projections."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} must be divisible by num_heads={num_heads}")
        self.head_dim = dim // num_heads
        self.wq, self.wk, self.wv = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        # -1 heads: under tensor parallelism each rank's projections hold only its own heads
        q, k, v = (w(x).view(batch, length, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    """``w2(gelu(w1(x)))``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim)
        self.w2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


class TransformerBlock(nn.Module):
    r"""
    A pre-norm transformer block on ``(batch, sequence, dim)`` inputs.

    Examples:
        >>> block = TransformerBlock(dim=8, num_heads=2, hidden_dim=16)
        >>> block(torch.randn(3, 4, 8)).shape
        torch.Size([3, 4, 8])
    """

    def __init__(self, dim: int, num_heads: int, hidden_dim: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = Attention(dim, num_heads)
        self.ffn_norm = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))

    def parallelize(self, parallel: Any) -> None:
        """Tensor-parallel over ``parallel``'s tensor axis; the block still takes and returns full tensors."""
        if parallel.degree("tensor") > 1:
            apply_tp(self, parallel.submesh("tensor"), transformer_block_plan())


class Transformer(nn.Module):
    r"""
    Token ids ``(batch, sequence)`` -> logits ``(batch, sequence, vocab_size)``.

    Examples:
        >>> model = Transformer(vocab_size=11, dim=8, num_layers=2, num_heads=2)
        >>> model(torch.randint(0, 11, (3, 4))).shape
        torch.Size([3, 4, 11])
    """

    def __init__(self, vocab_size: int, dim: int, num_layers: int, num_heads: int, hidden_dim: int | None = None):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(TransformerBlock(dim, num_heads, hidden_dim or 4 * dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))

    def parallelize(self, parallel: Any) -> None:
        """Tensor-parallel over ``parallel``'s tensor axis (sequence-sharded between the blocks)."""
        if parallel.degree("tensor") > 1:
            apply_tp(self, parallel.submesh("tensor"), transformer_plan(len(self.layers)))
