import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from danling.tensors import NestedTensor, forbid_slow_paths

from ..harness import check_op
from ..strategies import padded
from .test_nn_functional import feature_batches, nested_gradcheck

TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}

# name -> (loss, turn random values into a valid input, turn random values into a valid target)
ELEMENTWISE = {
    "mse_loss": (F.mse_loss, lambda x: x, lambda t: t),
    "l1_loss": (F.l1_loss, lambda x: x, lambda t: t),
    "smooth_l1_loss": (lambda x, t, **k: F.smooth_l1_loss(x, t, beta=0.5, **k), lambda x: x, lambda t: t),
    "huber_loss": (lambda x, t, **k: F.huber_loss(x, t, delta=0.7, **k), lambda x: x, lambda t: t),
    "binary_cross_entropy": (F.binary_cross_entropy, torch.sigmoid, torch.sigmoid),
    "binary_cross_entropy_with_logits": (F.binary_cross_entropy_with_logits, lambda x: x, torch.sigmoid),
    "kl_div": (lambda x, t, **k: F.kl_div(x, t, log_target=True, **k), torch.log_softmax, torch.log_softmax),
    "soft_margin_loss": (F.soft_margin_loss, lambda x: x, torch.sign),
    "poisson_nll_loss": (F.poisson_nll_loss, lambda x: x, lambda t: t.abs() * 3),
    "gaussian_nll_loss": (lambda x, t, **k: F.gaussian_nll_loss(x, t, t.abs() + 0.5, **k), lambda x: x, torch.sin),
}


def prepared(name, elements, seed=0):
    _, make_input, make_target = ELEMENTWISE[name]
    generator = torch.Generator().manual_seed(seed)
    prepare = (lambda f, t: f(t, -1)) if name == "kl_div" else (lambda f, t: f(t))
    inputs = [prepare(make_input, e) for e in elements]
    targets = [prepare(make_target, torch.randn(e.shape, generator=generator)) for e in elements]
    return inputs, targets


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")  # kl_div's own advice
@given(feature_batches(max_lead=2), st.sampled_from(sorted(ELEMENTWISE)), st.sampled_from(["mean", "sum"]))
def test_reduced_elementwise_losses_count_real_positions_only(elements, name, reduction):
    loss = ELEMENTWISE[name][0]
    inputs, targets = prepared(name, elements)
    nested = NestedTensor(inputs)
    garbage = padded(targets, fill=1e4)  # padding of a dense target must never count
    with forbid_slow_paths():
        against_nested = loss(nested, NestedTensor(targets), reduction=reduction)
        against_dense = loss(nested, garbage, reduction=reduction)
    expected = loss(
        torch.cat([x.reshape(-1) for x in inputs]), torch.cat([t.reshape(-1) for t in targets]), reduction=reduction
    )
    torch.testing.assert_close(against_nested, expected, **TOLERANCE)
    torch.testing.assert_close(against_dense, expected, **TOLERANCE)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_unreduced_elementwise_losses_match_every_element(name):
    loss = ELEMENTWISE[name][0]
    inputs, targets = prepared(name, [torch.randn(3, 4), torch.randn(1, 4), torch.randn(5, 4)], seed=1)
    grad = name != "soft_margin_loss"  # its target cannot require grad
    op = lambda x, t: loss(x, t, reduction="none")  # noqa: E731
    result = check_op(op, [inputs, targets], grad=grad, dense=False, **TOLERANCE)
    assert result._layout.element_shapes == ((3, 4), (1, 4), (5, 4))


def test_dense_input_with_a_nested_target():
    inputs, targets = [torch.randn(3, 2), torch.randn(1, 2)], [torch.randn(3, 2), torch.randn(1, 2)]
    with forbid_slow_paths():
        result = F.mse_loss(padded(inputs, fill=50.0), NestedTensor(targets))
    torch.testing.assert_close(result, F.mse_loss(torch.cat(inputs), torch.cat(targets)))


