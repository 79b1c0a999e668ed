"""Behaviours that code written against the reference documentation relies on (issue 16).

Each test names the behaviour and the module that owns it. Medians and quantiles have their own
module and test file (``ops/test_order_statistics.py``).
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors._layout import NestedLayout

from .harness import check_op
from .strategies import assert_elements, ragged_batches

DOCUMENTED_STATE_KEYS = (
    *("_state_version", "_values", "_offsets", "_permutation", "_physical_shape", "_logical_shape"),
    *("batch_first", "padding_value", "mask_value", "_pin_memory", "_packed_sizes", "_element_shapes"),
)


def _layouts_to_serialise() -> list[NestedTensor]:
    grid = NestedTensor([torch.randn(3, 4), torch.randn(5, 4)])  # canonical: 1 ragged dim, 1 static
    folded = NestedTensor._from_packed(  # the same elements with both dims ragged (as cat can leave them)
        grid._values.reshape(-1), NestedLayout(grid._layout.element_shapes, (0, 1), 2)
    )
    return [
        NestedTensor([torch.randn(3, 4, 2), torch.randn(5, 4, 3)], batch_first=False, padding_value=-1.0),
        NestedTensor([torch.randn(2, 3), torch.randn(2, 5)]).transpose(1, 2),  # a permuted packing
        folded,
        NestedTensor([torch.randn(2, 3)])[[]],  # empty, with a static dim
        NestedTensor([]),
        NestedTensor([torch.tensor(1.0), torch.tensor(2.0)]),  # scalar elements
    ]


# ---------------------------------------------------------------------------- _serialization.py


def test_state_holds_exactly_the_documented_keys_and_round_trips(tmp_path):
    for index, nested in enumerate(_layouts_to_serialise()):
        state = nested.__getstate__()
        assert tuple(state) == DOCUMENTED_STATE_KEYS
        assert state["_pin_memory"] is False
        assert state["_packed_sizes"] == nested._layout.packed_sizes
        assert tuple(state["_logical_shape"]) == tuple(nested.shape)
        other = NestedTensor([torch.zeros(1)])
        other.__setstate__(state)
        path = tmp_path / f"{index}.pt"
        torch.save(nested, path)
        for restored in (other, pickle.loads(pickle.dumps(nested)), torch.load(path, weights_only=True)):
            assert restored._layout.same_as(nested._layout), (restored._layout, nested._layout)
            assert torch.equal(restored._values, nested._values)
            assert restored.shape == nested.shape and restored.batch_first == nested.batch_first
            assert restored.padding_value == nested.padding_value


@pytest.mark.parametrize("missing", DOCUMENTED_STATE_KEYS)
def test_set_state_names_every_missing_documented_key(missing):
    nested = NestedTensor([torch.randn(3, 4), torch.randn(5, 4)])
    state = {key: value for key, value in nested.__getstate__().items() if key != missing}
    with pytest.raises(KeyError, match=f"^'Serialized NestedTensor state is missing required keys: {missing}'$"):
        NestedTensor([torch.zeros(1)]).__setstate__(state)
    two = {key: value for key, value in state.items() if key != "mask_value"}
    expected = [key for key in DOCUMENTED_STATE_KEYS if key in (missing, "mask_value")]
    with pytest.raises(KeyError, match=f"missing required keys: {', '.join(expected)}'$"):
        NestedTensor([torch.zeros(1)]).__setstate__(two)


def test_set_state_rejects_values_that_contradict_the_layout():
    nested = NestedTensor([torch.randn(3, 4), torch.randn(5, 4)])
    state = nested.__getstate__()
    with pytest.raises(ValueError, match=r"packed_sizes must match"):
        NestedTensor([torch.zeros(1)]).__setstate__({**state, "_packed_sizes": (4, 4)})
    with pytest.raises(ValueError, match=r"values of shape \(8, 5\) do not fit elements"):
        NestedTensor([torch.zeros(1)]).__setstate__({**state, "_values": torch.zeros(8, 5)})


# ---------------------------------------------------------------------------- ops/joining.py


def test_cat_along_the_batch_dim_accepts_empty_operands():
    empty, full = NestedTensor([], dtype=torch.float32), NestedTensor([[1.0, 2.0]])
    sliced = NestedTensor([torch.zeros(2, 3)])[[]]  # empty, elements of rank 2
    for parts in ([empty, full], [full, empty], [empty, full, sliced], [sliced, empty, full]):
        result = torch.cat(parts)
        assert result.shape == (1, 2) and result.tolist() == [[1.0, 2.0]]
        assert result is not full and result._values.data_ptr() != full._values.data_ptr(), "cat copies"
    dense = torch.cat([empty, torch.tensor([[3.0, 4.0]])])
    assert dense.shape == (1, 2) and dense.tolist() == [[3.0, 4.0]]
    nothing = torch.cat([empty, empty])
    assert len(nothing) == 0 and nothing is not empty
    with pytest.raises(ValueError, match="needs one"):
        torch.cat([NestedTensor([], batch_first=False), full])


# ---------------------------------------------------------------------------- ops/reshape.py


@pytest.mark.parametrize("make", [lambda: NestedTensor([]), lambda: NestedTensor([torch.zeros(2, 3)])[[]]])
def test_view_and_reshape_of_an_empty_batch_return_a_new_tensor(make):
    empty = make()
    for result in (empty.view(-1), empty.reshape(-1), torch.reshape(empty, (-1,)), empty.view(empty.shape)):
        assert isinstance(result, NestedTensor) and len(result) == 0
        assert result is not empty
        result.padding_value = 5.0
        assert empty.padding_value == 0.0


# ---------------------------------------------------------------------------- ops/shape.py


def test_unsqueeze_counts_dims_in_nested_tensor_coordinates_when_the_batch_is_second():
    elements = [torch.randn(3, 4), torch.randn(2, 4)]
    nested = NestedTensor(elements, batch_first=False)  # (3, 2, 4): the batch is dim 1
    for dim in (0, 1, -4, -3):
        with pytest.raises(ValueError, match="Cannot unsqueeze at the batch dimension"):
            nested.unsqueeze(dim)
    with pytest.raises(ValueError, match="Cannot unsqueeze at the batch dimension"):
        nested.clone().unsqueeze_(0)
    for dim, inner in ((2, 1), (-1, 2), (3, 2)):
        result = nested.unsqueeze(dim)
        assert result.batch_first is False
        assert_elements(result, [t.unsqueeze(inner) for t in elements])
    assert nested.unsqueeze(2).shape == (3, 2, 1, 4) and nested.unsqueeze(-1).shape == (3, 2, 4, 1)
    with pytest.raises(ValueError, match="Cannot unsqueeze at the batch dimension"):
        NestedTensor(elements).unsqueeze(0)


# ---------------------------------------------------------------------------- ops/reduction.py


def test_allclose_with_a_dense_operand_broadcasts_over_real_values_like_torch():
    nested = NestedTensor([[1.0, 2.0, 3.0], [4.0, 5.0]])
    assert torch.allclose(nested, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])), "padding is not compared"
    assert not torch.allclose(nested, torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 0.0]]))
    ones = NestedTensor([[1.0, 1.0, 1.0], [1.0, 1.0]])
    for dense in (torch.ones(3), torch.tensor(1.0), torch.ones(1, 1), torch.ones(4, 2, 3)):
        assert torch.allclose(ones, dense) and torch.allclose(dense, ones)
    assert not torch.allclose(ones, torch.tensor([1.0, 1.0, 2.0]))
    assert torch.allclose(ones, torch.tensor([1.0, 1.0, 1.2]), atol=0.25)
    assert torch.allclose(NestedTensor([[float("nan")], [1.0]]), torch.tensor([[float("nan")], [1.0]]), equal_nan=True)
    with pytest.raises(RuntimeError, match=r"size of tensor a \(3\) must match the size of tensor b \(4\)"):
        torch.allclose(nested, torch.zeros(4))
    with pytest.raises(RuntimeError, match=r"size of tensor a \(4\) must match the size of tensor b \(3\)"):
        torch.allclose(torch.zeros(4), nested)
    with forbid_slow_paths(padding=True):  # a dense operand of the nested shape compares on the packed values
        assert torch.allclose(nested, nested.tensor.clone())


# ---------------------------------------------------------------------------- ops/repeat.py


@settings(max_examples=20, deadline=None)
@given(tensors=ragged_batches(max_rank=3), batch_first=st.booleans(), repeats=st.integers(0, 3), data=st.data())
def test_repeat_interleave_along_an_element_dim_matches_every_element(tensors, batch_first, repeats, data):
    rank = tensors[0].dim()
    batch = 0 if batch_first else 1
    dim = data.draw(st.sampled_from([d for d in range(-rank - 1, rank + 1) if d % (rank + 1) != batch]))
    inner = dim % (rank + 1) - (dim % (rank + 1) > batch)
    check_op(
        lambda x: x.repeat_interleave(repeats, dim=dim),
        [tensors],
        lambda t: t.repeat_interleave(repeats, dim=inner),
        nested_kwargs={"batch_first": batch_first},
        dense=False,
    )


@settings(max_examples=10, deadline=None)
@given(tensors=ragged_batches(max_rank=3), repeats=st.integers(0, 3))
def test_repeat_interleave_without_a_dim_flattens_every_element(tensors, repeats):
    result = check_op(
        lambda x: torch.repeat_interleave(x, repeats), [tensors], lambda t: t.repeat_interleave(repeats), dense=False
    )
    assert result._layout.rank == 1


def test_repeat_interleave_with_tensor_repeats_and_along_the_batch():
    elements = [torch.arange(6.0).view(3, 2), torch.arange(4.0).view(2, 2)]
    nested = NestedTensor(elements)
    static = nested.repeat_interleave(torch.tensor([1, 2]), dim=2)
    assert_elements(static, [t.repeat_interleave(torch.tensor([1, 2]), dim=1) for t in elements])
    per_element = NestedTensor([torch.tensor([1, 0, 2]), torch.tensor([2, 1])])
    ragged = torch.repeat_interleave(nested, per_element, dim=1)
    assert_elements(ragged, [t.repeat_interleave(r, dim=0) for t, r in zip(elements, per_element)])
    assert_elements(nested.repeat_interleave(2, dim=0), [elements[0], elements[0], elements[1], elements[1]])
    one = torch.repeat_interleave(nested, torch.tensor([3]), dim=1)
    assert_elements(one, [t.repeat_interleave(3, dim=0) for t in elements])
    with pytest.raises(RuntimeError, match=r"repeats must have the same size as input along dim"):
        nested.repeat_interleave(torch.tensor([1, 2, 1]), dim=1)
    with pytest.raises(RuntimeError, match=r"repeats must have the same size as input along dim"):
        nested.repeat_interleave(torch.tensor([1, 2, 1]), dim=2)


# ---------------------------------------------------------------------------- ops/sorting.py


def test_searchsorted_checks_a_nested_sorter_like_torch():
    values = NestedTensor([[0.0, 4.0], [3.0, 5.0, 1.0]])
    boundaries, sorter = torch.tensor([5.0, 1.0, 3.0]), torch.tensor([1, 2, 0])
    expected = [torch.searchsorted(boundaries, t, sorter=sorter) for t in values]
    assert_elements(torch.searchsorted(boundaries, values, sorter=sorter), expected)
    same_size = NestedTensor([[1, 2, 0], [1, 2, 0]])
    for searched in (values, torch.tensor([1.0, 4.0])):
        with pytest.raises(RuntimeError, match=r"boundary and sorter must have the same size.*\[3\].*\[2, 3\]"):
            torch.searchsorted(boundaries, searched, sorter=same_size)
    sequences = NestedTensor([[1.0, 5.0, 3.0], [4.0, 2.0]])
    orders = NestedTensor([[0, 2, 1], [1, 0]])
    result = torch.searchsorted(sequences, values, sorter=orders)
    assert_elements(result, [torch.searchsorted(s, v, sorter=o) for s, v, o in zip(sequences, values, orders)])
    for wrong in (NestedTensor([[0, 1], [1, 0, 2]]), torch.tensor([[0, 2, 1], [1, 0, 0]]), orders[:1]):
        with pytest.raises(RuntimeError, match=r"boundary and sorter must have the same size"):
            torch.searchsorted(sequences, values, sorter=wrong)


# ---------------------------------------------------------------------------- ops/loss.py


def _classes(seed: int = 0) -> tuple[NestedTensor, NestedTensor, NestedTensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = NestedTensor([torch.randn(3, 4, generator=generator), torch.randn(2, 4, generator=generator)])
    labels = NestedTensor([torch.tensor([0, 3, 1]), torch.tensor([2, 2])])
    multilabel = NestedTensor(
        [torch.tensor([[0, 3, -1, 0], [1, -1, 0, 0], [2, 1, 0, -1]]), torch.tensor([[3, -1, 0, 0], [0, 1, 2, 3]])]
    )
    return logits, labels, multilabel


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_margin_losses_reduce_over_every_real_position(reduction):
    logits, labels, multilabel = _classes()
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    cases = [
        (F.multi_margin_loss, labels, {}),
        (F.multi_margin_loss, labels, {"p": 2, "margin": 0.5, "weight": weight}),
        (F.multi_margin_loss, labels.tensor, {}),  # a padded target
        (F.multilabel_margin_loss, multilabel, {}),
        (F.multilabel_margin_loss, multilabel.tensor, {}),
    ]
    for loss, target, options in cases:
        reference_target = multilabel.concat if loss is F.multilabel_margin_loss else labels.concat
        expected = loss(logits.concat, reference_target, reduction=reduction, **options)
        with forbid_slow_paths():
            result = loss(logits, target, reduction=reduction, **options)
        if reduction == "none":
            assert isinstance(result, NestedTensor) and result._layout.element_shapes == ((3,), (2,))
            torch.testing.assert_close(result.concat, expected)
        else:
            assert type(result) is torch.Tensor and result.dim() == 0, (loss, type(result))
            torch.testing.assert_close(result, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cosine_embedding_loss_of_sequences_with_per_position_targets(reduction):
    generator = torch.Generator().manual_seed(1)
    first = [torch.randn(3, 5, generator=generator), torch.randn(2, 5, generator=generator)]
    second = [torch.randn(3, 5, generator=generator), torch.randn(2, 5, generator=generator)]
    targets = NestedTensor([torch.tensor([1, -1, 1]), torch.tensor([-1, 1])])
    sources = [[t.clone().requires_grad_() for t in first], [t.clone().requires_grad_() for t in second]]
    with forbid_slow_paths():
        result = F.cosine_embedding_loss(
            NestedTensor(sources[0]), NestedTensor(sources[1]), targets, margin=0.1, reduction=reduction
        )
    flat = [torch.cat(part).detach().requires_grad_() for part in (first, second)]
    expected = F.cosine_embedding_loss(*flat, targets.concat, margin=0.1, reduction=reduction)
    if reduction == "none":
        assert isinstance(result, NestedTensor) and result._layout.element_shapes == ((3,), (2,))
        result, expected = result.concat, expected
    else:
        assert type(result) is torch.Tensor and result.dim() == 0
    torch.testing.assert_close(result, expected)
    result.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(torch.cat([t.grad for t in sources[0]]), flat[0].grad)
    padded = F.cosine_embedding_loss(
        NestedTensor(first), NestedTensor(second), targets.tensor, margin=0.1, reduction=reduction
    )
    torch.testing.assert_close(padded.concat if reduction == "none" else padded, expected.detach())
