import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from danling.tensors import NestedTensor, forbid_slow_paths

from ..harness import check_op

FEATURES = 4


@st.composite
def feature_batches(draw, features: int = FEATURES, max_lead: int = 2, dtype: torch.dtype = torch.float32):
    """Elements ``(*leading, features)``: each leading dim ragged or shared, the last dim static."""
    lead = draw(st.integers(1, max_lead))
    shared = [draw(st.one_of(st.none(), st.integers(1, 3))) for _ in range(lead)]
    batch = draw(st.integers(1, 4))
    shapes = [(*(s or draw(st.integers(1, 5)) for s in shared), features) for _ in range(batch)]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


@st.composite
def channel_batches(draw, channels: int = 3, rank: int = 2):
    """Elements ``(channels, *spatial)`` with ``rank - 1`` spatial dims, each ragged or shared."""
    shared = [draw(st.one_of(st.none(), st.integers(1, 3))) for _ in range(rank - 1)]
    batch = draw(st.integers(1, 4))
    shapes = [(channels, *(s or draw(st.integers(1, 4)) for s in shared)) for _ in range(batch)]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return [torch.randn(shape, generator=generator) for shape in shapes]


def nested_gradcheck(op, shapes, *extra, seed=0):
    """``torch.autograd.gradcheck`` of ``op(NestedTensor, *extra)`` in float64, through the packed values."""
    generator = torch.Generator().manual_seed(seed)
    elements = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    values = NestedTensor(elements)._values.detach().requires_grad_()

    def function(values, *extra):
        result = op(NestedTensor.from_concatenated(values, shapes), *extra)
        return result._values if isinstance(result, NestedTensor) else result

    assert torch.autograd.gradcheck(function, (values, *extra))


# ---------------------------------------------------------------------------- linear, bilinear


@given(feature_batches(), st.booleans())
def test_linear_matches_every_element(elements, with_bias):
    weight, bias = torch.randn(5, FEATURES), torch.randn(5) if with_bias else None
    result = check_op(lambda x: F.linear(x, weight, bias), [elements], dense=False)
    assert result._layout.static_sizes[-1] == 5


@pytest.mark.parametrize("batch_first", [True, False])
def test_linear_module_on_nested_and_weight_gradient(batch_first):
    layer = nn.Linear(FEATURES, 3)
    elements = [torch.randn(4, FEATURES), torch.randn(2, FEATURES)]
    result = layer(NestedTensor(elements, batch_first=batch_first))
    assert result.batch_first is batch_first and result.shape[batch_first] == 4
    for got, element in zip(result._layout.unpack(result._values), elements):
        torch.testing.assert_close(got, layer(element))
    layer.zero_grad()
    result.sum().backward()
    nested_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer(torch.cat(elements)).sum().backward()
    for nested_grad, parameter in zip(nested_grads, layer.parameters()):
        torch.testing.assert_close(nested_grad, parameter.grad)


def test_linear_on_uniform_vectors_uses_the_dense_view():
    weight = torch.randn(2, 3)
    check_op(lambda x: F.linear(x, weight), [[torch.randn(3), torch.randn(3)]], dense=False)


def test_linear_over_a_ragged_last_dim_runs_per_element():
    elements = [torch.randn(2, 3), torch.randn(2, 4)]
    with pytest.raises(RuntimeError, match="per element: linear"), forbid_slow_paths():
        F.linear(NestedTensor(elements), torch.randn(2, 3))
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        F.linear(NestedTensor(elements), torch.randn(2, 3))


def test_bilinear_matches_every_element():
    layer = nn.Bilinear(FEATURES, 2, 3)
    first = [torch.randn(3, FEATURES), torch.randn(1, FEATURES)]
    second = [torch.randn(3, 2), torch.randn(1, 2)]
    check_op(layer, [first, second], dense=False)


# ---------------------------------------------------------------------------- embedding


@st.composite
def index_batches(draw, vocabulary: int = 7):
    rank = draw(st.integers(0, 2))
    batch = draw(st.integers(1, 4))
    shapes = [tuple(draw(st.integers(0, 4)) for _ in range(rank)) for _ in range(batch)]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return [torch.randint(vocabulary, shape, generator=generator) for shape in shapes]


@given(index_batches(), st.sampled_from([None, 0]))
def test_embedding_matches_every_element(indices, padding_idx):
    weight = torch.randn(7, 3)
    check_op(lambda x: F.embedding(x, weight, padding_idx=padding_idx), [indices])