def test_bce_with_logits_weights_line_up_with_the_values():
    inputs, targets = [torch.randn(3, 4), torch.randn(2, 4)], [torch.rand(3, 4), torch.rand(2, 4)]
    weights, pos_weight = [torch.rand(3, 4), torch.rand(2, 4)], torch.rand(4) + 0.5
    expected = F.binary_cross_entropy_with_logits(
        torch.cat(inputs), torch.cat(targets), torch.cat(weights), pos_weight=pos_weight
    )
    for weight in (NestedTensor(weights), padded(weights)):
        result = F.binary_cross_entropy_with_logits(
            NestedTensor(inputs), NestedTensor(targets), weight, pos_weight=pos_weight
        )
        torch.testing.assert_close(result, expected)
    module = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    check_op(module, [inputs, targets], dense=False)


def test_kl_div_batchmean_divides_by_the_number_of_elements_and_legacy_reductions():
    inputs = [torch.randn(3, 5).log_softmax(-1), torch.randn(1, 5).log_softmax(-1)]
    targets = [torch.randn(3, 5).softmax(-1), torch.randn(1, 5).softmax(-1)]
    result = F.kl_div(NestedTensor(inputs), NestedTensor(targets), reduction="batchmean")
    expected = F.kl_div(torch.cat(inputs), torch.cat(targets), reduction="sum") / 2
    torch.testing.assert_close(result, expected)
    summed = F.mse_loss(NestedTensor(inputs), NestedTensor(targets), size_average=False)
    torch.testing.assert_close(summed, F.mse_loss(torch.cat(inputs), torch.cat(targets), reduction="sum"))
    unreduced = F.l1_loss(NestedTensor(inputs), NestedTensor(targets), reduce=False)
    assert isinstance(unreduced, NestedTensor) and unreduced.shape == (2, 3, 5)


def test_packed_targets_are_taken_as_they_are():
    logits, targets = classification_batch([4, 2, 3], seed=5)
    nested_targets = NestedTensor(targets)
    with forbid_slow_paths():
        result = F.cross_entropy(NestedTensor(logits), nested_targets.concat, reduction="sum")
        squared = F.mse_loss(NestedTensor(logits), NestedTensor(logits).concat * 2)
    torch.testing.assert_close(result, class_reference(F.cross_entropy, logits, targets, reduction="sum"))
    torch.testing.assert_close(squared, torch.cat(logits).square().mean())


def test_targets_that_do_not_line_up_are_rejected():
    nested = NestedTensor([torch.randn(3, 2), torch.randn(1, 2)])
    with pytest.raises(ValueError, match=r"target has element shapes \(\(2, 2\), \(1, 2\)\)"):
        F.mse_loss(nested, NestedTensor([torch.randn(2, 2), torch.randn(1, 2)]))
    with pytest.raises(ValueError, match=r"padded tensor of shape \(2, 3, 2\)"):
        F.mse_loss(nested, torch.randn(2, 2, 2))
    with pytest.raises(TypeError, match="not only as weights"):
        F.binary_cross_entropy(torch.rand(4, 2), torch.rand(4, 2), weight=nested)


# ---------------------------------------------------------------------------- class losses

CLASSES = 5


def classification_batch(lengths, seed=0, extra=0):
    """``(logits, targets)``: elements ``(L_i, C, *extra)`` and ``(L_i, *extra)`` (some targets ignored)."""
    generator = torch.Generator().manual_seed(seed)
    logits = [torch.randn(n, CLASSES, *(2,) * extra, generator=generator) for n in lengths]
    targets = [torch.randint(CLASSES, (n, *(2,) * extra), generator=generator) for n in lengths]
    for target in targets:
        target[torch.rand(target.shape, generator=generator) < 0.2] = -100
    return logits, targets


