import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops.reshape import view_shapes
from danling.tensors.ops.shape import permute_elements

from ..strategies import assert_elements, ragged_batches


@given(ragged_batches(), st.data())
def test_permuting_element_dims_never_copies(tensors, data):
    nested = NestedTensor(tensors)
    rank = tensors[0].dim()
    order = data.draw(st.permutations(range(rank)))
    with forbid_slow_paths():
        permuted = nested.permute(0, *(d + 1 for d in order))
        padded = permuted.tensor
    assert permuted._values is nested._values
    assert_elements(permuted, [t.permute(*order) for t in tensors])
    assert padded.shape == (len(tensors), *(max(t.shape[d] for t in tensors) for d in order))
    assert_elements(permuted.contiguous(), [t.permute(*order) for t in tensors])
    assert_elements(permute_elements(nested, order), permuted)


def test_transpose_swapaxes_movedim_and_errors():
    tensors = [torch.randn(2, 3, 4), torch.randn(5, 3, 1)]
    nested = NestedTensor(tensors)
    assert_elements(nested.transpose(1, 3), [t.transpose(0, 2) for t in tensors])
    assert_elements(nested.swapaxes(-1, -2), [t.transpose(1, 2) for t in tensors])
    assert_elements(nested.movedim(1, 3), [t.movedim(0, 2) for t in tensors])
    with pytest.raises(ValueError, match="Cannot swap the batch dimension"):
        nested.transpose(0, 2)
    batch_second = nested.transpose(0, 1)
    assert not batch_second.batch_first and batch_second._values is nested._values
    assert torch.equal(batch_second.tensor, nested.tensor.transpose(0, 1))
    assert batch_second.transpose(1, 0).batch_first
    with pytest.raises(ValueError, match="Permuting the batch dimension is not supported"):
        nested.permute(1, 0, 2, 3)
    sequence_first = NestedTensor(tensors, batch_first=False)
    assert_elements(sequence_first.transpose(0, 2), [t.transpose(0, 1) for t in tensors])
    with pytest.raises(ValueError, match="Cannot swap the batch dimension"):
        sequence_first.transpose(1, 2)


def test_unsqueeze_adds_a_static_dim_without_copy():
    tensors = [torch.randn(3, 4), torch.randn(2, 4)]
    nested = NestedTensor(tensors)
    for dim, element_dim in [(1, 0), (2, 1), (3, 2), (-1, 2)]:
        unsqueezed = nested.unsqueeze(dim)
        assert unsqueezed._values.data_ptr() == nested._values.data_ptr()
        assert_elements(unsqueezed, [t.unsqueeze(element_dim) for t in tensors])
    with pytest.raises(ValueError, match="Cannot unsqueeze at the batch dimension"):
        nested.unsqueeze(0)
    scalars = NestedTensor([torch.tensor(1.0), torch.tensor(2.0)])
    assert scalars.unsqueeze(1).tolist() == [[1.0], [2.0]]
    assert NestedTensor(tensors, batch_first=False).unsqueeze(2).shape == (3, 2, 1, 4)


def test_view_shapes_resolve_each_element():
    nested = NestedTensor([torch.zeros(3, 4), torch.zeros(2, 4)])
    assert view_shapes(nested, (-1,)) == [(12,), (8,)]
    assert view_shapes(nested, ((3, 2, 2),)) == [(3, 2, 2), (2, 2, 2)]
    assert view_shapes(nested, (2, -1, 4)) == [(3, 4), (2, 4)]  # batch dim given, dropped
    assert view_shapes(nested, (3, 4, 1)) == [(3, 4, 1), (2, 4, 1)]
    with pytest.raises(RuntimeError, match=r"shape '\[5, 3, 4\]' is invalid for input of size 12"):
        view_shapes(nested, (5, 3, 4))
    with pytest.raises(RuntimeError, match=r"shape '\[5\]' is invalid for input of size 12"):
        view_shapes(nested, (5,))


def test_view_and_reshape():
    tensors = [torch.arange(12.0).view(3, 4), torch.arange(8.0).view(2, 4)]
    nested = NestedTensor(tensors)
    with forbid_slow_paths():
        viewed = nested.view(-1)
        unflattened = nested.unflatten(-1, (2, 2))
    assert viewed._values.data_ptr() == nested._values.data_ptr()
    assert_elements(viewed, [t.reshape(-1) for t in tensors])
    assert_elements(unflattened, [t.view(-1, 2, 2) for t in tensors])
    transposed = nested.transpose(1, 2)
    assert_elements(transposed.reshape(-1), [t.T.reshape(-1) for t in tensors])
    assert_elements(torch.reshape(nested, (2, -1, 2)), [t.reshape(-1, 2) for t in tensors])
    with pytest.raises(TypeError, match=r"reshape\(\) missing"):
        nested.reshape()
    with pytest.raises(RuntimeError):
        transposed.view(-1)  # not expressible as a view of the packed values


def test_flatten_inside_elements_or_over_the_padding():
    tensors = [torch.randn(3, 2, 2), torch.randn(1, 2, 2)]
    nested = NestedTensor(tensors)
    assert_elements(nested.flatten(2), [t.flatten(1) for t in tensors])
    assert_elements(torch.flatten(nested, 1), [t.flatten() for t in tensors])
    dense = nested.flatten()
    assert not isinstance(dense, NestedTensor) and torch.equal(dense, nested.tensor.flatten())


def test_per_element_shape_ops_fall_back_with_translated_dims():
    tensors = [torch.randn(3, 1), torch.randn(2, 1)]
    nested = NestedTensor(tensors)
    assert_elements(nested.squeeze(-1), [t.squeeze(-1) for t in tensors])
    assert_elements(torch.roll(nested, 1, 1), [t.roll(1, 0) for t in tensors])
