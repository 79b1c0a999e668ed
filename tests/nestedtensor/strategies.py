"""Hypothesis strategies and comparison helpers shared by the NestedTensor tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import Tensor


@st.composite
def ragged_batches(draw, max_rank: int = 4, max_batch: int = 5, allow_empty: bool = True) -> list[Tensor]:
    """A list of 1..max_batch float tensors of one rank (1..max_rank) with 1..3 ragged dims."""
    rank = draw(st.integers(1, max_rank))
    ragged_count = draw(st.integers(1, min(3, rank)))
    ragged = draw(st.sets(st.integers(0, rank - 1), min_size=ragged_count, max_size=ragged_count))
    static = {d: draw(st.integers(1, 3)) for d in range(rank) if d not in ragged}
    batch = draw(st.integers(1, max_batch))
    low = 0 if allow_empty else 1
    shapes = [tuple(static.get(d) or draw(st.integers(low, 4)) for d in range(rank)) for _ in range(batch)]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return [torch.randn(shape, generator=generator) for shape in shapes]


def assert_elements(actual, expected, exact: bool = True) -> None:
    """Element-by-element equality (shape and values) between two sequences of tensors.

    ``exact=False`` allows the last-bit differences of vectorised transcendental kernels, which
    round differently depending on where a value sits in memory.
    """
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape, (got.shape, want.shape)
        if exact:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want)


def padded(tensors: list[Tensor], fill: float = 0.0) -> Tensor:
    """Reference padding written the obvious way: one slice assignment per element."""
    rank = tensors[0].dim()
    sizes = [max(t.shape[d] for t in tensors) for d in range(rank)]
    out = torch.full((len(tensors), *sizes), fill, dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[(i, *(slice(0, s) for s in t.shape))] = t
    return out


@st.composite
def ragged_images(
    draw,
    spatial: int | None = None,
    max_batch: int = 4,
    max_size: int = 7,
    channels: int | None = None,
    batched: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Inputs of convolution/pooling: 1..max_batch ``(C, *spatial)`` tensors, or ``(N, C, *spatial)`` when batched.

    The channel count is shared; each spatial dim is ragged or static (drawn), and N varies when batched.
    """
    spatial = spatial or draw(st.integers(1, 3))
    channels = channels or draw(st.integers(1, 3))
    batched = draw(st.booleans()) if batched is None else batched
    static = {d: draw(st.integers(1, max_size)) for d in range(spatial) if draw(st.booleans())}
    batch = draw(st.integers(1, max_batch))
    shapes = []
    for _ in range(batch):
        sizes = tuple(static.get(d) or draw(st.integers(1, max_size)) for d in range(spatial))
        shapes.append(((draw(st.integers(1, 2)),) if batched else ()) + (channels, *sizes))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
