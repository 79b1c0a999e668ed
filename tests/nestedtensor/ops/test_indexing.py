import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops.indexing import select_elements

from ..strategies import assert_elements, ragged_batches


def batch_indices(size: int):
    """Strategies for every way of picking elements: ints, slices, lists, bool lists, index tensors."""
    ints = st.integers(-size, size - 1)
    return st.one_of(
        ints,
        st.builds(
            slice,
            st.none() | st.integers(-size - 1, size + 1),
            st.none() | st.integers(-size - 1, size + 1),
            st.none() | st.integers(1, 3),
        ),
        st.lists(ints, max_size=6),
        st.lists(st.booleans(), min_size=size, max_size=size),
        st.lists(ints, min_size=1, max_size=6).map(torch.tensor),
        st.lists(st.booleans(), min_size=size, max_size=size).map(lambda m: torch.tensor(m, dtype=torch.bool)),
    )


def reference_select(tensors, index):
    if isinstance(index, torch.Tensor):
        index = index.tolist()
    if isinstance(index, int):
        return tensors[index]
    if isinstance(index, slice):
        return tensors[index]
    if index and all(isinstance(i, bool) for i in index):
        return [t for t, keep in zip(tensors, index) if keep]
    return [tensors[i] for i in index]


@given(ragged_batches(), st.data())
def test_selecting_elements_agrees_with_the_list(tensors, data):
    nested = NestedTensor(tensors)
    index = data.draw(batch_indices(len(tensors)))
    with forbid_slow_paths():
        result = nested[index]
    expected = reference_select(tensors, index)
    if isinstance(index, int):
        assert torch.equal(result, expected)
    else:
        assert isinstance(result, NestedTensor)
        assert_elements(result._layout.unpack(result._values), expected)


@given(ragged_batches(max_rank=3, allow_empty=False), st.data())
def test_tuple_indices_apply_inside_every_element(tensors, data):
    nested = NestedTensor(tensors)
    rank = tensors[0].dim()
    inner = tuple(
        data.draw(st.one_of(st.just(slice(None)), st.builds(slice, st.integers(0, 2), st.none() | st.integers(1, 4))))
        for _ in range(data.draw(st.integers(1, rank)))
    )
    result = nested[(slice(None), *inner)]
    assert_elements(result, [t[inner] for t in tensors])
    first = data.draw(st.integers(0, len(tensors) - 1))
    assert torch.equal(nested[(first, *inner)], tensors[first][inner])


def test_static_dim_indices_run_on_the_packed_values():
    tensors = [torch.randn(3, 4, 5), torch.randn(2, 4, 5)]
    nested = NestedTensor(tensors)
    with forbid_slow_paths():
        channel = nested[:, :, 1]
        window = nested[..., 1:3]
    assert_elements(channel, [t[:, 1] for t in tensors])
    assert_elements(window, [t[..., 1:3] for t in tensors])
    with pytest.raises(IndexError, match="index 9 is out of bounds for dimension 1 with size 4"):
        nested[:, :, 9]


def test_contiguous_slices_are_views():
    nested = NestedTensor([torch.ones(2), torch.ones(3), torch.ones(1)])
    middle = nested[1:3]
    assert middle._values.data_ptr() == nested._values.data_ptr() + 2 * nested._values.element_size()
    middle.mul_(5)
    assert nested.tolist() == [[1.0, 1.0], [5.0, 5.0, 5.0], [5.0]]
    assert len(select_elements(nested, range(0))) == 0


def test_tensor_and_nested_indices():
    tensors = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    nested = NestedTensor(tensors)
    assert nested[torch.tensor(1)].tolist() == [4, 5]
    with forbid_slow_paths():
        selected = nested[nested > 2]
    assert selected.tolist() == [[3], [4, 5]]
    padded_mask = torch.tensor([[True, False, True], [False, True, False]])
    assert nested[padded_mask].tolist() == [[1, 3], [5]]
    assert torch.equal(nested[torch.tensor([0, 1]), torch.tensor([2, 0])], torch.tensor([3, 4]))
    other_layout = NestedTensor([torch.tensor([True]), torch.tensor([False, True])])
    with pytest.raises(ValueError, match="batch length mismatch between self and index: self=2, index=1"):
        nested[other_layout[:1]]
    dense = torch.arange(6).view(2, 3)
    assert torch.equal(dense[nested > 2], dense[(nested > 2).tensor])


