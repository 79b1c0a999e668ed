import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths

from ..harness import check_op
from ..strategies import padded, ragged_batches

# name -> (call on a tensor or NestedTensor with dims, fill of padding that leaves the result unchanged)
MULTI_DIM = {
    "sum": (lambda x, d, k: x.sum(d, keepdim=k), 0.0),
    "mean": (lambda x, d, k: x.mean(d, keepdim=k), None),
    "amax": (lambda x, d, k: x.amax(d, keepdim=k), -math.inf),
    "amin": (lambda x, d, k: torch.amin(x, d, keepdim=k), math.inf),
    "nansum": (lambda x, d, k: torch.nansum(x, d, keepdim=k), 0.0),
    "std": (lambda x, d, k: x.std(d, keepdim=k, correction=0), None),
    "var": (lambda x, d, k: torch.var(x, d, keepdim=k, correction=0), None),
    "logsumexp": (lambda x, d, k: torch.logsumexp(x, d, keepdim=k), -math.inf),
    "norm": (lambda x, d, k: torch.linalg.vector_norm(x, dim=d, keepdim=k), 0.0),
    "norm1": (lambda x, d, k: torch.linalg.vector_norm(x, 1, dim=d, keepdim=k), 0.0),
    "norm3": (lambda x, d, k: torch.norm(x, 3, dim=d, keepdim=k), 0.0),
    "norm_inf": (lambda x, d, k: torch.linalg.vector_norm(x, math.inf, dim=d, keepdim=k), 0.0),
    "count_nonzero": (lambda x, d, k: torch.count_nonzero(x.round(), d), 0.0),
    "all": (lambda x, d, k: (x > 0).all(d, keepdim=k), 1.0),
    "any": (lambda x, d, k: (x > 0).any(d, keepdim=k), 0.0),
}
SINGLE_DIM = {
    "prod": lambda x, d, k: x.prod(d, keepdim=k),
    "argmax": lambda x, d, k: x.argmax(d, keepdim=k),
    "argmin": lambda x, d, k: torch.argmin(x, d, keepdim=k),
    "max": lambda x, d, k: torch.max(x, d, keepdim=k).values,
    "max.indices": lambda x, d, k: x.max(d, keepdim=k).indices,
    "min": lambda x, d, k: x.min(d, keepdim=k).values,
    "min.indices": lambda x, d, k: torch.min(x, d, keepdim=k).indices,
}
NO_GRAD = {"count_nonzero", "all", "any", "argmax", "argmin", "max.indices", "min.indices"}
NO_GRAD |= {"std"}  # infinite at a zero spread (one value): covered by the gradcheck below
NO_KEEPDIM = {"count_nonzero"}


def element_dims(dims: list[int], batch_first: bool) -> list[int]:
    batch = 0 if batch_first else 1
    return [d - 1 if d > batch else d for d in dims]


