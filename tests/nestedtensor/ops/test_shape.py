import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops.shape import permute_elements

from ..harness import check_op
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


@given(ragged_batches(), st.data())
def test_unsqueeze_then_squeeze_round_trips_without_copy(tensors, data):
    rank = tensors[0].dim()
    dim = data.draw(st.integers(0, rank))
    check_op(lambda x: x.unsqueeze(dim + 1), [tensors], lambda e: e.unsqueeze(dim))
    check_op(lambda x: x.unsqueeze(dim + 1).squeeze(dim + 1), [tensors], lambda e: e)
    unsqueezed = [t.unsqueeze(dim) for t in tensors]
    ones = tuple(d for d in range(rank + 1) if all(t.shape[d] == 1 for t in unsqueezed))  # in every element
    check_op(lambda x: x.unsqueeze(dim + 1).squeeze(), [tensors], lambda e: e.unsqueeze(dim).squeeze(ones))
    nested = NestedTensor(tensors)
    assert nested.unsqueeze(dim + 1).squeeze(dim + 1)._values.data_ptr() == nested._values.data_ptr()


def test_squeeze_drops_dims_of_size_one_in_every_element():
    tensors = [torch.randn(1, 3, 1), torch.randn(1, 5, 1)]
    check_op(lambda x: x.squeeze(), [tensors], lambda e: e.squeeze())
    check_op(lambda x: x.squeeze((1, 3)), [tensors], lambda e: e.squeeze((0, 2)))
    check_op(lambda x: x.squeeze(2), [tensors], lambda e: e.squeeze(1))  # size != 1: unchanged, as in torch
    ones = NestedTensor([torch.randn(1, 1), torch.randn(1, 1)])
    assert ones.squeeze().shape == (2,) and ones.squeeze().tolist() == [t.item() for t in ones]
    mixed = NestedTensor([torch.randn(1, 3), torch.randn(2, 3)])
    with pytest.raises(ValueError, match="size 1 in 1 of 2 elements only"):
        mixed.squeeze(1)
    with pytest.raises(ValueError, match="Cannot squeeze the batch dimension"):
        NestedTensor([torch.randn(3)]).squeeze(0)


def test_expand_size_one_dims():
    tensors = [torch.randn(3, 1), torch.randn(5, 1)]
    result = check_op(lambda x: x.expand(-1, -1, 4), [tensors], lambda e: e.expand(-1, 4))
    assert result._values.data_ptr() == NestedTensor(tensors)._values.data_ptr() or result._values.stride(-1) == 0
    rows = [torch.randn(1, 3), torch.randn(1, 2)]  # dim 0 has size 1 everywhere but sits in the rows
    check_op(lambda x: x.expand(2, 4, -1), [rows], lambda e: e.expand(4, -1))
    check_op(lambda x: x.expand_as(x), [tensors], lambda e: e)
    nested = NestedTensor(tensors)
    with pytest.raises(RuntimeError, match=r"expanded size of the tensor \(4\) must match the existing size \(5\)"):
        nested.expand(-1, 4, -1)
    with pytest.raises(ValueError, match="Cannot expand the batch dimension"):
        nested.expand(3, -1, -1)
    with pytest.raises(ValueError, match="one size per dim"):
        nested.expand(2, 2, 5, 1)


def test_transposed_views_of_every_element():
    tensors = [torch.randn(3, 4, dtype=torch.complex64), torch.randn(5, 4, dtype=torch.complex64)]
    check_op(lambda x: torch.Tensor.T.__get__(x), [tensors], lambda e: e.T, grad=False)
    check_op(lambda x: torch.Tensor.mT.__get__(x), [tensors], lambda e: e.mT, grad=False)
    check_op(lambda x: torch.Tensor.H.__get__(x), [tensors], lambda e: e.H, grad=False)
    check_op(lambda x: x.mH, [tensors], lambda e: e.mH, grad=False)
    with pytest.raises(RuntimeError, match=r"tensor\.H is only supported on matrices"):
        torch.Tensor.H.__get__(NestedTensor([torch.randn(2, 3, 4)]))


def test_in_place_shape_ops_change_the_layout():
    tensors = [torch.randn(3, 4), torch.randn(5, 4)]
    nested = NestedTensor(tensors)
    assert nested.t_() is nested
    assert_elements(nested, [t.t() for t in tensors])
    nested.transpose_(1, 2).unsqueeze_(1)
    assert_elements(nested, [t.unsqueeze(0) for t in tensors])
    nested.squeeze_(1)
    assert_elements(nested, tensors)
    nested.swapdims_(0, 1)
    assert not nested.batch_first and nested.shape == (5, 2, 4)
    with pytest.raises(RuntimeError, match="t_\\(\\) expects elements with <= 2 dimensions"):
        NestedTensor([torch.randn(2, 2, 2)]).t_()


def test_unbind_at_the_aten_level():
    tensors = [torch.randn(3, 2), torch.randn(5, 2)]
    nested = NestedTensor(tensors)
    elements = torch.ops.aten.unbind.int(nested, 0)
    assert_elements(elements, tensors)
    assert elements[0].data_ptr() != nested._values.data_ptr()  # copies, never views of the values
    columns = torch.ops.aten.unbind.int(nested, 2)
    assert_elements(columns[1], [t[:, 1] for t in tensors])
    with pytest.raises(NotImplementedError, match="its size varies across elements"):
        torch.ops.aten.unbind.int(nested, 1)
    with pytest.raises(NotImplementedError, match="only supports unbinding along the batch dimension"):
        nested.unbind(1)


def test_gradcheck():
    first = torch.randn(3, 1, 2, dtype=torch.float64, requires_grad=True)
    second = torch.randn(2, 1, 2, dtype=torch.float64, requires_grad=True)

    def move(a, b):
        nested = NestedTensor([a, b])
        pieces = [nested.permute(0, 3, 1, 2), nested.squeeze(2), nested.expand(-1, -1, 3, -1), nested.mT]
        return torch.cat([piece.concat.flatten() for piece in pieces])

    assert torch.autograd.gradcheck(move, (first, second))
