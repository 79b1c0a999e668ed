import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops.reduction import reduce

from ..strategies import padded, ragged_batches

OPS = ["sum", "mean", "prod", "amax", "amin", "all", "any"]
IDENTITY = {"sum": 0.0, "mean": 0.0, "prod": 1.0, "amax": -float("inf"), "amin": float("inf")}


def dense_reduce(tensor: torch.Tensor, op: str, dims: list[int], keepdim: bool = False) -> torch.Tensor:
    """The reference: reduce a dense tensor with the op the NestedTensor method names."""
    if op in ("all", "any"):
        tensor = tensor > 0
    if not dims:
        return getattr(torch, op)(tensor)
    if op in ("prod", "all", "any"):
        for dim in sorted(dims, reverse=True):
            tensor = getattr(torch, op)(tensor, dim, keepdim=keepdim)
        return tensor
    return getattr(torch, op)(tensor, dims, keepdim=keepdim)


def call(nested: NestedTensor, op: str, dims, keepdim: bool = False):
    if op in ("all", "any"):
        nested = nested > 0
    if dims is None:
        return getattr(nested, op)()
    if op == "prod":  # torch.prod takes a single dim
        return nested.prod(dim=dims[0], keepdim=keepdim) if len(dims) == 1 else reduce(nested, op, dims, keepdim)
    return getattr(nested, op)(dim=dims, keepdim=keepdim)


def expected(tensors: list[torch.Tensor], op: str, dims: list[int], batch_first: bool, keepdim: bool):
    """Per-element (or padded, when the batch is mixed with element dims) reference result."""
    rank = tensors[0].dim()
    batch = 0 if batch_first else 1
    element_dims = [d - 1 if d > batch else d for d in dims if d != batch]
    if dims == [batch]:
        result = torch.stack([dense_reduce(t, op, []) for t in tensors])
        return result.unsqueeze(batch) if keepdim else result
    if len(dims) == rank + 1:
        result = dense_reduce(torch.cat([t.reshape(-1) for t in tensors]), op, [])
        return result.reshape((1,) * (rank + 1)) if keepdim else result
    if batch in dims:
        source = padded(tensors, 0.0 if op in ("all", "any") else IDENTITY[op])
        if op in ("all", "any"):
            source = padded([(t > 0).float() for t in tensors], 1.0 if op == "all" else 0.0)
        if op == "mean":
            count = padded([torch.ones_like(t) for t in tensors]).sum(
                [0, *[d + 1 for d in element_dims]], keepdim=keepdim
            )
            result = source.sum([0, *[d + 1 for d in element_dims]], keepdim=keepdim) / count
        else:
            result = dense_reduce(source, op, [0, *[d + 1 for d in element_dims]], keepdim)
        return result.movedim(0, 1) if keepdim and not batch_first else result
    results = [dense_reduce(t, op, element_dims, keepdim) for t in tensors]
    return torch.stack(results) if len({r.shape for r in results}) == 1 else results


@given(ragged_batches(max_rank=3, allow_empty=False), st.sampled_from(OPS), st.booleans(), st.booleans(), st.data())
def test_reductions_match_the_reference(tensors, op, batch_first, keepdim, data):
    tensors = [t.abs() + 0.5 if op == "prod" else t for t in tensors]
    nested = NestedTensor(tensors, batch_first=batch_first)
    ndim = nested.dim()
    dims = sorted(data.draw(st.sets(st.integers(0, ndim - 1), min_size=1, max_size=ndim)))
    with forbid_slow_paths():
        result = call(nested, op, dims, keepdim)
        full = call(nested, op, None)
    reference = expected(tensors, op, dims, batch_first, keepdim)
    if isinstance(reference, list):
        assert isinstance(result, NestedTensor) and len(result) == len(reference)
        for got, want in zip(result, reference):
            torch.testing.assert_close(got, want.to(got.dtype))
    else:
        assert not isinstance(result, NestedTensor)
        torch.testing.assert_close(result, reference.to(result.dtype), equal_nan=True)
    torch.testing.assert_close(full, expected(tensors, op, list(range(ndim)), True, False).to(full.dtype))


def test_integer_and_dtype_semantics():
    nested = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
    assert nested.sum().dtype == torch.int64 and nested.sum(dtype=torch.float32).dtype == torch.float32
    assert nested.amax(dim=1).tolist() == [3, 5] and nested.amin().item() == 1
    assert nested.max() == 5 and nested.min() == 1
    assert nested.prod(dim=0).tolist() == [6, 20]
    with pytest.raises(RuntimeError, match=r"mean\(\): could not infer output dtype"):
        nested.mean()
    assert nested.mean(dtype=torch.float64).item() == 3.0


def test_empty_elements_reduce_to_the_identity():
    nested = NestedTensor([torch.ones(0), torch.ones(2)])
    assert nested.sum(dim=0).tolist() == [0.0, 2.0]
    means = nested.mean(dim=0)
    assert means.isnan()[0] and means[1] == 1.0


def test_reductions_are_differentiable():
    first = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    second = torch.tensor([4.0, 5.0], requires_grad=True)
    nested = NestedTensor(first, second)
    (nested.mean(dim=1).sum() + nested.amax(dim=0).sum()).backward()
    assert torch.allclose(first.grad, torch.tensor([1 / 3, 1 / 3, 1 / 3 + 1]))
    assert torch.allclose(second.grad, torch.tensor([0.5, 1.5]))


def test_equal_and_allclose():
    nested = NestedTensor([torch.ones(2, 3), torch.zeros(1, 3)])
    assert torch.equal(nested, nested.clone())
    assert not torch.equal(nested, NestedTensor([torch.ones(2, 3), torch.ones(1, 3)]))
    assert not torch.equal(nested, NestedTensor([torch.ones(1, 3), torch.zeros(2, 3)]))
    permuted = NestedTensor([torch.ones(3, 2), torch.zeros(3, 1)]).transpose(1, 2)
    assert torch.equal(permuted, NestedTensor([torch.ones(2, 3), torch.zeros(1, 3)]))
    assert torch.equal(nested, nested.tensor)
    assert torch.allclose(nested, nested + 1e-9) and not torch.allclose(nested, nested + 1)
