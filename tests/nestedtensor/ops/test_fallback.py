import pytest
import torch

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops._fallback import per_element_fallback, translate_dim_arguments

from ..strategies import assert_elements

aten = torch.ops.aten


@pytest.fixture
def tensors():
    return [torch.randn(3, 4), torch.randn(5, 4)]


def test_unhandled_ops_run_per_element_with_translated_dims(tensors):
    nested = NestedTensor(tensors)
    assert_elements(torch.cumsum(nested, 1), [t.cumsum(0) for t in tensors])
    assert_elements(torch.flip(nested, [2]), [t.flip(1) for t in tensors])
    assert_elements(nested.diagonal(dim1=1, dim2=2), [t.diagonal(dim1=0, dim2=1) for t in tensors])
    sequence_first = NestedTensor(tensors, batch_first=False)
    assert_elements(torch.cumsum(sequence_first, 0), [t.cumsum(0) for t in tensors])
    assert_elements(torch.cumsum(sequence_first, -1), [t.cumsum(1) for t in tensors])


def test_translate_dim_arguments_uses_the_schema(tensors):
    nested = NestedTensor(tensors)
    args, kwargs = translate_dim_arguments(aten.narrow.default, nested, (nested, 2, 1, 2), {})
    assert args[1:] == (1, 1, 2)  # only ``dim`` is a dim; start and length are kept
    _, kwargs = translate_dim_arguments(aten.flip.default, nested, (nested,), {"dims": [1, -1]})
    assert kwargs == {"dims": [0, 1]}
    with pytest.raises(ValueError, match="dim=0, which includes the batch dimension"):
        torch.kthvalue(nested, 1, 0)


def test_tuple_and_scalar_results(tensors):
    nested = NestedTensor(tensors)
    values, indices = torch.sort(nested, dim=1)
    for element, sorted_values, sorted_indices in zip(tensors, values, indices):
        expected = element.sort(dim=0)
        assert torch.equal(sorted_values, expected.values) and torch.equal(sorted_indices, expected.indices)
    scalars = NestedTensor([torch.tensor([2.0]), torch.tensor([3.0])])
    assert per_element_fallback(aten._local_scalar_dense.default, (scalars,), {}) == [2.0, 3.0]


def test_in_place_ops_write_through_element_views(tensors):
    nested = NestedTensor(tensors)
    values = nested._values
    assert nested.cumsum_(1) is nested
    assert nested._values is values
    assert_elements(nested, [t.cumsum(0) for t in tensors])


def test_operands_must_have_one_batch_size(tensors):
    first, second = NestedTensor(tensors), NestedTensor(tensors[:1])
    with pytest.raises(ValueError, match=r"batch length mismatch between operands of aten\.atan2\.default: 2 vs 1"):
        per_element_fallback(aten.atan2.default, (first, second), {})


def test_mismatched_layouts_broadcast_per_element():
    left = NestedTensor([torch.ones(3), torch.ones(2)])
    right = NestedTensor([torch.tensor([2.0]), torch.tensor([3.0])])
    assert (left * right).tolist() == [[2.0, 2.0, 2.0], [3.0, 3.0]]


def test_empty_batch_stays_empty():
    empty = NestedTensor([torch.ones(2)])[[]]
    result = torch.cumsum(empty, 1)
    assert isinstance(result, NestedTensor) and len(result) == 0


def test_fallback_is_differentiable_and_guarded(tensors):
    sources = [t.clone().requires_grad_() for t in tensors]
    torch.kthvalue(NestedTensor(sources), 1, 1).values.sum().backward()
    for source in sources:
        assert torch.equal(source.grad, (source == source.min(0).values).float())
    with forbid_slow_paths(), pytest.raises(RuntimeError, match=r"ran per element: aten\.kthvalue\.default"):
        torch.kthvalue(NestedTensor(tensors), 1, 1)