def test_embedding_module_gradient_equals_the_lookup_of_all_indices():
    indices = [torch.tensor([1, 2, 2, 5]), torch.tensor([2, 6])]
    table = nn.Embedding(7, 3, padding_idx=5, scale_grad_by_freq=True)
    upstream = torch.randn(6, 3)
    (table(NestedTensor(indices))._values * upstream).sum().backward()
    nested_grad, table.weight.grad = table.weight.grad, None
    (table(torch.cat(indices)) * upstream).sum().backward()
    torch.testing.assert_close(nested_grad, table.weight.grad)
    assert not nested_grad[5].any()  # padding_idx gets no gradient


def test_embedding_max_norm_renormalises_the_rows_looked_up():
    weight = torch.randn(7, 3) * 5
    reference = weight.clone()
    indices = [torch.tensor([0, 3]), torch.tensor([3, 4, 1])]
    with forbid_slow_paths():
        result = F.embedding(NestedTensor(indices), weight, max_norm=1.0)
    F.embedding(torch.cat(indices), reference, max_norm=1.0)
    torch.testing.assert_close(weight, reference)
    torch.testing.assert_close(result._values, reference[torch.cat(indices)])


def test_torch_embedding_takes_the_table_first():
    weight = torch.randn(7, 3)
    indices = [torch.tensor([1, 0]), torch.tensor([6, 2, 0])]
    check_op(lambda x: torch.embedding(weight, x, 0), [indices], lambda x: torch.embedding(weight, x, 0))
    check_op(lambda x: torch.embedding(weight, x), [indices], lambda x: F.embedding(x, weight))


def test_embedding_gradcheck():
    indices = NestedTensor([torch.tensor([1, 0, 2]), torch.tensor([2])])
    weight = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: F.embedding(indices, w)._values, (weight,))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_treats_every_element_as_one_bag(mode):
    bag = nn.EmbeddingBag(7, 3, mode=mode, padding_idx=0)
    indices = [torch.tensor([1, 2, 2, 5]), torch.tensor([6]), torch.tensor([3, 0])]
    check_op(bag, [indices], lambda x: bag(x[None])[0], dense=True)


def test_embedding_bag_per_sample_weights_and_weight_gradient():
    table = torch.randn(7, 3, requires_grad=True)
    indices = [torch.tensor([1, 2, 2]), torch.tensor([6, 4])]
    weights = [torch.rand(3), torch.rand(2)]
    expected = torch.stack(
        [F.embedding_bag(i[None], table, mode="sum", per_sample_weights=w[None])[0] for i, w in zip(indices, weights)]
    )
    for per_sample in (NestedTensor(weights), NestedTensor(weights).tensor):
        with forbid_slow_paths():
            result = F.embedding_bag(NestedTensor(indices), table, mode="sum", per_sample_weights=per_sample)
        torch.testing.assert_close(result, expected)
    (grad,) = torch.autograd.grad(result.sum(), table)
    (expected_grad,) = torch.autograd.grad(expected.sum(), table)
    torch.testing.assert_close(grad, expected_grad)


# ---------------------------------------------------------------------------- dropout family


@pytest.mark.parametrize("dropout", [F.dropout, F.alpha_dropout])
def test_dropout_draws_like_the_op_on_the_concatenated_values(dropout):
    elements = [torch.randn(5, FEATURES), torch.randn(3, FEATURES)]
    torch.manual_seed(3)
    with forbid_slow_paths():
        result = dropout(NestedTensor(elements), 0.4, True)
    torch.manual_seed(3)
    expected = dropout(torch.cat(elements), 0.4, True)
    torch.testing.assert_close(result._values, expected)
    assert [tuple(e.shape) for e in result.unbind()] == [(5, FEATURES), (3, FEATURES)]