classification_batches = st.builds(
    classification_batch, st.lists(st.integers(1, 5), min_size=1, max_size=4), st.integers(0, 2**16)
)


def class_reference(loss, logits, targets, **kwargs):
    """The loss on the concatenation of the real positions (what nested reductions must equal)."""
    return loss(torch.cat(logits), torch.cat(targets), **kwargs)


CLASS_OPTIONS = [
    {},
    {"weight": torch.rand(CLASSES) + 0.1},
    {"label_smoothing": 0.2},
    {"ignore_index": 2, "reduction": "sum"},
]


@given(classification_batches, st.sampled_from(range(len(CLASS_OPTIONS))), st.booleans())
def test_cross_entropy_over_real_tokens(batch, option, dense_target):
    logits, targets = batch
    options = CLASS_OPTIONS[option]
    if "ignore_index" in options:
        targets = [t.masked_fill(t == -100, options["ignore_index"]) for t in targets]
    target = padded(targets, fill=3) if dense_target else NestedTensor(targets)
    with forbid_slow_paths():
        result = F.cross_entropy(NestedTensor(logits), target, **options)
    torch.testing.assert_close(result, class_reference(F.cross_entropy, logits, targets, **options), equal_nan=True)


@pytest.mark.parametrize("loss", [F.cross_entropy, F.nll_loss])
@pytest.mark.parametrize("extra", [0, 1])
def test_unreduced_class_losses_match_every_element(loss, extra):
    logits, targets = classification_batch([3, 1, 4], seed=extra, extra=extra)
    inputs = [x.log_softmax(1) for x in logits] if loss is F.nll_loss else logits
    result = check_op(lambda x, t: loss(x, t, reduction="none"), [inputs, targets], **TOLERANCE)
    assert [tuple(e.shape) for e in result.unbind()] == [tuple(t.shape) for t in targets]


def test_nll_loss_module_reduces_like_the_concatenation():
    logits, targets = classification_batch([2, 5, 3])
    inputs = [x.log_softmax(-1) for x in logits]
    weight = torch.rand(CLASSES)
    result = nn.NLLLoss(weight=weight)(NestedTensor(inputs), NestedTensor(targets))
    torch.testing.assert_close(result, class_reference(F.nll_loss, inputs, targets, weight=weight))


def test_cross_entropy_sequence_first_with_a_padded_target():
    logits, targets = classification_batch([4, 2, 3], seed=7)
    nested = NestedTensor(logits, batch_first=False)
    dense_target = padded(targets, fill=-5).T  # (L, B)
    with forbid_slow_paths():
        result = F.cross_entropy(nested, dense_target, reduction="none")
    assert not result.batch_first
    for got, scores, target in zip(result._layout.unpack(result._values), logits, targets):
        torch.testing.assert_close(got, F.cross_entropy(scores, target, reduction="none"))


def test_cross_entropy_with_class_probabilities():
    logits = [torch.randn(3, CLASSES), torch.randn(2, CLASSES)]
    probabilities = [torch.rand(3, CLASSES).softmax(-1), torch.rand(2, CLASSES).softmax(-1)]
    expected = class_reference(F.cross_entropy, logits, probabilities, label_smoothing=0.1)
    for target in (NestedTensor(probabilities), padded(probabilities)):
        with forbid_slow_paths():
            result = F.cross_entropy(NestedTensor(logits), target, label_smoothing=0.1)
        torch.testing.assert_close(result, expected)
    check_op(lambda x, t: F.cross_entropy(x, t, reduction="none"), [logits, probabilities], dense=False)


def test_cross_entropy_of_one_score_vector_per_element_is_dense():
    logits = [torch.randn(CLASSES) for _ in range(3)]
    targets = [torch.tensor(1), torch.tensor(4), torch.tensor(0)]
    result = check_op(lambda x, t: F.cross_entropy(x, t, reduction="none"), [logits, targets], dense=True)
    assert result.shape == (3,)
    torch.testing.assert_close(F.cross_entropy(NestedTensor(logits), torch.tensor([1, 4, 0])), result.mean())


