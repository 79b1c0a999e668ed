import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths

from ..harness import check_op
from ..strategies import padded, ragged_batches

OPS = {
    "F.softmax": lambda x, d: F.softmax(x, d),
    "F.log_softmax": lambda x, d: F.log_softmax(x, dim=d),
    "F.softmin": lambda x, d: F.softmin(x, d),
    "torch.softmax": lambda x, d: torch.softmax(x, d),
    "Tensor.softmax": lambda x, d: x.softmax(d),
    "torch.log_softmax": lambda x, d: torch.log_softmax(x, d),
    "Tensor.log_softmax": lambda x, d: x.log_softmax(dim=d),
    "special.softmax": lambda x, d: torch.special.softmax(x, d),
    "aten._softmax": lambda x, d: torch.ops.aten._softmax(x, d, False),
}


@pytest.mark.parametrize("name", OPS)
@settings(max_examples=20)
@given(tensors=ragged_batches(max_rank=3), batch_first=st.booleans(), data=st.data())
def test_softmax_along_element_dims_matches_every_element(name, tensors, batch_first, data):
    rank = tensors[0].dim()
    batch = 0 if batch_first else 1
    dim = data.draw(st.sampled_from([d for d in range(-rank - 1, rank + 1) if d % (rank + 1) != batch]))
    logical = dim % (rank + 1)
    inner = logical - 1 if logical > batch else logical
    op = OPS[name]
    check_op(lambda x: op(x, dim), [tensors], lambda t: op(t, inner), nested_kwargs={"batch_first": batch_first})


@pytest.mark.parametrize("log", [False, True])
@given(tensors=ragged_batches(max_rank=3, allow_empty=False))
def test_softmax_along_the_batch_dim_normalises_across_elements_at_every_position(log, tensors):
    nested = NestedTensor(tensors)
    with forbid_slow_paths():
        result = torch.log_softmax(nested, 0) if log else F.softmax(nested, 0)
    reference = (torch.log_softmax if log else torch.softmax)(padded(tensors, -math.inf), 0)
    for element, got in zip(reference, result.unbind()):
        torch.testing.assert_close(got, element[tuple(slice(0, s) for s in got.shape)])


def test_ragged_softmax_ignores_padding_and_keeps_all_minus_infinity_rows_nan():
    scores = NestedTensor([torch.tensor([[0.0, -math.inf], [1.0, 1.0]]), torch.tensor([[-math.inf]])])
    with forbid_slow_paths():
        weights = scores.softmax(-1)
    assert weights[0].tolist() == [[1.0, 0.0], [0.5, 0.5]]
    assert weights[1].isnan().all()  # like torch.softmax of a row that is all -inf


def test_dtype_and_half_to_float():
    nested = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)]).half()
    assert F.softmax(nested, -1, dtype=torch.float32).dtype == torch.float32
    assert torch.softmax(nested, 1, torch.float64).dtype == torch.float64
    assert torch.ops.aten._softmax(nested, 1, True).dtype == torch.float32
    assert nested.log_softmax(-1).dtype == torch.float16


def test_legacy_call_without_a_dim_follows_torch():
    nested = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)])
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        result = F.softmax(nested)  # three dims: torch picks dim 0, the batch
    torch.testing.assert_close(result.concat, F.softmax(nested, 0).concat)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("log", [False, True])
def test_gradcheck(dim, log):
    sources = (
        torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 2, dtype=torch.float64, requires_grad=True),
    )

    def function(first, second):
        return (F.log_softmax if log else F.softmax)(NestedTensor([first, second]), dim).concat

    assert torch.autograd.gradcheck(function, sources)