@pytest.mark.parametrize("name", [*MULTI_DIM, *SINGLE_DIM])
@settings(max_examples=20)
@given(tensors=ragged_batches(max_rank=3, allow_empty=False), batch_first=st.booleans(), data=st.data())
def test_reductions_inside_elements_match_per_element_results(name, tensors, batch_first, data):
    op = MULTI_DIM[name][0] if name in MULTI_DIM else SINGLE_DIM[name]
    rank = tensors[0].dim()
    batch = 0 if batch_first else 1
    logical = [d for d in range(rank + 1) if d != batch]
    size = 1 if name in SINGLE_DIM else data.draw(st.integers(1, rank))
    dims = data.draw(st.lists(st.sampled_from(logical), min_size=size, max_size=size, unique=True))
    keepdim = data.draw(st.booleans()) and name not in NO_KEEPDIM
    nested_dims = dims[0] if name in SINGLE_DIM else dims
    inner = element_dims(dims, batch_first)
    inner_dims = inner[0] if name in SINGLE_DIM else inner
    results = [op(t, inner_dims, keepdim) for t in tensors]
    check_op(
        lambda x: op(x, nested_dims, keepdim),
        [tensors],
        lambda t: op(t, inner_dims, keepdim),
        nested_kwargs={"batch_first": batch_first},
        grad=name not in NO_GRAD,
        dense=len({r.shape for r in results}) == 1,
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.parametrize("name", [*MULTI_DIM, *SINGLE_DIM])
@settings(max_examples=20)
@given(tensors=ragged_batches(max_rank=3, allow_empty=False), batch_first=st.booleans(), keepdim=st.booleans())
def test_reducing_the_batch_dim_alone_reduces_every_element_whole(name, tensors, batch_first, keepdim):
    op = MULTI_DIM[name][0] if name in MULTI_DIM else SINGLE_DIM[name]
    keepdim = keepdim and name not in NO_KEEPDIM
    nested = NestedTensor(tensors, batch_first=batch_first)
    batch = 0 if batch_first else 1
    with forbid_slow_paths():
        result = op(nested, batch, keepdim)
    expected = torch.stack([op(t.reshape(-1), 0, False) for t in tensors])
    if keepdim:
        expected = expected.unsqueeze(batch)
    assert not isinstance(result, NestedTensor)
    torch.testing.assert_close(result, expected, atol=1e-4, rtol=1e-4)


def masked_reference(tensors: list[torch.Tensor], name: str, dims: list[int], keepdim: bool) -> torch.Tensor:
    """The reduction of the padded batch over ``dims`` (batch included) with the padding left out."""
    op, fill = MULTI_DIM[name]
    valid = padded([torch.ones_like(t) for t in tensors]).bool()
    if fill is not None:
        source = padded(tensors, fill)
        if name == "count_nonzero":
            source = source.round()
        return op(source, dims, keepdim)
    count = valid.sum(dims, keepdim=True)
    mean = torch.where(valid, padded(tensors), 0).sum(dims, keepdim=True) / count
    if name == "mean":
        return mean if keepdim else mean.squeeze(dims)
    squares = torch.where(valid, padded(tensors) - mean, 0).square().sum(dims, keepdim=True)
    var = squares / count
    result = var.sqrt() if name == "std" else var
    return result if keepdim else result.squeeze(dims)


@pytest.mark.parametrize("name", MULTI_DIM)
@settings(max_examples=20)
@given(tensors=ragged_batches(max_rank=3, allow_empty=False), data=st.data())
def test_reducing_the_batch_with_element_dims_reduces_the_padded_tensor_without_its_padding(name, tensors, data):
    rank = tensors[0].dim()
    assume(rank > 1)  # with one element dim, the batch and it are every dim
    dims = sorted({0, *data.draw(st.lists(st.integers(1, rank), min_size=1, max_size=rank - 1, unique=True))})
    keepdim = data.draw(st.booleans()) and name not in NO_KEEPDIM
    op = MULTI_DIM[name][0]
    with forbid_slow_paths():
        result = op(NestedTensor(tensors), dims, keepdim)
    expected = masked_reference(tensors, name, dims, keepdim)
    assert not isinstance(result, NestedTensor)
    torch.testing.assert_close(result, expected.to(result.dtype), atol=1e-4, rtol=1e-4, equal_nan=True)


@pytest.mark.parametrize("name", MULTI_DIM)
@settings(max_examples=20)
@given(tensors=ragged_batches(max_rank=3, allow_empty=False), keepdim=st.booleans())
def test_reducing_every_dim_is_one_value_over_the_real_data(name, tensors, keepdim):
    keepdim = keepdim and name not in NO_KEEPDIM
    op = MULTI_DIM[name][0]
    nested = NestedTensor(tensors)
    everything = list(range(nested.dim()))
    with forbid_slow_paths():
        results = [op(nested, everything, keepdim)]
        if name not in ("count_nonzero", "logsumexp"):  # these two need a dim
            results.append(op(nested, None, keepdim))
    flat = torch.cat([t.reshape(-1) for t in tensors])
    expected = op(flat, 0, False)
    for result in results:
        assert result.shape == ((1,) * nested.dim() if keepdim else ())
        torch.testing.assert_close(result.reshape(()), expected, atol=1e-4, rtol=1e-4)


def test_reductions_keep_dtypes_and_accept_dtype():
    nested = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
    assert nested.sum().dtype == torch.int64 and nested.sum(dtype=torch.float32).dtype == torch.float32
    assert nested.sum(dim=1, dtype=torch.float64).dtype == torch.float64
    assert nested.amax(dim=1).tolist() == [3, 5] and nested.amin().item() == 1
    assert nested.max() == 5 and nested.min() == 1
    assert nested.prod(dim=0).tolist() == [6, 20]
    assert torch.nansum(nested, dim=1).tolist() == [6, 9]
    with pytest.raises(RuntimeError, match=r"mean\(\): could not infer output dtype"):
        nested.mean()
    assert nested.mean(dtype=torch.float64).item() == 3.0
    assert nested.mean(dim=1, dtype=torch.float64).tolist() == [2.0, 4.5]
    assert torch.linalg.vector_norm(nested.float(), dim=1, dtype=torch.float64).dtype == torch.float64
    half = NestedTensor([torch.ones(3, dtype=torch.float16), torch.ones(2, dtype=torch.float16)])
    assert half.sum(dim=1).dtype == torch.float16 and half.mean(dim=0).dtype == torch.float16


def test_nanmean_var_mean_std_mean_and_aminmax():
    tensors = [torch.tensor([[1.0, math.nan], [3.0, 4.0]]), torch.tensor([[5.0, 6.0]])]
    nested = NestedTensor(tensors)
    with forbid_slow_paths():
        means = torch.nanmean(nested, dim=1)
        var, mean = torch.var_mean(NestedTensor([t.nan_to_num() for t in tensors]), dim=1)
        std, _ = torch.std_mean(NestedTensor([t.nan_to_num() for t in tensors]), dim=1, correction=0)
        low, high = torch.aminmax(nested.nan_to_num(), dim=1)
    torch.testing.assert_close(means, torch.stack([torch.nanmean(t, 0) for t in tensors]))
    torch.testing.assert_close(var, torch.stack([t.nan_to_num().var(0) for t in tensors]), equal_nan=True)
    torch.testing.assert_close(mean, torch.stack([t.nan_to_num().mean(0) for t in tensors]))
    torch.testing.assert_close(std, torch.stack([t.nan_to_num().std(0, correction=0) for t in tensors]))
    assert low.tolist() == [[1.0, 0.0], [5.0, 6.0]] and high.tolist() == [[3.0, 4.0], [5.0, 6.0]]


def test_extremes_pick_the_first_index_and_propagate_nan():
    nested = NestedTensor([torch.tensor([1.0, 7.0, 7.0]), torch.tensor([math.nan, 2.0, math.nan])])
    with forbid_slow_paths():
        values, indices = torch.max(nested, dim=1)
        first_min = NestedTensor([torch.tensor([[2, 1, 1]]), torch.tensor([[3, 3]])]).argmin(dim=2)
    assert indices.tolist() == [1, 0] and values[0] == 7.0 and values[1].isnan()
    assert first_min.tolist() == [[1], [0]]
    assert NestedTensor([torch.tensor([3, 9, 9]), torch.tensor([9, 1])]).argmax().item() == 1
    ragged = NestedTensor([torch.tensor([[0, 1], [5, 2]]), torch.tensor([[1, 6, 0]])])
    index = ragged.argmax()  # into the flattened padded tensor, so unravel_index finds the value
    coordinates = torch.unravel_index(index, ragged.shape)
    assert ragged.tensor[coordinates].item() == 6


def test_extremes_of_empty_elements_raise_a_clear_error():
    nested = NestedTensor([torch.ones(0), torch.ones(2)])
    with pytest.raises(IndexError, match="element 0 of the NestedTensor has no values along dim 1"):
        nested.argmax(dim=1)


def test_empty_elements_reduce_to_the_identity():
    nested = NestedTensor([torch.ones(0), torch.ones(2)])
    assert nested.sum(dim=0).tolist() == [0.0, 2.0]
    assert nested.amax(dim=1).tolist() == [-math.inf, 1.0]
    means = nested.mean(dim=0)
    assert means.isnan()[0] and means[1] == 1.0
    assert (nested > 0).all(dim=1).tolist() == [True, True] and (nested > 0).any(dim=1).tolist() == [False, True]


def test_max_along_a_ragged_dim_sends_the_gradient_to_the_chosen_value():
    first = torch.tensor([[1.0, 5.0], [5.0, 2.0], [0.0, 9.0]], requires_grad=True)
    second = torch.tensor([[3.0, 3.0]], requires_grad=True)
    values, _ = torch.max(NestedTensor([first, second]), dim=1)
    values.sum().backward()
    assert first.grad.tolist() == [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    assert second.grad.tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize(
    "op",
    [
        lambda x: x.sum(1),
        lambda x: x.mean([0, 2]),
        lambda x: x.prod(1),
        lambda x: x.amax(1),
        lambda x: x.std(1),
        lambda x: x.var([0, 1]),
        lambda x: torch.logsumexp(x, 1),
        lambda x: torch.linalg.vector_norm(x, dim=1),
        lambda x: torch.max(x, 1).values,
        lambda x: x.min(0).values,
        lambda x: x.sum(),
    ],
)
def test_gradcheck(op):
    sources = (
        torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 2, dtype=torch.float64, requires_grad=True),
    )

    def function(first, second):
        result = op(NestedTensor([first, second]))
        return result.concat if isinstance(result, NestedTensor) else result

    assert torch.autograd.gradcheck(function, sources)


def test_equal_and_allclose():
    nested = NestedTensor([torch.ones(2, 3), torch.zeros(1, 3)])
    assert torch.equal(nested, nested.clone())
    assert not torch.equal(nested, NestedTensor([torch.ones(2, 3), torch.ones(1, 3)]))
    assert not torch.equal(nested, NestedTensor([torch.ones(1, 3), torch.zeros(2, 3)]))
    permuted = NestedTensor([torch.ones(3, 2), torch.zeros(3, 1)]).transpose(1, 2)
    assert torch.equal(permuted, NestedTensor([torch.ones(2, 3), torch.zeros(1, 3)]))
    assert torch.equal(nested, nested.tensor)
    assert torch.allclose(nested, nested + 1e-9) and not torch.allclose(nested, nested + 1)