def test_index_errors():
    nested = NestedTensor([[1, 2], [3]])
    with pytest.raises(IndexError, match="index 2 is out of range for NestedTensor with 2 elements"):
        nested[2]
    with pytest.raises(IndexError, match="Boolean index has length 3 but batch size is 2"):
        nested[[True, False, True]]
    with pytest.raises(ValueError, match="Unsupported index type <class 'NoneType'>"):
        nested[None]
    with pytest.raises(ValueError, match="Unsupported index type <class 'str'>"):
        nested["a"]
    with pytest.raises(ValueError, match="Unsupported batch index type <class 'NoneType'>"):
        nested[None, 0]
    with pytest.raises(IndexError, match="must be long, int, byte or bool"):
        nested[torch.tensor([0.0])]
    assert nested[()] is nested


class TestAssignment:
    def test_int_assignment_in_place_or_reshaping(self):
        nested = NestedTensor([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])])
        values = nested._values
        nested[0] = [6, 7, 8]  # same shape: written into the packed buffer, cast to float
        assert nested._values is values and nested.tolist()[0] == [6.0, 7.0, 8.0]
        nested[-1] = torch.tensor([9, 10, 11, 12])
        assert nested.shape == (2, 4) and nested.tolist() == [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]]
        nested[0] = NestedTensor([[1.0]])
        assert nested.tolist()[0] == [1.0]
        with pytest.raises(ValueError, match="value must have a single tensor, but got 2"):
            nested[0] = nested
        with pytest.raises(ValueError, match="Assigned tensor ndim must match existing ndim 1, but got 2"):
            nested[0] = torch.ones(1, 1)
        with pytest.raises(IndexError, match="index 5 is out of range"):
            nested[5] = torch.ones(1)

    def test_assignment_that_changes_the_packing(self):
        nested = NestedTensor([torch.ones(2, 3), torch.ones(2, 4)])  # dim 0 static
        nested[1] = torch.zeros(3, 4)
        assert nested._permutation == (0, 1) and [t.shape for t in nested] == [(2, 3), (3, 4)]
        assert nested.tolist()[1] == [[0.0] * 4] * 3

    def test_slice_and_list_assignment(self):
        nested = NestedTensor([torch.zeros(2), torch.zeros(3), torch.zeros(1)])
        nested[1:] = NestedTensor([torch.ones(3), torch.full((1,), 2.0)])
        assert nested.tolist() == [[0.0, 0.0], [1.0, 1.0, 1.0], [2.0]]
        nested[[0, 2]] = 7
        assert nested.tolist() == [[7.0, 7.0], [1.0, 1.0, 1.0], [7.0]]
        nested[[True, False, True]] = [[1, 2, 3, 4], [5]]
        assert nested.tolist() == [[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0], [5.0]]
        nested[:2] = torch.full((2, 1), 3.0)  # a stack of elements
        assert nested.tolist() == [[3.0], [3.0], [5.0]]
        with pytest.raises(ValueError, match="Size mismatch: tried to assign 2 values to 3 indices"):
            nested[:] = NestedTensor([[1.0], [2.0]])

    def test_assignment_inside_elements(self):
        nested = NestedTensor([torch.zeros(3, 2), torch.zeros(1, 2)])
        nested[:, 0] = 1.0  # ragged dim: per element, through views of the values
        nested[:, :, 1] = 2.0  # static dim: on the packed values at once
        assert nested.tolist() == [[[1.0, 2.0], [0.0, 2.0], [0.0, 2.0]], [[1.0, 2.0]]]
        nested[0, 2] = torch.tensor([5.0, 6.0])
        assert nested.tolist()[0][2] == [5.0, 6.0]
        nested[[1], 0] = NestedTensor([torch.tensor([8.0, 9.0])])
        assert nested.tolist()[1] == [[8.0, 9.0]]
        nested[(0,)] = torch.zeros(3, 2)
        assert nested.tolist()[0] == [[0.0, 0.0]] * 3
        with pytest.raises(ValueError, match="Unsupported first index type <class 'NoneType'>"):
            nested[None, 0] = 1.0

    def test_masked_assignment_and_errors(self):
        nested = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
        nested[nested > 2] = 0
        assert nested.tolist() == [[1, 2, 0], [0, 0]]
        with pytest.raises(ValueError, match="boolean mask of the same layout"):
            nested[NestedTensor([[True], [False]])] = 1
        with pytest.raises(ValueError, match="Unsupported index type <class 'float'>"):
            nested[0.5] = 1

    def test_assignment_is_differentiable(self):
        source = torch.ones(3, requires_grad=True)
        nested = NestedTensor([torch.zeros(3), torch.zeros(2)])
        nested[0] = source * 2
        nested.sum().backward()
        assert source.grad.tolist() == [2.0, 2.0, 2.0]
