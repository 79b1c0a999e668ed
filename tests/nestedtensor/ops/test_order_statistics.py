"""``median``, ``nanmedian``, ``quantile``, ``nanquantile``: the reduction convention of ``sum`` and ``max``.

No dim reduces over every real value (a 0-d tensor), the batch dim gives one value per element, an
element dim gives the per-element results (dense when they share a shape). Each case is compared with
torch on every element alone, NaNs included.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops._rows import prefer_per_element

from ..harness import check_op
from ..strategies import assert_elements, ragged_batches

MEDIANS = ("median", "nanmedian")
QUANTILES = ("quantile", "nanquantile")
INTERPOLATIONS = ("linear", "lower", "higher", "midpoint", "nearest")


def _with_nans(tensors: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [t.masked_fill(torch.rand(t.shape, generator=generator) < 0.3, math.nan) for t in tensors]


def _packed_only(nested: NestedTensor) -> contextlib.AbstractContextManager:
    """``forbid_slow_paths()`` unless the elements are large enough for the documented per-element path."""
    return contextlib.nullcontext() if prefer_per_element(nested) else forbid_slow_paths()


def _dims(rank: int, batch_first: bool, data) -> tuple[int, int]:
    """A NestedTensor element dim (maybe negative) and the matching dim of the elements."""
    batch = 0 if batch_first else 1
    dim = data.draw(st.sampled_from([d for d in range(-rank - 1, rank + 1) if d % (rank + 1) != batch]))
    logical = dim % (rank + 1)
    return dim, logical - (logical > batch)


@pytest.mark.parametrize("name", MEDIANS)
@settings(max_examples=20, deadline=None)
@given(
    tensors=ragged_batches(max_rank=3, allow_empty=False),
    batch_first=st.booleans(),
    keepdim=st.booleans(),
    nans=st.booleans(),
    data=st.data(),
)
def test_median_along_an_element_dim_matches_every_element(name, tensors, batch_first, keepdim, nans, data):
    if nans:
        tensors = _with_nans(tensors, data.draw(st.integers(0, 2**16)))
    op = getattr(torch, name)
    dim, inner = _dims(tensors[0].dim(), batch_first, data)
    uniform = len({op(t, inner, keepdim).values.shape for t in tensors}) == 1
    # where every value of a slice is NaN, nanmedian's index (and so where its gradient goes) is unspecified:
    # torch 2.6 and later versions pick different ones
    all_nan = name == "nanmedian" and any(bool(torch.isnan(t).all(inner).any()) for t in tensors)
    for part, grad in (("values", not all_nan), ("indices", False)):
        if part == "indices" and nans and name == "nanmedian":
            continue  # where every value is NaN torch's index is unspecified
        check_op(
            lambda x, part=part: getattr(op(x, dim, keepdim=keepdim), part),
            [tensors],
            lambda t, part=part: getattr(op(t, inner, keepdim=keepdim), part),
            nested_kwargs={"batch_first": batch_first},
            grad=grad,
            packed=not prefer_per_element(NestedTensor(tensors)),
            dense=uniform,
        )


@pytest.mark.parametrize("name", MEDIANS)
@settings(max_examples=20, deadline=None)
@given(
    tensors=ragged_batches(max_rank=3, allow_empty=False),
    batch_first=st.booleans(),
    keepdim=st.booleans(),
    nans=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_median_along_the_batch_dim_reduces_every_element_whole(name, tensors, batch_first, keepdim, nans, seed):
    if nans:
        tensors = _with_nans(tensors, seed)
    op = getattr(torch, name)
    nested = NestedTensor(tensors, batch_first=batch_first)
    batch = 0 if batch_first else 1
    with _packed_only(nested):
        values, indices = op(nested, batch, keepdim=keepdim)
    expected = [op(t.reshape(-1), 0) for t in tensors]
    want_values = torch.stack([e.values for e in expected])
    want_indices = torch.stack([e.indices for e in expected])
    if keepdim:
        want_values, want_indices = want_values.unsqueeze(batch), want_indices.unsqueeze(batch)
    assert type(values) is torch.Tensor and type(indices) is torch.Tensor
    torch.testing.assert_close(values, want_values, equal_nan=True)
    if not (nans and name == "nanmedian"):
        torch.testing.assert_close(indices, want_indices)


@pytest.mark.parametrize("name", MEDIANS)
@settings(max_examples=10, deadline=None)
@given(tensors=ragged_batches(max_rank=3), nans=st.booleans(), seed=st.integers(0, 2**16))
def test_median_without_a_dim_is_one_value_over_the_real_data(name, tensors, nans, seed):
    if nans:
        tensors = _with_nans(tensors, seed)
    op = getattr(torch, name)
    with forbid_slow_paths():
        results = [op(NestedTensor(tensors)), getattr(NestedTensor(tensors), name)()]
    expected = op(torch.cat([t.reshape(-1) for t in tensors]))
    for result in results:
        assert type(result) is torch.Tensor and result.shape == ()
        torch.testing.assert_close(result, expected, equal_nan=True)


def test_median_of_integers_and_its_gradient():
    nested = NestedTensor([torch.tensor([[5, 1, 3], [2, 5, 9]]), torch.tensor([[7, 4, 6]])])
    with forbid_slow_paths():
        values, indices = torch.median(nested, dim=2)  # along the static dim: one per row, rows differ
    assert isinstance(values, NestedTensor) and values.dtype == torch.int64
    assert_elements(values, [torch.tensor([3, 5]), torch.tensor([6])])
    assert_elements(indices, [torch.tensor([2, 1]), torch.tensor([2])])
    leaves = [torch.tensor([3.0, 1.0, 2.0], requires_grad=True), torch.tensor([4.0, 8.0], requires_grad=True)]
    torch.median(NestedTensor(leaves), dim=1).values.sum().backward()
    assert leaves[0].grad.tolist() == [0.0, 0.0, 1.0] and leaves[1].grad.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("name", QUANTILES)
@settings(max_examples=25, deadline=None)
@given(
    tensors=ragged_batches(max_rank=3, allow_empty=False),
    batch_first=st.booleans(),
    keepdim=st.booleans(),
    nans=st.booleans(),
    interpolation=st.sampled_from(INTERPOLATIONS),
    vector=st.booleans(),
    where=st.sampled_from(["none", "batch", "element"]),
    data=st.data(),
)
def test_quantile_follows_the_reduction_convention(
    name, tensors, batch_first, keepdim, nans, interpolation, vector, where, data
):
    if nans:
        tensors = _with_nans(tensors, data.draw(st.integers(0, 2**16)))
    op = getattr(torch, name)
    q = torch.tensor([0.0, 0.3, 0.5, 1.0]) if vector else torch.tensor(0.75)
    leading = q.dim()
    options = {"keepdim": keepdim, "interpolation": interpolation}
    nested = NestedTensor(tensors, batch_first=batch_first)
    batch = 0 if batch_first else 1
    if where == "none":
        with forbid_slow_paths():
            result = op(nested, q, **options)
        expected = op(torch.cat([t.reshape(-1) for t in tensors]), q, interpolation=interpolation)
        if keepdim:
            expected = expected.reshape(*q.shape, *(1,) * nested.dim())
    elif where == "batch":
        with _packed_only(nested):
            result = op(nested, q, dim=batch - nested.dim(), **options)
        expected = torch.stack([op(t.reshape(-1), q, interpolation=interpolation) for t in tensors], leading)
        if keepdim:
            expected = expected.unsqueeze(leading + batch)
    else:
        dim, inner = _dims(tensors[0].dim(), batch_first, data)
        with _packed_only(nested):
            result = op(nested, q, dim=dim, **options)
        per_element = [op(t, q, dim=inner, **options) for t in tensors]
        if len({r.shape for r in per_element}) > 1:
            assert isinstance(result, NestedTensor) and result.batch_first == batch_first
            assert_close_elements(list(result), per_element)
            return
        expected = torch.stack(per_element, leading)
    assert type(result) is torch.Tensor
    torch.testing.assert_close(result, expected, equal_nan=True)


def assert_close_elements(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_quantile_gradient_reaches_the_interpolated_values():
    leaves = [torch.tensor([4.0, 1.0, 3.0], requires_grad=True), torch.tensor([2.0, 8.0], requires_grad=True)]
    torch.quantile(NestedTensor(leaves), 0.25, dim=1).sum().backward()
    expected = [t.detach().clone().requires_grad_() for t in leaves]
    sum(torch.quantile(t, 0.25) for t in expected).backward()
    for got, want in zip(leaves, expected):
        torch.testing.assert_close(got.grad, want.grad)


def test_bad_input_raises_torch_errors_naming_the_element():
    nested = NestedTensor([torch.ones(2, 3), torch.ones(0, 3)])
    with pytest.raises(IndexError, match=r"median\(\): Expected reduction dim 1 to have non-zero size.*element 1"):
        torch.median(nested, dim=1)
    with pytest.raises(IndexError, match=r"element 1"):
        torch.nanmedian(nested, dim=0)
    with pytest.raises(RuntimeError, match=r"quantile\(\) input tensor must be non-empty.*element 1"):
        torch.quantile(nested, 0.5, dim=2)
    floats = NestedTensor([[1.0, 2.0], [3.0]])
    with pytest.raises(RuntimeError, match=r"q must be in the range \[0, 1\] but got 1.5"):
        torch.quantile(floats, 1.5, dim=1)
    with pytest.raises(RuntimeError, match=r"input tensor must be either float or double dtype"):
        torch.quantile(NestedTensor([[1, 2], [3]]), 0.5, dim=1)
    with pytest.raises(RuntimeError, match=r"interpolation must be one of"):
        torch.nanquantile(floats, 0.5, dim=1, interpolation="cubic")
    with pytest.raises((NotImplementedError, RuntimeError)) as dense:  # RuntimeError before torch 2.7 or so
        torch.median(torch.tensor([[True, False]]), dim=1)
    with pytest.raises(dense.type, match=r"not implemented for 'Bool'"):
        torch.median(NestedTensor([[True, False], [True]]), dim=1)


def test_large_elements_on_the_cpu_run_one_native_call_each():
    generator = torch.Generator().manual_seed(2)
    tensors = _with_nans([torch.randn(n, 3, generator=generator) for n in (40, 57)], 3)
    nested = NestedTensor(tensors, batch_first=False)
    with forbid_slow_paths(), pytest.raises(RuntimeError, match="ran per element: an order statistic of large"):
        torch.median(nested, 0)
    values, indices = torch.median(nested, 0)  # dim 0 is the ragged dim when the batch is dim 1
    torch.testing.assert_close(values, torch.stack([t.median(0).values for t in tensors]), equal_nan=True)
    torch.testing.assert_close(indices, torch.stack([t.median(0).indices for t in tensors]))
    q = torch.tensor([0.1, 0.9])
    expected = torch.stack([torch.nanquantile(t.reshape(-1), q) for t in tensors], 1)
    torch.testing.assert_close(torch.nanquantile(nested, q, dim=1, interpolation="linear"), expected)
    along = torch.stack([torch.nanquantile(t, q, dim=0, keepdim=True) for t in tensors], 1)
    torch.testing.assert_close(torch.nanquantile(nested, q, dim=0, keepdim=True), along)


@pytest.mark.parametrize("name", QUANTILES)
def test_quantile_ranks_carry_float64_precision_like_torch(name):
    tensors = [torch.arange(11.0), torch.arange(5.0) * 1e7]  # 0.3 of rank 10 is just above 3 in float64
    op = getattr(torch, name)
    for interpolation in INTERPOLATIONS:
        with forbid_slow_paths():
            result = op(NestedTensor(tensors), torch.tensor([0.3, 0.7]), dim=1, interpolation=interpolation)
        expected = torch.stack([op(t, torch.tensor([0.3, 0.7]), interpolation=interpolation) for t in tensors], 1)
        assert torch.equal(result, expected), (interpolation, result, expected)
