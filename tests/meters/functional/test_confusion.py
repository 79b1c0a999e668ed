"""Confusion matrices against scikit-learn, with ignored entries and the CPU value checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from danling.metrics.functional import binary_confusion_matrix, multiclass_confusion_matrix, multilabel_confusion_matrix


def test_binary_matrix_matches_sklearn():
    generator = torch.Generator().manual_seed(0)
    scores, target = torch.rand(100, generator=generator), torch.randint(0, 2, (100,), generator=generator)
    expected = skm.confusion_matrix(target.numpy(), (scores > 0.3).long().numpy(), labels=[0, 1])
    np.testing.assert_array_equal(binary_confusion_matrix(scores, target, threshold=0.3).numpy(), expected)


def test_multiclass_matrix_matches_sklearn_and_ignores_entries():
    generator = torch.Generator().manual_seed(1)
    logits, target = torch.randn(100, 4, generator=generator), torch.randint(0, 4, (100,), generator=generator)
    target[:10] = -1
    expected = skm.confusion_matrix(target[10:].numpy(), logits[10:].argmax(-1).numpy(), labels=range(4))
    np.testing.assert_array_equal(multiclass_confusion_matrix(logits, target, 4, ignore_index=-1).numpy(), expected)


def test_multilabel_matrix_matches_sklearn():
    generator = torch.Generator().manual_seed(2)
    scores, target = torch.rand(50, 3, generator=generator), torch.randint(0, 2, (50, 3), generator=generator)
    expected = skm.multilabel_confusion_matrix(target.numpy(), (scores > 0.5).long().numpy())
    np.testing.assert_array_equal(multilabel_confusion_matrix(scores, target, 3).numpy(), expected)


def test_predicted_labels_are_checked():
    with pytest.raises(ValueError, match=r"predicted labels outside \[0, 3\).*\[7\]"):
        multiclass_confusion_matrix(torch.tensor([0, 7]), torch.tensor([0, 1]), 3)


def test_device_histogram_path_matches_bincount():
    """The scatter_add path accelerators take, run on CPU tensors, agrees with the CPU path."""
    from danling.metrics.functional import confusion

    index = torch.tensor([0, 3, 3, 1, 2, 3])
    valid = torch.tensor([True, True, False, True, True, True])
    counts = torch.zeros(4, dtype=torch.int64).scatter_add_(0, torch.where(valid, index, 0), valid.long())
    assert confusion._histogram(index, valid, 4).tolist() == counts.tolist() == [1, 1, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matrix_matches_cpu():
    generator = torch.Generator().manual_seed(3)
    logits, target = torch.randn(64, 5, generator=generator), torch.randint(0, 5, (64,), generator=generator)
    expected = multiclass_confusion_matrix(logits, target, 5)
    torch.testing.assert_close(multiclass_confusion_matrix(logits.cuda(), target.cuda(), 5).cpu(), expected)
