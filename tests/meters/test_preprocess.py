"""Preprocessing: lists, shapes, logits and NestedTensor inputs (padding never counted)."""

from __future__ import annotations

import pytest
import torch

from danling.metrics import StreamMetrics, binary_metrics, multiclass_metrics
from danling.metrics.functional import accuracy
from danling.metrics.preprocess import (
    base_preprocess,
    detach,
    preprocess_binary,
    preprocess_multiclass,
    preprocess_multilabel,
    preprocess_regression,
)


def nested_tensor_class():
    module = pytest.importorskip("danling.tensors.nested_tensor")
    return module.NestedTensor


def test_base_preprocess_squeezes_matching_shapes():
    input, target = base_preprocess([[0.1], [0.9]], [[0], [1]])
    assert input.shape == target.shape == (2,)
    input, target = base_preprocess(torch.rand(3, 4), torch.zeros(3))
    assert input.shape == (3, 4) and target.shape == (3,)


def test_task_preprocessing_canonical_shapes():
    scores, target = preprocess_binary(torch.tensor([[0.2, 2.0]]), torch.tensor([[0, 1]]))
    assert scores.shape == (2,) and scores.min() > 0 and scores.max() < 1
    probabilities, labels = preprocess_multiclass(torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.long), 3)
    assert probabilities.shape == (10, 3) and labels.shape == (10,)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(10))
    probabilities, labels = preprocess_multilabel(torch.randn(4, 2), torch.zeros(4, 2), 2)
    assert probabilities.shape == labels.shape == (4, 2)
    with pytest.raises(ValueError, match=r"expected 2 regression output\(s\), but got input \(4, 3\)"):
        preprocess_regression(torch.rand(4, 3), torch.rand(4, 3), num_outputs=2)
    input, target = preprocess_regression(torch.rand(4, 1), torch.rand(4, 1))
    assert input.shape == target.shape == (4,)


def test_nan_targets_are_rejected_for_classification():
    with pytest.raises(ValueError, match="target contains NaN"):
        preprocess_binary(torch.rand(3), torch.tensor([1.0, float("nan"), 0.0]))


def test_detach():
    value = torch.ones(2, requires_grad=True)
    assert not detach(value).requires_grad and detach("x") == "x"


def test_nested_inputs_count_no_padding():
    NestedTensor = nested_tensor_class()
    scores = [torch.tensor([0.9, 0.2, 0.8]), torch.tensor([0.1, 0.7])]
    labels = [torch.tensor([1, 0, 0]), torch.tensor([0, 1])]
    nested_scores, nested_labels = NestedTensor(scores), NestedTensor(labels)
    flat_scores, flat_labels = torch.cat(scores), torch.cat(labels)

    stream = StreamMetrics(acc=accuracy)
    stream.update(nested_scores, nested_labels)
    assert stream.count.acc == 5 and stream.val.acc == pytest.approx(accuracy(flat_scores, flat_labels).item())

    exact, reference = binary_metrics(), binary_metrics()
    exact.update(nested_scores, nested_labels)
    reference.update(flat_scores, flat_labels)
    assert exact.avg.dict() == reference.avg.dict()
    assert exact.count == 5


def test_nested_input_with_padded_plain_target():
    NestedTensor = nested_tensor_class()
    logits = NestedTensor([torch.randn(3, 4), torch.randn(1, 4)])
    padded_target = torch.tensor([[0, 3, 2], [1, -7, -7]])  # -7 marks padding, which must never be read
    metrics = multiclass_metrics(4, metrics=["acc", "auroc"])
    metrics.update(logits, padded_target)
    reference = multiclass_metrics(4, metrics=["acc", "auroc"])
    reference.update(logits.concat, torch.tensor([0, 3, 2, 1]))
    assert metrics.avg.dict() == reference.avg.dict()


def test_nested_sequences_of_class_scores_in_global_metrics():
    NestedTensor = nested_tensor_class()
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            NestedTensor([torch.randn(length, 3, generator=generator) for length in lengths]),
            NestedTensor([torch.randint(0, 3, (length,), generator=generator) for length in lengths]),
        )
        for lengths in ((2, 5), (4,))
    ]
    metrics = multiclass_metrics(3)
    reference = multiclass_metrics(3)
    for input, target in batches:
        metrics.update(input, target)
    reference.update(torch.cat([x.concat for x, _ in batches]), torch.cat([y.concat for _, y in batches]))
    assert metrics.count == 11
    assert metrics.avg.dict() == reference.avg.dict()


def test_nested_scores_with_padded_plain_labels_of_the_same_rank():
    NestedTensor = nested_tensor_class()
    scores = NestedTensor([torch.tensor([0.9, 0.2, 0.8]), torch.tensor([0.1])])
    padded = torch.tensor([[1, 0, 0], [0, 1, 1]])  # the last two labels of row 1 are padding
    stream = StreamMetrics(acc=accuracy)
    stream.update(scores, padded)
    assert stream.count.acc == 4 and stream.val.acc == 0.75
    with pytest.raises(ValueError, match=r"cannot align a padded tensor of shape \(2, 2\)"):
        stream.update(NestedTensor([torch.randn(3, 4), torch.randn(1, 4)]), torch.zeros(2, 2))
