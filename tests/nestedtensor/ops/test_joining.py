import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops.joining import align_packings

from ..harness import assert_close_elements, check_op
from ..strategies import assert_elements, ragged_batches
from ._paths import check_both_paths


def _resized(tensors, dim: int, data) -> list[torch.Tensor]:
    """Tensors shaped like ``tensors`` except along ``dim``, where every element gets a drawn size."""
    fixed = data.draw(st.booleans())  # the same size in every element (then the dim may pack as static)
    size = data.draw(st.integers(0, 3))
    shapes = [(*t.shape[:dim], size if fixed else data.draw(st.integers(0, 3)), *t.shape[dim + 1 :]) for t in tensors]
    return [torch.randn(shape) for shape in shapes]


def _aligned(*batches) -> bool:
    return align_packings([NestedTensor(batch) for batch in batches]) is not None


@given(ragged_batches(), st.data())
def test_cat_along_an_element_dim_joins_every_element(tensors, data):
    dim = data.draw(st.integers(0, tensors[0].dim() - 1))
    others = _resized(tensors, dim, data)
    check_both_paths(
        lambda a, b: torch.cat([a, b], dim + 1),
        [tensors, others],
        lambda a, b: torch.cat([a, b], dim),
        packed=_aligned(tensors, others),
    )


@given(ragged_batches(), st.data())
def test_stack_adds_an_element_dim(tensors, data):
    dim = data.draw(st.integers(0, tensors[0].dim()))
    others = [torch.randn(t.shape) for t in tensors]
    check_op(lambda a, b: torch.stack([a, b], dim + 1), [tensors, others], lambda a, b: torch.stack([a, b], dim))


def test_stack_at_the_batch_dim_stacks_inside_elements():
    tensors = [torch.randn(3, 2), torch.randn(5, 2)]
    check_op(lambda a, b: torch.stack([a, b]), [tensors, tensors], lambda a, b: torch.stack([a, b]))
    with pytest.raises(ValueError, match="equal element shapes"):
        torch.stack([NestedTensor(tensors), NestedTensor([torch.randn(3, 2), torch.randn(4, 2)])])


@st.composite
def _batches_of_one_rank(draw) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two ragged batches whose elements share a rank: the second, drawn of at most the first's rank, gets
    size-1 dims at drawn places to match."""
    first = draw(ragged_batches())
    rank = first[0].dim()
    second = draw(ragged_batches(max_rank=rank))
    missing = rank - second[0].dim()
    places = draw(st.lists(st.integers(0, rank - 1), min_size=missing, max_size=missing, unique=True))
    for place in sorted(places):  # in increasing order each lands where the final shape has it
        second = [t.unsqueeze(place) for t in second]
    return first, second


@given(_batches_of_one_rank(), st.booleans())
def test_cat_along_the_batch_dim_concatenates_batches(batches, batch_first):
    first, second = batches
    sources = [[t.clone().requires_grad_() for t in batch] for batch in (first, second)]
    nested = [NestedTensor(batch, batch_first=batch_first) for batch in sources]
    aligned = align_packings(nested) is not None
    with forbid_slow_paths() if aligned else torch.enable_grad():
        joined = torch.cat(nested, dim=0 if batch_first else 1)
    assert joined.batch_first == batch_first
    assert_elements([t.detach() for t in joined.unbind(0 if batch_first else 1)], first + second)
    if joined.numel():
        (joined.concat * 2).sum().backward()
        for source in sources[0] + sources[1]:
            assert source.grad is None or torch.equal(source.grad, torch.full_like(source, 2.0))


def test_batches_packed_the_same_way_join_with_one_cat():
    sequences = NestedTensor([torch.randn(3, 4), torch.randn(5, 4)])
    more = NestedTensor([torch.randn(2, 4)])
    uniform = NestedTensor([torch.randn(4, 3), torch.randn(4, 3)]).transpose(1, 2)  # any packing: dense inside
    with forbid_slow_paths():
        joined = torch.cat([sequences, more, torch.randn(2, 6, 4)])
        columns = torch.cat([sequences.transpose(1, 2), uniform])
    assert [tuple(t.shape) for t in joined] == [(3, 4), (5, 4), (2, 4), (6, 4), (6, 4)]
    assert [tuple(t.shape) for t in columns] == [(4, 3), (4, 5), (3, 4), (3, 4)]
    rows_and_columns = torch.cat([sequences, NestedTensor([torch.randn(3, 2), torch.randn(3, 5)])])  # slow path
    assert [tuple(t.shape) for t in rows_and_columns] == [(3, 4), (5, 4), (3, 2), (3, 5)]


def test_cat_of_a_dense_batch_follows_batch_first():
    nested = NestedTensor([torch.randn(3, 2)], batch_first=False)
    dense = torch.randn(4, 2, 2)  # (N, B, C)
    joined = torch.cat([nested, dense], dim=1)
    assert_elements(joined, [nested[0], dense[:, 0], dense[:, 1]])
    with pytest.raises(ValueError, match="dense tensor of 3 dims"):
        torch.cat([NestedTensor([torch.randn(3, 2)]), torch.randn(2, 2)])


def test_errors_name_what_does_not_line_up():
    a = NestedTensor([torch.randn(3, 2), torch.randn(4, 2)])
    with pytest.raises(ValueError, match=r"batch_first, padding_value, mask_value.*tensors\[1\] has \(True, 1\.0"):
        torch.cat([a, NestedTensor([torch.randn(1, 2)], padding_value=1.0)])
    with pytest.raises(ValueError, match="elements of one rank"):
        torch.cat([a, NestedTensor([torch.randn(2)])])
    with pytest.raises(ValueError, match=r"one batch size, got \[2, 1\]"):
        torch.cat([a, NestedTensor([torch.randn(3, 2)])], dim=1)
    with pytest.raises(ValueError, match="sizes of element 1 must match except in element dim 0"):
        torch.cat([a, NestedTensor([torch.randn(3, 2), torch.randn(4, 3)])], dim=1)
    with pytest.raises(ValueError, match="every input to be a NestedTensor"):
        torch.cat([a, torch.randn(2, 4, 2)], dim=1)


def test_gradients_reach_every_input():
    first = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    second = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    third = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)

    def join(a, b, c):
        left, right = NestedTensor([a, b]), NestedTensor([c, b * 2])
        pieces = [
            torch.cat([left, right], 1),
            torch.cat([left, right], 2),
            torch.stack([left, left]),
            torch.cat([left, right]),
        ]
        return torch.cat([piece.concat.flatten() for piece in pieces])

    assert torch.autograd.gradcheck(join, (first, second, third))


def test_ragged_join_index_interleaves_rows():
    a = NestedTensor([torch.arange(3.0).view(3, 1), torch.arange(2.0).view(2, 1)])
    b = NestedTensor([torch.arange(10.0, 11.0).view(1, 1), torch.arange(20.0, 23.0).view(3, 1)])
    joined = torch.cat([a, b], 1)
    assert_close_elements(
        list(joined),
        [torch.tensor([[0.0], [1.0], [2.0], [10.0]]), torch.tensor([[0.0], [1.0], [20.0], [21.0], [22.0]])],
        0,
        0,
    )
