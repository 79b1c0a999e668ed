import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from danling.tensors import NestedTensor, forbid_slow_paths
from danling.tensors.ops import _registry

from ..harness import check_op
from ..strategies import assert_elements, ragged_batches

UNARY = {
    "neg": lambda x: -x,
    "abs": torch.abs,
    "exp": torch.exp,
    "sin": torch.sin,
    "tanh": torch.tanh,
    "sigmoid": lambda x: x.sigmoid(),
    "square": torch.square,
    "relu": torch.relu,
    "F.relu": F.relu,
    "F.gelu": F.gelu,
    "F.gelu(tanh)": lambda x: F.gelu(x, approximate="tanh"),
    "F.silu": F.silu,
    "F.leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "F.elu": F.elu,
    "F.softplus": F.softplus,
    "F.hardtanh": F.hardtanh,
    "clamp": lambda x: x.clamp(-0.5, 0.5),
    "clamp_min": lambda x: torch.clamp(x, min=0.1),
    "pow": lambda x: x**2,
    "rpow": lambda x: 2**x,
    "rsub": lambda x: 1 - x,
    "rdiv": lambda x: 1 / (x.abs() + 1),
    "scalar ops": lambda x: (x * 3 + 1) / 2 - 0.5,
    "erf": torch.special.erf,
}
BINARY = {
    "add": torch.add,
    "add alpha": lambda x, y: torch.add(x, y, alpha=2),
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": lambda x, y: x / (y.abs() + 1),
    "maximum": torch.maximum,
    "atan2": torch.atan2,
    "hypot": torch.hypot,
    "lerp": lambda x, y: torch.lerp(x, y, 0.3),
    "where": lambda x, y: torch.where(x > y, x, y),
    "addcmul": lambda x, y: torch.addcmul(x, x, y, value=0.5),
}
COMPARISONS = {
    "gt": lambda x, y: x > y,
    "le": torch.le,
    "eq": lambda x, y: x == y,
    "ne": lambda x, y: x != y,
    "and": lambda x, y: (x > 0) & (y > 0),
    "or": lambda x, y: (x > 0) | (y > 0),
    "xor": lambda x, y: (x > 0) ^ (y > 0),
    "not": lambda x, y: ~(x > y),
}


@pytest.mark.parametrize("name", UNARY)
@settings(max_examples=20)
@given(tensors=ragged_batches(), batch_first=st.booleans())
def test_unary_ops_match_per_element_results(name, tensors, batch_first):
    check_op(UNARY[name], [tensors], nested_kwargs={"batch_first": batch_first})


@pytest.mark.parametrize("name", BINARY)
@settings(max_examples=20)
@given(tensors=ragged_batches(), data=st.data())
def test_binary_ops_with_a_nested_operand_of_the_same_layout(name, tensors, data):
    seed = data.draw(st.integers(0, 2**16))
    others = [torch.randn(t.shape, generator=torch.Generator().manual_seed(seed + i)) for i, t in enumerate(tensors)]
    check_op(BINARY[name], [tensors, others])


@pytest.mark.parametrize("name", COMPARISONS)
@settings(max_examples=20)
@given(tensors=ragged_batches())
def test_comparisons_and_logical_ops(name, tensors):
    others = [t.flip(0) for t in tensors]
    check_op(COMPARISONS[name], [tensors, others])


@pytest.mark.parametrize("name", BINARY)
def test_binary_ops_with_scalars_and_zero_dim_tensors(name):
    tensors = [torch.randn(3, 4), torch.randn(5, 4), torch.randn(1, 4)]
    check_op(lambda x: BINARY[name](x, torch.tensor(0.25)), [tensors])
    check_op(lambda x: BINARY[name](torch.tensor(0.25), x), [tensors])
    weight = torch.tensor(1.5, requires_grad=True)
    nested = NestedTensor(tensors)
    (BINARY[name](nested, weight)).sum().backward()
    reference = torch.tensor(1.5, requires_grad=True)
    sum(BINARY[name](t, reference).sum() for t in tensors).backward()
    torch.testing.assert_close(weight.grad, reference.grad)