def test_dropout_module_eval_and_in_place():
    nested = NestedTensor([torch.ones(4, 2), torch.ones(2, 2)])
    layer = nn.Dropout(0.5).eval()
    assert torch.equal(layer(nested)._values, nested._values)
    values = nested._values
    assert F.dropout(nested, 0.5, training=True, inplace=True) is nested
    assert nested._values is values and set(values.unique().tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize(("dropout", "rank"), [(F.dropout1d, 2), (F.dropout2d, 3), (F.dropout3d, 4)])
def test_channel_dropout_drops_whole_channels_of_every_element(dropout, rank):
    spatial = [(5,) * (rank - 2) + (n,) for n in (6, 2, 4)]
    elements = [torch.rand(8, *shape) + 1 for shape in spatial]
    with forbid_slow_paths():
        result = dropout(NestedTensor(elements), 0.5, True)
    kept = []
    for got, source in zip(result.unbind(), elements):
        flat_got, flat_source = got.reshape(8, -1), source.reshape(8, -1)
        dropped = (flat_got == 0).all(1)
        torch.testing.assert_close(flat_got[~dropped], flat_source[~dropped] * 2)
        kept.append(~dropped)
    kept = torch.stack(kept)
    assert 0 < kept.sum() < kept.numel()


def test_channel_dropout_in_place_and_rank_check():
    nested = NestedTensor([torch.ones(3, 2), torch.ones(3, 5)])
    assert F.dropout1d(nested, 0.5, True, inplace=True) is nested
    assert set(nested._values.unique().tolist()) <= {0.0, 2.0}
    with pytest.raises(ValueError, match="rank 2"):
        F.dropout1d(NestedTensor([torch.ones(3), torch.ones(2)]), 0.5, True)
    with pytest.raises(ValueError, match=r"between 0 and 1, but got 1\.5"):
        F.dropout1d(nested, 1.5, True)


def test_feature_alpha_dropout_uses_the_dense_affine_constants():
    """Kept and dropped channels map x to the same affine values as the dense op."""
    torch.manual_seed(0)
    probe = torch.stack([torch.zeros(1, 64), torch.ones(1, 64)], dim=-1)  # (1, C, 2): value 0 and 1 per channel
    dense = F.feature_alpha_dropout(probe, 0.3, True)[0]
    dense_kept = dense[:, 1] != dense[:, 0]
    elements = [torch.stack([torch.zeros(64), torch.ones(64)], dim=-1), torch.zeros(64, 3)]
    nested = F.feature_alpha_dropout(NestedTensor(elements), 0.3, True)
    first = nested[0]
    kept = first[:, 1] != first[:, 0]
    assert 0 < kept.sum() < 64 and 0 < dense_kept.sum() < 64
    torch.testing.assert_close(first[kept].unique(dim=0), dense[dense_kept].unique(dim=0))
    torch.testing.assert_close(first[~kept].unique(dim=0), dense[~dense_kept].unique(dim=0))


# ---------------------------------------------------------------------------- activations


ACTIVATIONS = {
    "hardswish": F.hardswish,
    "logsigmoid": F.logsigmoid,
    "threshold": lambda x: F.threshold(x, 0.1, -2.0),
    "rrelu_eval": lambda x: F.rrelu(x, training=False),
    "prelu_shared": lambda x: F.prelu(x, torch.tensor([0.3])),
    "glu_last": lambda x: F.glu(x, -1),
    "softplus": F.softplus,
}


@given(feature_batches(), st.sampled_from(sorted(ACTIVATIONS)))
def test_activations_match_every_element(elements, name):
    check_op(ACTIVATIONS[name], [elements], dense=False)


@given(channel_batches())
def test_prelu_per_channel_matches_every_element(elements):
    weight = torch.rand(3)
    check_op(lambda x: F.prelu(x, weight), [elements], lambda x: F.prelu(x[None], weight)[0])


def test_rrelu_training_draws_like_the_concatenated_values():
    elements = [torch.randn(4, 3), torch.randn(2, 3)]
    torch.manual_seed(1)
    result = F.rrelu(NestedTensor(elements), training=True)
    torch.manual_seed(1)
    torch.testing.assert_close(result._values, F.rrelu(torch.cat(elements), training=True))


def test_in_place_activations_write_into_the_values():
    nested = NestedTensor([torch.tensor([-1.0, 0.5]), torch.tensor([2.0])])
    with forbid_slow_paths():
        assert F.threshold(nested, 1.0, 0.0, inplace=True) is nested
    assert nested.tolist() == [[0.0, 0.0], [2.0]]


def test_glu_along_a_ragged_dim_runs_per_element():
    elements = [torch.randn(4, 3), torch.randn(6, 3)]
    with pytest.raises(RuntimeError, match="glu"), forbid_slow_paths():
        F.glu(NestedTensor(elements), dim=1)
    check_op(lambda x: F.glu(x, dim=1), [elements], lambda x: F.glu(x, dim=0), packed=False)


def test_gumbel_softmax_draws_like_the_concatenated_values():
    elements = [torch.randn(3, FEATURES), torch.randn(2, FEATURES)]
    for hard in (False, True):
        torch.manual_seed(4)
        with forbid_slow_paths():
            result = F.gumbel_softmax(NestedTensor(elements), tau=0.5, hard=hard)
        torch.manual_seed(4)
        torch.testing.assert_close(result._values, F.gumbel_softmax(torch.cat(elements), tau=0.5, hard=hard))


def test_softmin_follows_softmax():
    elements = [torch.randn(3, FEATURES), torch.randn(5, FEATURES)]
    check_op(lambda x: F.softmin(x, dim=-1), [elements], packed=False)


# ---------------------------------------------------------------------------- autograd


GRADCHECKS = {
    "linear": (lambda x, w, b: F.linear(x, w, b), [(3, 2), (1, 2)], (torch.randn(4, 2), torch.randn(4))),
    "bilinear_self": (lambda x, w: F.bilinear(x, x, w), [(2, 2), (1, 2)], (torch.randn(3, 2, 2),)),
    "prelu": (lambda x, w: F.prelu(x, w), [(2, 3), (2, 1)], (torch.rand(2),)),
    "glu": (lambda x: F.glu(x, -1), [(2, 4), (3, 4)], ()),
    "logsigmoid": (F.logsigmoid, [(2, 3), (1, 3)], ()),
    "hardswish": (F.hardswish, [(2, 3), (1, 3)], ()),
    "dropout1d": (lambda x: _seeded(F.dropout1d, x, 0.5, True), [(4, 3), (4, 1)], ()),
    "dropout": (lambda x: _seeded(F.dropout, x, 0.5, True), [(4, 3), (2, 3)], ()),
    "gumbel_softmax": (lambda x: _seeded(F.gumbel_softmax, x), [(2, 3), (1, 3)], ()),
    "embedding_bag_weights": (
        lambda w: F.embedding_bag(
            NestedTensor([torch.tensor([0, 2]), torch.tensor([1])]), TABLE, per_sample_weights=w, mode="sum"
        ),
        [(2,), (1,)],
        (),
    ),
}


TABLE = torch.randn(3, 2, dtype=torch.float64)


def _seeded(op, *args):
    torch.manual_seed(0)
    return op(*args)


@pytest.mark.parametrize("name", sorted(GRADCHECKS))
def test_gradcheck(name):
    op, shapes, extra = GRADCHECKS[name]
    extra = tuple(t.double().requires_grad_() for t in extra)
    nested_gradcheck(op, shapes, *extra)


def test_modules_compose_on_nested_input():
    model = nn.Sequential(nn.Embedding(9, 4), nn.Linear(4, 6), nn.Hardswish(), nn.Dropout(0.0), nn.Linear(6, 2))
    indices = [torch.tensor([1, 2, 3]), torch.tensor([8])]
    with forbid_slow_paths():
        result = model(NestedTensor(indices))
    for got, tokens in zip(result.unbind(), indices):
        torch.testing.assert_close(got, model(tokens))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_syncs():
    elements = [torch.randn(3, 6, 5), torch.randn(3, 6, 2)]
    indices = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    ops = [
        lambda x, i: F.linear(x, torch.ones(4, 5, device=x.device)),
        lambda x, i: F.glu(F.hardswish(x), -1),
        lambda x, i: F.embedding(i, torch.eye(6, device=x.device)),
        lambda x, i: F.prelu(x, torch.full((3,), 0.1, device=x.device)),
    ]
    cpu = NestedTensor(elements), NestedTensor(indices)
    cuda = cpu[0].cuda(), cpu[1].cuda()
    for op in ops:
        op(*cuda)  # first calls copy the layout's index tensors to the device
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [op(*cuda) for op in ops]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for op, result in zip(ops, results):
        expected = op(*cpu)
        got = result._values if isinstance(result, NestedTensor) else result
        want = expected._values if isinstance(expected, NestedTensor) else expected
        torch.testing.assert_close(got.cpu(), want)
    bags = F.embedding_bag(cuda[1], torch.eye(6, device="cuda"))  # the CUDA kernel itself may synchronise
    torch.testing.assert_close(bags.cpu(), F.embedding_bag(cpu[1], torch.eye(6)))
