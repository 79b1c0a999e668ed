import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor

from ..harness import check_op
from ..strategies import assert_elements, ragged_batches
from ._paths import batch_wide, check_both_paths, one_by_one


def _dim_and_layout(tensors, data) -> tuple[int, list[int]]:
    """A dim to work along, and a permutation applied first so that every packing is covered."""
    rank = tensors[0].dim()
    return data.draw(st.integers(0, rank - 1)), data.draw(st.permutations(range(rank)))


def _permute(order):
    return (lambda x: x.permute(0, *(d + 1 for d in order))), (lambda e: e.permute(order))


@given(ragged_batches(), st.data(), st.booleans())
def test_sort_and_argsort_inside_every_element(tensors, data, descending):
    dim, order = _dim_and_layout(tensors, data)
    nested, element = _permute(order)
    check_both_paths(
        lambda x: nested(x).sort(dim + 1, descending)[0], [tensors], lambda e: element(e).sort(dim, descending)[0]
    )
    check_both_paths(
        lambda x: nested(x).sort(dim + 1, descending)[1], [tensors], lambda e: element(e).sort(dim, descending)[1]
    )
    check_both_paths(
        lambda x: nested(x).argsort(dim + 1, descending=descending),
        [tensors],
        lambda e: element(e).argsort(dim, descending=descending),
    )


@pytest.mark.parametrize("path", [batch_wide, one_by_one])
def test_sort_is_stable(path):
    ties = [torch.tensor([2, 1, 2, 1, 2]), torch.tensor([1, 1, 0])]
    for descending in (False, True):
        with path():
            values, indices = torch.sort(NestedTensor(ties), dim=1, descending=descending, stable=True)
        expected = [t.sort(descending=descending, stable=True) for t in ties]
        assert_elements(values, [e.values for e in expected])
        assert_elements(indices, [e.indices for e in expected])


@given(ragged_batches(), st.data(), st.booleans())
def test_topk_of_every_element(tensors, data, largest):
    dim, order = _dim_and_layout(tensors, data)
    nested, element = _permute(order)
    k = data.draw(st.integers(0, min(element(t).shape[dim] for t in tensors)))
    for part in range(2):
        check_both_paths(
            lambda x, p=part: nested(x).topk(k, dim + 1, largest)[p],
            [tensors],
            lambda e, p=part: element(e).topk(k, dim, largest)[p],
        )


def test_topk_needs_k_entries_in_every_element():
    nested = NestedTensor([torch.randn(4), torch.randn(2)])
    with pytest.raises(RuntimeError, match="selected index k out of range: k=3 but an element has 2 entries"):
        nested.topk(3)


@given(ragged_batches(), st.data())
def test_scans_restart_at_every_element(tensors, data):
    dim, order = _dim_and_layout(tensors, data)
    nested, element = _permute(order)
    for name in ("cumsum", "cumprod", "logcumsumexp"):
        check_both_paths(
            lambda x, n=name: getattr(nested(x), n)(dim + 1), [tensors], lambda e, n=name: getattr(element(e), n)(dim)
        )
    for name in ("cummax", "cummin"):
        for part in range(2):
            check_both_paths(
                lambda x, n=name, p=part: getattr(nested(x), n)(dim + 1)[p],
                [tensors],
                lambda e, n=name, p=part: getattr(element(e), n)(dim)[p],
            )


def test_scans_of_integers_and_special_values():
    integers = [torch.tensor([3, 1, 2], dtype=torch.int32), torch.tensor([5, 4], dtype=torch.int32)]
    check_both_paths(lambda x: x.cumsum(1), [integers], lambda e: e.cumsum(0), grad=False)
    check_both_paths(
        lambda x: x.cumsum(1, dtype=torch.int32), [integers], lambda e: e.cumsum(0, dtype=torch.int32), grad=False
    )
    check_both_paths(lambda x: x.cumprod(1), [integers], lambda e: e.cumprod(0), grad=False)
    special = [torch.tensor([1.0, float("nan"), 3.0, 3.0]), torch.tensor([2.0, 2.0, float("nan"), float("nan")])]
    for name in ("cummax", "cummin"):
        for part in range(2):
            check_both_paths(
                lambda x, n=name, p=part: getattr(x, n)(1)[p], [special], lambda e, n=name, p=part: getattr(e, n)(0)[p]
            )


def test_long_sequences_sum_exactly():
    sequences = [torch.full((600,), 0.1), torch.arange(700, dtype=torch.float32)]
    check_both_paths(lambda x: x.cumsum(1), [sequences], lambda e: e.cumsum(0), grad=False)


def test_batch_dim_has_no_order():
    nested = NestedTensor([torch.randn(3), torch.randn(2)])
    for op in (lambda x: x.sort(0), lambda x: x.cumsum(0), lambda x: x.topk(1, 0), lambda x: torch.msort(x)):
        with pytest.raises(ValueError, match="along the batch dimension of a NestedTensor"):
            op(nested)


def test_searchsorted_and_bucketize_against_dense_boundaries():
    boundaries = torch.tensor([-1.0, 0.0, 1.0])
    tensors = [torch.randn(3, 2), torch.randn(5, 2)]
    check_op(
        lambda x: torch.searchsorted(boundaries, x), [tensors], lambda e: torch.searchsorted(boundaries, e), grad=False
    )
    check_op(
        lambda x: torch.bucketize(x, boundaries, right=True),
        [tensors],
        lambda e: torch.bucketize(e, boundaries, right=True),
        grad=False,
    )
    sorted_sequences = [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([5.0])]
    queries = [torch.tensor([0.5, 1.5]), torch.tensor([4.0, 6.0, 7.0])]
    check_op(torch.searchsorted, [sorted_sequences, queries], grad=False, packed=False)


def test_gradcheck():
    first = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    second = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def ordered(a, b):
        nested = NestedTensor([a, b])  # both dims ragged; dim 1 is not the last ragged dim of the rows
        pieces = [nested.sort(1)[0], nested.sort(2, descending=True)[0], nested.topk(1, 1)[0], nested.cumsum(1)]
        pieces += [nested.cumprod(2), nested.logcumsumexp(1), nested.cummax(1)[0], nested.cummin(2)[0]]
        return torch.cat([piece.concat.flatten() for piece in pieces])

    assert torch.autograd.gradcheck(ordered, (first, second))
