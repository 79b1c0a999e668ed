import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from danling.tensors import NestedTensor

from ..harness import check_op
from ..strategies import ragged_batches
from ._paths import check_both_paths


def _dims(data, rank: int, min_size: int = 1) -> list[int]:
    return data.draw(st.lists(st.integers(0, rank - 1), min_size=min_size, max_size=rank, unique=True))


def _permuted(data, rank: int) -> list[int]:
    """An element permutation applied before the op, so permuted packings are covered too."""
    return data.draw(st.permutations(range(rank)))


@given(ragged_batches(), st.data())
def test_flip_reverses_every_element_in_one_gather(tensors, data):
    rank = tensors[0].dim()
    order, dims = _permuted(data, rank), _dims(data, rank)
    check_op(
        lambda x: x.permute(0, *(d + 1 for d in order)).flip([d + 1 for d in dims]),
        [tensors],
        lambda e: e.permute(order).flip(dims),
    )


@given(ragged_batches(), st.data())
def test_roll_wraps_inside_every_element(tensors, data):
    rank = tensors[0].dim()
    order, dims = _permuted(data, rank), _dims(data, rank)
    shifts = data.draw(st.lists(st.integers(-6, 6), min_size=len(dims), max_size=len(dims)))
    check_op(
        lambda x: x.permute(0, *(d + 1 for d in order)).roll(shifts, [d + 1 for d in dims]),
        [tensors],
        lambda e: e.permute(order).roll(shifts, dims),
    )


@given(ragged_batches(), st.integers(-7, 7))
def test_roll_without_dims_rolls_each_flattened_element(tensors, shift):
    check_both_paths(lambda x: x.roll(shift), [tensors], lambda e: e.roll(shift))


def test_roll_without_dims_on_a_permuted_layout():
    tensors = [torch.randn(3, 2), torch.randn(4, 2)]
    check_both_paths(lambda x: x.transpose(1, 2).roll(3), [tensors], lambda e: e.T.roll(3))


@given(ragged_batches(), st.data())
def test_rot90_is_a_flip_and_a_free_transpose(tensors, data):
    rank = tensors[0].dim()
    assume(rank >= 2)
    first, second = data.draw(st.lists(st.integers(0, rank - 1), min_size=2, max_size=2, unique=True))
    k = data.draw(st.integers(-5, 5))
    check_op(
        lambda x: torch.rot90(x, k, (first + 1, second + 1)), [tensors], lambda e: torch.rot90(e, k, (first, second))
    )


def test_rot90_defaults_to_the_first_two_element_dims():
    tensors = [torch.randn(3, 4, 2), torch.randn(5, 4, 2)]
    check_op(lambda x: x.rot90(), [tensors], lambda e: e.rot90())
    nested = NestedTensor(tensors)
    with pytest.raises(ValueError, match="Cannot rotate along the batch dimension"):
        nested.rot90(1, (0, 1))
    with pytest.raises(RuntimeError, match="expected rotation dims to be different"):
        nested.rot90(1, (1, 1))
    with pytest.raises(RuntimeError, match="expected total dims >= 2"):
        NestedTensor([torch.randn(3), torch.randn(2)]).rot90()


def test_the_batch_dim_reorders_elements():
    nested = NestedTensor([[1, 2, 3], [4, 5], [6]])
    assert nested.flip(0).tolist() == [[6], [4, 5], [1, 2, 3]]
    assert nested.flip([0, 1]).tolist() == [[6], [5, 4], [3, 2, 1]]
    assert nested.roll(1, 0).tolist() == [[6], [1, 2, 3], [4, 5]]
    assert nested.roll((-1, 1), (0, 1)).tolist() == [[5, 4], [6], [3, 1, 2]]
    assert list(reversed(nested)) and reversed(nested).tolist() == [[6], [4, 5], [1, 2, 3]]
    sequence_first = NestedTensor([[1, 2, 3], [4, 5]], batch_first=False)
    assert sequence_first.flip(1).tolist() == [[4, 5], [1, 2, 3]]
    assert sequence_first.flip(0).tolist() == [[3, 2, 1], [5, 4]]


def test_roll_needs_one_shift_per_dim():
    nested = NestedTensor([torch.randn(3, 2), torch.randn(4, 2)])
    with pytest.raises(RuntimeError, match="shifts and dimensions must align"):
        nested.roll((1, 2), (1,))
    with pytest.raises(RuntimeError, match="need dims"):
        nested.roll((1, 2))


def test_the_row_index_is_cached_per_layout():
    nested = NestedTensor([torch.randn(3, 2), torch.randn(4, 2)])
    first = nested.flip(1)
    cache = dict(nested._layout._device_cache)
    second = (nested * 2).flip(1)  # same layout object, same index
    assert dict(nested._layout._device_cache).keys() == cache.keys()
    assert torch.equal(second.concat, first.concat * 2)


def test_gradcheck():
    first = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    second = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)

    def reorder(a, b):
        nested = NestedTensor([a, b])
        return torch.cat(
            [
                nested.flip([1, 3]).concat.flatten(),
                nested.roll((2, 1), (1, 2)).concat.flatten(),
                nested.rot90(1, (1, 2)).concat.flatten(),
                nested.roll(-3).concat.flatten(),
            ]
        )

    assert torch.autograd.gradcheck(reorder, (first, second))