def test_cross_entropy_with_target_in_another_packing_repacks_it():
    logits = [torch.randn(CLASSES, 3), torch.randn(CLASSES, 2)]  # classes first, then a ragged dim
    permuted = NestedTensor(logits).transpose(1, 2)  # elements (L_i, C) in a non-row-major packing
    targets = NestedTensor([torch.tensor([0, 1, 2]), torch.tensor([3, 4])])
    result = F.cross_entropy(permuted, targets, reduction="none")
    for got, scores, target in zip(result.unbind(), logits, targets.unbind()):
        torch.testing.assert_close(got, F.cross_entropy(scores.T, target, reduction="none"))


def test_class_losses_reject_what_cannot_line_up():
    logits = NestedTensor([torch.randn(3, CLASSES), torch.randn(2, CLASSES)])
    with pytest.raises(ValueError, match=r"expected \(\(3,\), \(2,\)\)"):
        F.cross_entropy(logits, NestedTensor([torch.tensor([1, 2]), torch.tensor([0, 1])]))
    with pytest.raises(ValueError, match="class dim"):
        F.cross_entropy(NestedTensor([torch.randn(3, 4), torch.randn(3, 5)]), NestedTensor([torch.zeros(3).long()] * 2))
    with pytest.raises(TypeError, match="needs a NestedTensor input"):
        F.cross_entropy(torch.randn(2, 3, CLASSES), NestedTensor([torch.tensor([1, 2, 3]), torch.tensor([0])]))


# ---------------------------------------------------------------------------- autograd


def _class_targets(*lengths):
    return NestedTensor([torch.arange(n) % 3 for n in lengths])


POS_WEIGHT = torch.rand(3, dtype=torch.float64) + 0.5
CLASS_WEIGHT = torch.rand(3, dtype=torch.float64)
BCE_TARGET = NestedTensor([torch.rand(2, 3), torch.rand(1, 3)], dtype=torch.float64)
GRADCHECKS = {
    "mse_loss_dense_target": (F.mse_loss, [(2, 3), (1, 3)], (padded([torch.randn(2, 3), torch.randn(1, 3)]),)),
    "huber_loss_none": (lambda x: F.huber_loss(x, x * 0.5 + 0.3, reduction="none"), [(2, 3), (1, 3)], ()),
    "bce_with_logits": (
        lambda x: F.binary_cross_entropy_with_logits(x, BCE_TARGET, pos_weight=POS_WEIGHT),
        [(2, 3), (1, 3)],
        (),
    ),
    "cross_entropy": (
        lambda x: F.cross_entropy(x, _class_targets(2, 3), CLASS_WEIGHT, label_smoothing=0.1),
        [(2, 3), (3, 3)],
        (),
    ),
    "nll_loss_none": (lambda x: F.nll_loss(x, _class_targets(2, 1), reduction="none"), [(2, 3), (1, 3)], ()),
}


@pytest.mark.parametrize("name", sorted(GRADCHECKS))
def test_gradcheck(name):
    op, shapes, extra = GRADCHECKS[name]
    nested_gradcheck(op, shapes, *(t.double().requires_grad_() for t in extra))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_syncs():
    logits, targets = classification_batch([4, 2, 3], seed=9)
    cpu = NestedTensor(logits), NestedTensor(targets)
    cuda = cpu[0].cuda(), cpu[1].cuda()
    ops = [
        lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
        lambda x, t: F.cross_entropy(x, t.tensor, reduction="none"),
        lambda x, t: F.mse_loss(x, x.tensor * 0.5),
        lambda x, t: F.binary_cross_entropy_with_logits(x, torch.sigmoid(x)),
    ]
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
        torch.testing.assert_close(got.cpu(), want, **TOLERANCE)