@given(tensors=ragged_batches(max_rank=3, allow_empty=False), batch_first=st.booleans())
def test_dense_operands_broadcasting_over_static_dims(tensors, batch_first):
    layout = NestedTensor(tensors)._layout
    shape = [layout.max_sizes[d] if d in layout.static_dims else 1 for d in range(layout.rank)]
    dense = torch.randn(shape)
    check_op(lambda x: x * dense, [tensors], nested_kwargs={"batch_first": batch_first})
    weight, reference = dense.clone().requires_grad_(), dense.clone().requires_grad_()
    with forbid_slow_paths():
        (NestedTensor(tensors, batch_first=batch_first) * weight).sum().backward()
    sum((t * reference).sum() for t in tensors).backward()
    torch.testing.assert_close(weight.grad, reference.grad)


@pytest.mark.parametrize("batch_first", [True, False])
def test_dense_operands_of_the_padded_shape_or_broadcasting_against_it(batch_first):
    tensors = [torch.randn(3, 2), torch.randn(1, 2)]
    nested = NestedTensor(tensors, batch_first=batch_first)
    padded = torch.randn(nested.shape)
    per_element = torch.randn((2, 1, 2) if batch_first else (1, 2, 2))
    with forbid_slow_paths():
        shifted = nested + padded
        scaled = nested * per_element
    by_batch = padded if batch_first else padded.movedim(1, 0)
    assert_elements(shifted, [t + by_batch[i, : t.shape[0]] for i, t in enumerate(tensors)])
    rows = per_element if batch_first else per_element.movedim(1, 0)
    assert_elements(scaled, [t * rows[i] for i, t in enumerate(tensors)])


def test_nested_operands_with_the_same_rows_broadcast_on_the_packed_values():
    features = [torch.randn(3, 4), torch.randn(2, 4)]
    mask = [torch.tensor([[1.0], [0.0], [1.0]]), torch.tensor([[0.0], [1.0]])]
    result = check_op(lambda x, m: x * m, [features, mask])
    assert result.shape == (2, 3, 4) and result._values.shape == (5, 4)
    check_op(lambda m, x: m + x, [mask, features])


def test_nested_operands_of_other_shapes_broadcast_per_element_on_the_slow_path():
    left = NestedTensor([torch.ones(3), torch.ones(2)])
    right = NestedTensor([torch.tensor([2.0]), torch.tensor([3.0])])
    assert (left * right).tolist() == [[2.0, 2.0, 2.0], [3.0, 3.0]]
    with forbid_slow_paths(), pytest.raises(RuntimeError, match=r"ran per element: aten\.mul\.Tensor"):
        left * right


def test_operands_that_cannot_combine_raise_clear_errors():
    nested = NestedTensor([torch.ones(3), torch.ones(2)])
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(4,\) \(element 0\) do not broadcast"):
        nested + torch.ones(4)
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(3,\) \(element 1\) do not broadcast"):
        nested * NestedTensor([torch.ones(3), torch.ones(3)])
    with pytest.raises(ValueError, match=r"batch length mismatch between operands of aten\.add\.Tensor: 2 vs 1"):
        nested + NestedTensor([torch.ones(3)])


def test_in_place_ops_mutate_the_values_and_return_self():
    nested = NestedTensor([torch.ones(3), torch.ones(2)])
    values = nested._values
    before = nested.tensor.clone()
    with forbid_slow_paths():
        assert nested.mul_(3) is nested and nested._values is values
        nested += 1
        nested.clamp_(max=3.5)
        assert torch.sigmoid_(nested) is nested
        assert F.relu(nested, inplace=True) is nested
        nested.masked_fill_(nested > 0.99, 0.0)
    assert nested._values is values
    torch.testing.assert_close(nested.concat, torch.full((5,), 3.5).sigmoid())
    assert not torch.equal(nested.tensor, before)  # the cached padded view follows the data
    out = NestedTensor([torch.zeros(3), torch.zeros(2)])
    assert torch.add(nested, 1, out=out) is out
    torch.testing.assert_close(out.concat, torch.full((5,), 3.5).sigmoid() + 1)


