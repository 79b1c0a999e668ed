"""``accuracy`` picks the task from its arguments."""

from __future__ import annotations

import pytest
import torch

from danling.metrics.functional import accuracy, infer_task, multiclass_accuracy, multilabel_accuracy


def test_task_inference():
    assert infer_task(None, None, None) == "binary"
    assert infer_task(None, 3, None) == "multiclass"
    assert infer_task(None, None, 2) == "multilabel"
    with pytest.raises(ValueError, match="needs num_classes"):
        infer_task("multiclass", None, None)
    with pytest.raises(ValueError, match="task must be"):
        infer_task("ranking", None, None)


def test_accuracy_dispatches():
    assert accuracy([0.1, 0.8, 0.6, 0.2], [0, 1, 0, 0]).item() == 0.75
    assert accuracy([0.1, 0.8, 0.6, 0.9], [0, 1, 0, -100]).item() == pytest.approx(2 / 3), "ignored by default"
    logits, target = torch.randn(20, 3), torch.randint(0, 3, (20,))
    assert accuracy(logits, target, num_classes=3).item() == multiclass_accuracy(logits, target, 3).item()
    labels = torch.randint(0, 2, (20, 3))
    assert (
        accuracy(logits, labels, num_labels=3).item() == multilabel_accuracy(logits, labels, 3, average="micro").item()
    )
