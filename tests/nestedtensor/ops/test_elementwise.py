import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths

from ..strategies import assert_elements, ragged_batches

UNARY = [torch.sin, torch.exp, torch.nn.functional.gelu, torch.sigmoid, lambda x: x.clamp(min=0), lambda x: -x]
BINARY = [torch.add, torch.mul, torch.maximum, torch.atan2, lambda x, y: x**2 - y, lambda x, y: x > y]


@given(ragged_batches(), st.sampled_from(UNARY), st.sampled_from(BINARY))
def test_pointwise_ops_match_per_element_results(tensors, unary, binary):
    nested = NestedTensor(tensors)
    other = NestedTensor([t.flip(0) for t in tensors])
    with forbid_slow_paths():
        unary_result = unary(nested)
        binary_result = binary(nested, other)
        scalar_result = binary(nested, torch.tensor(0.5))
    assert_elements(unary_result, [unary(t) for t in tensors], exact=False)
    assert_elements(binary_result, [binary(t, o) for t, o in zip(tensors, other)], exact=False)
    assert_elements(scalar_result, [binary(t, torch.tensor(0.5)) for t in tensors], exact=False)


@pytest.mark.parametrize("batch_first", [True, False])
def test_dense_operand_of_the_padded_shape_is_aligned(batch_first):
    tensors = [torch.arange(3.0), torch.arange(2.0)]
    nested = NestedTensor(tensors, batch_first=batch_first)
    dense = torch.full(nested.shape, 10.0)
    with forbid_slow_paths():
        result = nested + dense
    assert result.tolist() == [[10.0, 11.0, 12.0], [10.0, 11.0]]


def test_dense_operand_broadcasting_over_static_dims():
    tensors = [torch.ones(3, 2), torch.ones(1, 2)]
    nested = NestedTensor(tensors)
    bias = torch.tensor([1.0, 2.0])
    with forbid_slow_paths():
        shifted, scaled = nested + bias, nested * torch.tensor([[[3.0]]])
    assert_elements(shifted, [t + bias for t in tensors])
    assert_elements(scaled, [t * 3 for t in tensors])
    per_row = NestedTensor([torch.ones(2, 2), torch.ones(2, 1)])  # ragged last dim, static first
    column = torch.tensor([[1.0], [2.0]])
    assert_elements(per_row * column, [t * column for t in per_row])


def test_operands_that_do_not_line_up_are_rejected_per_element():
    nested = NestedTensor([torch.ones(3), torch.ones(2)])
    with pytest.raises(RuntimeError, match="must match the size"):
        nested + torch.ones(4)


def test_in_place_ops_mutate_the_values_and_return_self():
    nested = NestedTensor([torch.ones(3), torch.ones(2)])
    values = nested._values
    before = nested.tensor.clone()
    assert nested.mul_(3) is nested and nested._values is values
    nested += 1
    assert nested.tolist() == [[4.0] * 3, [4.0] * 2]
    assert not torch.equal(nested.tensor, before)
    assert torch.sigmoid_(nested) is nested
    out = NestedTensor([torch.zeros(3), torch.zeros(2)])
    assert torch.add(nested, 1, out=out) is out and out.tolist()[1] == pytest.approx([1.9820, 1.9820], abs=1e-4)


def test_comparisons_and_where():
    nested = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
    assert (nested == nested.clone()).all() and not (nested != nested).any()
    assert (nested >= 2).tolist() == [[False, True, True], [True, True]]
    picked = torch.where(nested > 2, nested, torch.tensor(0))
    assert picked.tolist() == [[0, 0, 3], [4, 5]]
    masked = nested.masked_fill(nested > 3, -1)
    assert masked.tolist() == [[1, 2, 3], [-1, -1]]


def test_copy_fill_and_zero():
    nested = NestedTensor([torch.ones(3, 2), torch.ones(1, 2)])
    nested.copy_(NestedTensor([torch.zeros(3, 2), torch.full((1, 2), 2.0)]))
    assert nested.tolist() == [[[0.0, 0.0]] * 3, [[2.0, 2.0]]]
    nested.copy_(torch.tensor([5.0, 6.0]))
    assert nested.tolist()[1] == [[5.0, 6.0]]
    nested.copy_(torch.arange(12.0).view(2, 3, 2))
    assert nested.tolist()[1] == [[6.0, 7.0]]
    transposed = NestedTensor([torch.ones(2, 3), torch.ones(2, 1)]).transpose(1, 2).contiguous()
    fresh = NestedTensor([torch.zeros(3, 2), torch.zeros(1, 2)])
    assert fresh.copy_(transposed).tolist() == transposed.tolist()
    with pytest.raises(ValueError, match="copy_ needs the same element shapes"):
        nested.copy_(NestedTensor([torch.ones(1, 2), torch.ones(1, 2)]))
    with pytest.raises(ValueError, match=r"Cannot copy a tensor of shape \(7,\)"):
        nested.copy_(torch.ones(7))
    with pytest.raises(TypeError, match=r"copy from its \.tensor instead"):
        torch.zeros(2, 3, 2).copy_(nested)
    assert nested.fill_(3).tolist()[0][0] == [3.0, 3.0]
    assert nested.zero_().sum() == 0


def test_gradients_through_pointwise_ops():
    left = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    right = torch.tensor([4.0, 5.0], requires_grad=True)
    nested = NestedTensor(left, right)
    ((nested * nested) + nested.tensor).sum().backward()
    assert left.grad.tolist() == [3.0, 5.0, 7.0] and right.grad.tolist() == [9.0, 11.0]