def test_where_clamp_and_masked_fill():
    nested = NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
    padded_mask = torch.tensor([[True, False, False], [False, True, True]])  # the padding position is ignored
    with forbid_slow_paths():
        results = [
            nested >= 2,
            torch.where(nested > 2, nested, torch.tensor(0)),
            torch.where(nested > 2, nested, 0),
            nested.where(nested > 2, -nested),
            nested.clamp(2, 4),
            nested.clamp(min=torch.tensor(3)),
            nested.masked_fill(nested > 3, -1),
            nested.masked_fill(nested > 3, torch.tensor(-2)),
            nested.masked_fill(padded_mask, 0),
        ]
    assert [r.tolist() for r in results] == [
        [[False, True, True], [True, True]],
        [[0, 0, 3], [4, 5]],
        [[0, 0, 3], [4, 5]],
        [[-1, -2, 3], [4, 5]],
        [[2, 2, 3], [4, 4]],
        [[3, 3, 3], [4, 5]],
        [[1, 2, 3], [-1, -1]],
        [[1, 2, 3], [-2, -2]],
        [[0, 2, 3], [4, 0]],
    ]
    indices = torch.where(NestedTensor([torch.tensor([0, 1]), torch.tensor([1])]))  # one argument: not elementwise
    assert [i.tolist() for i in indices] == [[[1], [0]]]


def test_nan_to_num_and_predicates():
    tensors = [torch.tensor([1.0, -1.0, 0.0]), torch.tensor([2.0, 0.0])]
    check_op(lambda x: torch.nan_to_num(x / 0.0, posinf=1.0, neginf=-1.0), [tensors], grad=False)
    check_op(lambda x: torch.isnan(x / 0.0) | torch.isinf(x / 0.0), [tensors], grad=False)


@pytest.mark.parametrize(
    "cast",
    [lambda x: x.double(), lambda x: x.half(), lambda x: x.to(torch.int32), lambda x: x.type(torch.float64)],
)
def test_type_casts(cast):
    tensors = [torch.randn(3, 2) * 10, torch.randn(1, 2) * 10]
    result = check_op(cast, [tensors], grad=False)
    assert result.dtype == cast(tensors[0]).dtype


def test_hot_calls_never_reach_the_aten_level(monkeypatch):
    calls = []
    dispatch = _registry.dispatch_aten
    monkeypatch.setattr(
        _registry, "dispatch_aten", lambda func, args, kwargs: calls.append(func) or dispatch(func, args, kwargs)
    )
    nested = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)], requires_grad=True)
    other = NestedTensor([torch.randn(3, 4), torch.randn(2, 4)])
    result = F.gelu(torch.relu(nested * 2 + 1) - other).sigmoid() / 3
    result = torch.where(result > 0.1, result, 0.0).clamp(max=0.3)
    assert calls == []
    result.sum().backward()  # autograd runs on the packed values, never on the wrapper
    assert calls == [aten.sum.default] and nested.grad.shape == nested.shape
    torch.copysign(nested, other)
    assert calls[-1] is aten.copysign.Tensor  # ops without a torch-level handler take the aten path


aten = torch.ops.aten


@pytest.mark.parametrize(
    "op",
    [torch.tanh, lambda x: F.gelu(x) * x, lambda x: torch.where(x > 0, x**2, -x), lambda x: x.clamp(-0.3, 0.3) / 2],
)
def test_unary_gradcheck(op):
    sources = (torch.randn(3, 2, dtype=torch.float64, requires_grad=True), torch.randn(1, 2, dtype=torch.float64))
    sources[1].requires_grad_()

    def function(first, second):
        return op(NestedTensor([first, second])).concat

    assert torch.autograd.gradcheck(function, sources)


def test_binary_gradcheck_with_dense_and_nested_operands():
    first = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    second = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(2, 1, 1, dtype=torch.float64, requires_grad=True)

    def function(first, second, bias, scale):
        nested = NestedTensor([first, second])
        return (torch.atan2(nested, nested * scale) + bias).concat

    assert torch.autograd.gradcheck(function, (first, second, bias, scale))
