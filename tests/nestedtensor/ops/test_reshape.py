import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops.reshape import view_shapes

from ..harness import check_op
from ..strategies import assert_elements, ragged_batches
from ._paths import check_both_paths


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


def test_view_of_row_major_elements_shares_the_values():
    tensors = [torch.arange(12.0).view(3, 4), torch.arange(8.0).view(2, 4)]
    nested = NestedTensor(tensors)
    with forbid_slow_paths():
        viewed = nested.view(-1)
        unflattened = nested.unflatten(-1, (2, 2))
    assert viewed._values.data_ptr() == nested._values.data_ptr()
    assert unflattened._values.data_ptr() == nested._values.data_ptr()
    assert_elements(viewed, [t.reshape(-1) for t in tensors])
    assert_elements(unflattened, [t.view(-1, 2, 2) for t in tensors])
    assert_elements(torch.reshape(nested, (2, -1, 2)), [t.reshape(-1, 2) for t in tensors])
    with pytest.raises(TypeError, match=r"reshape\(\) missing"):
        nested.reshape()
    with pytest.raises(RuntimeError):
        nested.transpose(1, 2).view(-1)  # no element of a transposed layout is a view of row-major values


@given(ragged_batches(), st.data())
def test_reshape_of_any_layout(tensors, data):
    order = data.draw(st.permutations(range(tensors[0].dim())))
    check_both_paths(
        lambda x: x.permute(0, *(d + 1 for d in order)).reshape(-1),
        [tensors],
        lambda e: e.permute(order).reshape(-1),
    )


def test_reshape_of_images_stored_channels_last():
    images = [torch.randn(3, 4, 5), torch.randn(3, 2, 6)]  # channels static, height and width ragged
    assert NestedTensor(images)._layout.permutation == (1, 2, 0)
    check_both_paths(lambda x: x.flatten(2), [images], lambda e: e.flatten(1))
    check_both_paths(lambda x: x.reshape(-1), [images], lambda e: e.reshape(-1))


@given(ragged_batches(), st.data())
def test_flatten_any_range_of_element_dims(tensors, data):
    rank = tensors[0].dim()
    start = data.draw(st.integers(0, rank - 1))
    end = data.draw(st.integers(start, rank - 1))
    check_both_paths(lambda x: x.flatten(start + 1, end + 1), [tensors], lambda e: e.flatten(start, end))


def test_flatten_of_consecutive_packed_dims_never_copies():
    tensors = [torch.randn(3, 2, 5), torch.randn(4, 2, 5)]
    nested = NestedTensor(tensors)
    for start, end in [(2, 3), (1, 2), (1, 3)]:  # static run, ragged rows with static dims, everything
        flat = nested.flatten(start, end)
        assert flat._values.data_ptr() == nested._values.data_ptr()
        assert_elements(flat, [t.flatten(start - 1, end - 1) for t in tensors])


def test_flatten_over_the_batch_dim_flattens_the_padded_tensor():
    nested = NestedTensor([torch.randn(3, 2, 2), torch.randn(1, 2, 2)])
    dense = nested.flatten()
    assert not isinstance(dense, NestedTensor) and torch.equal(dense, nested.tensor.flatten())


@given(ragged_batches(), st.data())
def test_unflatten_resolves_minus_one_per_element(tensors, data):
    rank = tensors[0].dim()
    dim = data.draw(st.integers(0, rank - 1))
    sizes = data.draw(st.sampled_from([(1, -1), (-1, 1), (-1,), (1, -1, 1)]))
    check_op(lambda x: x.unflatten(dim + 1, sizes), [tensors], lambda e: e.unflatten(dim, sizes))
    nested = NestedTensor(tensors)
    assert nested.unflatten(dim + 1, sizes)._values.data_ptr() == nested._values.data_ptr()


def test_unflatten_errors():
    nested = NestedTensor([torch.randn(6), torch.randn(5)])
    with pytest.raises(RuntimeError, match=r"don't multiply up to the size of dim 1 \(5\)"):
        nested.unflatten(1, (2, -1))
    with pytest.raises(ValueError, match="Cannot unflatten the batch dimension"):
        nested.unflatten(0, (1, 2))


def test_gradcheck():
    first = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    second = torch.randn(2, 1, 5, dtype=torch.float64, requires_grad=True)

    def regroup(a, b):
        nested = NestedTensor([a, b])
        pieces = [nested.flatten(2).reshape(-1), nested.transpose(1, 3).reshape(-1), nested.unflatten(3, (1, -1))]
        return torch.cat([piece.concat.flatten() for piece in pieces])

    assert torch.autograd.gradcheck(regroup, (first, second))
