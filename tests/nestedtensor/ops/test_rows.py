import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.tensors import NestedTensor
from danling.tensors.ops._rows import (
    from_row_major,
    gather_rows,
    ragged_sizes,
    repack,
    row_coordinates,
    row_index,
    row_major_values,
    with_ragged_rank,
)

from ..strategies import assert_elements, ragged_batches

CPU = torch.device("cpu")


@given(ragged_batches(), st.data())
def test_row_index_inverts_row_coordinates(tensors, data):
    order = data.draw(st.permutations(range(tensors[0].dim())))
    layout = NestedTensor(tensors).permute(0, *(d + 1 for d in order))._layout
    batch, coordinates = row_coordinates(layout, CPU)
    assert torch.equal(row_index(layout, batch, coordinates, CPU), torch.arange(layout.num_rows))


@given(ragged_batches(), st.data())
def test_row_major_order_round_trips_through_any_layout(tensors, data):
    order = data.draw(st.permutations(range(tensors[0].dim())))
    nested = NestedTensor(tensors).permute(0, *(d + 1 for d in order))
    flat = row_major_values(nested)
    assert torch.equal(flat, torch.cat([t.permute(order).reshape(-1) for t in tensors]))
    assert torch.equal(from_row_major(flat, nested._layout), nested._values)


def test_gather_rows_caches_the_index_on_the_source_layout():
    nested = NestedTensor([torch.arange(3), torch.arange(3, 5)])
    sizes = ragged_sizes(nested._layout, CPU)

    def reverse(batch, coordinates):
        calls.append(1)
        return [sizes[batch, 0] - 1 - coordinates[0]]

    calls = []
    first = gather_rows(nested, nested._layout, ("test-reverse",), reverse)
    second = gather_rows(nested, nested._layout, ("test-reverse",), reverse)
    assert calls == [1] and torch.equal(first, second) and first.tolist() == [2, 1, 0, 4, 3]


def test_folding_static_dims_into_rows_keeps_the_data_in_place():
    nested = NestedTensor([torch.randn(3, 4, 2), torch.randn(5, 4, 2)])
    values, layout = with_ragged_rank(nested, 2)
    assert values.data_ptr() == nested._values.data_ptr() and values.shape == (32, 2)
    assert_elements(layout.unpack(values), list(nested))
    assert with_ragged_rank(nested, 1)[1] is nested._layout


def test_repack_moves_uniform_elements_to_any_packing():
    uniform = NestedTensor([torch.randn(2, 3), torch.randn(2, 3)])
    values, layout = repack(uniform, (1, 0), 2)
    assert layout.permutation == (1, 0) and layout.ragged_rank == 2
    assert_elements(layout.unpack(values), list(uniform))
    ragged = NestedTensor([torch.randn(2, 3), torch.randn(4, 3)])
    assert repack(ragged, (1, 0), 1) is None  # rows would have to move element by element
