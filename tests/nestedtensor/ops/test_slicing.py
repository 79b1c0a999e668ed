import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor

from ..harness import check_op
from ..strategies import assert_elements, ragged_batches


def _dim_and_shortest(tensors, data):
    dim = data.draw(st.integers(0, tensors[0].dim() - 1))
    return dim, min(t.shape[dim] for t in tensors)


@given(ragged_batches(), st.data())
def test_narrow_cuts_every_element(tensors, data):
    dim, shortest = _dim_and_shortest(tensors, data)
    length = data.draw(st.integers(0, shortest))
    start = data.draw(st.integers(0, shortest - length))
    check_op(lambda x: x.narrow(dim + 1, start, length), [tensors], lambda e: e.narrow(dim, start, length))
    if length:  # a negative start counts from each element's own end
        check_op(lambda x: x.narrow(dim + 1, -length, length), [tensors], lambda e: e.narrow(dim, -length, length))


@given(ragged_batches(), st.data())
def test_slice_follows_python_rules_per_element(tensors, data):
    dim, _ = _dim_and_shortest(tensors, data)
    start = data.draw(st.none() | st.integers(-5, 5))
    end = data.draw(st.none() | st.integers(-5, 5))
    step = data.draw(st.integers(1, 3))
    index = (slice(None),) * dim + (slice(start, end, step),)
    check_op(lambda x: torch.ops.aten.slice.Tensor(x, dim + 1, start, end, step), [tensors], lambda e: e[index])


def _pieces_or_raise(op_nested, op_element, tensors):
    counts = {len(op_element(t)) for t in tensors}
    if len(counts) > 1:
        with pytest.raises(ValueError, match="different numbers of pieces"):
            op_nested(NestedTensor(tensors))
        return
    for piece in range(counts.pop()):
        check_op(lambda x, k=piece: op_nested(x)[k], [tensors], lambda e, k=piece: op_element(e)[k])


@given(ragged_batches(), st.data())
def test_split_and_chunk_per_element(tensors, data):
    dim, _ = _dim_and_shortest(tensors, data)
    size = data.draw(st.integers(1, 4))
    _pieces_or_raise(lambda x: x.split(size, dim + 1), lambda e: e.split(size, dim), tensors)
    _pieces_or_raise(lambda x: x.chunk(size, dim + 1), lambda e: e.chunk(size, dim), tensors)


@given(ragged_batches(), st.data())
def test_tensor_split_always_gives_the_same_number_of_pieces(tensors, data):
    dim, _ = _dim_and_shortest(tensors, data)
    sections = data.draw(st.integers(1, 4))
    indices = sorted(data.draw(st.lists(st.integers(0, 5), max_size=3)))
    for argument in (sections, indices):
        pieces = NestedTensor(tensors).tensor_split(argument, dim + 1)
        for piece in range(len(pieces)):
            check_op(
                lambda x, a=argument, k=piece: x.tensor_split(a, dim + 1)[k],
                [tensors],
                lambda e, a=argument, k=piece: e.tensor_split(a, dim)[k],
            )


def test_split_with_sizes_needs_sizes_adding_up_in_every_element():
    tensors = [torch.randn(3, 5), torch.randn(2, 5)]
    for piece in range(2):
        check_op(lambda x, k=piece: x.split([2, 3], 2)[k], [tensors], lambda e, k=piece: e.split([2, 3], 1)[k])
    with pytest.raises(RuntimeError, match="split_with_sizes expects split_sizes to sum exactly to 3"):
        NestedTensor(tensors).split([1, 1], 1)


def test_cuts_along_the_batch_dim_group_elements():
    nested = NestedTensor([[1], [2, 3], [4, 5, 6], [7]])
    assert [piece.tolist() for piece in nested.split(3)] == [[[1], [2, 3], [4, 5, 6]], [[7]]]
    assert [piece.tolist() for piece in nested.chunk(2)] == [[[1], [2, 3]], [[4, 5, 6], [7]]]
    assert nested.narrow(0, 1, 2).tolist() == [[2, 3], [4, 5, 6]]
    assert torch.ops.aten.slice.Tensor(nested, 0, None, None, 2).tolist() == [[1], [4, 5, 6]]
    assert [len(piece) for piece in nested.tensor_split(3)] == [2, 1, 1]


def test_narrow_errors_name_the_element_size():
    nested = NestedTensor([torch.randn(3), torch.randn(5)])
    with pytest.raises(RuntimeError, match=r"start \(1\) \+ length \(3\) exceeds dimension size \(3\)"):
        nested.narrow(1, 1, 3)
    with pytest.raises(IndexError, match="start out of range"):
        nested.narrow(1, -4, 1)
    with pytest.raises(RuntimeError, match="split_size be positive"):
        nested.split(0, 1)
    with pytest.raises(ValueError, match="slice step must be positive"):
        torch.ops.aten.slice.Tensor(nested, 1, 0, 2, 0)


@given(ragged_batches(), st.data())
def test_diff_is_two_cuts_and_a_subtraction(tensors, data):
    dim, _ = _dim_and_shortest(tensors, data)
    n = data.draw(st.integers(1, 2))
    check_op(lambda x: x.diff(n, dim + 1), [tensors], lambda e: e.diff(n, dim))


def test_diff_with_nested_or_dense_ends():
    tensors = [torch.randn(3, 2), torch.randn(5, 2)]
    ends = [torch.randn(1, 2), torch.randn(2, 2)]
    check_op(lambda x, p: x.diff(dim=1, prepend=p), [tensors, ends], lambda e, p: e.diff(dim=0, prepend=p))
    column = torch.randn(1)
    check_op(
        lambda x: x.diff(dim=1, append=column.expand(1, 2)),  # a dense end is shared by every element
        [[torch.randn(3, 2), torch.randn(3, 2)]],
        lambda e: e.diff(dim=0, append=column.expand(1, 2)),
        packed=False,
    )
    flags = NestedTensor([torch.tensor([True, False, False]), torch.tensor([True, True])])
    assert_elements(flags.diff(), [torch.tensor([True, False]), torch.tensor([False])])
    with pytest.raises(ValueError, match="Cannot diff along the batch dimension"):
        flags.diff(dim=0)


def test_gradcheck():
    first = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    second = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def cut(a, b):
        nested = NestedTensor([a, b])
        pieces = [nested.narrow(1, -2, 2), *nested.split(1, 2), *nested.chunk(2, 1), nested.diff(dim=1)]
        return torch.cat([piece.concat.flatten() for piece in pieces])

    assert torch.autograd.gradcheck(cut, (first, second))
