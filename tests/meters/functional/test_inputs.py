"""Input handling: lists, shapes, NestedTensors, logit detection."""

from __future__ import annotations

import pytest
import torch

from danling.metrics.functional.inputs import (
    as_tensors,
    multiclass_inputs,
    nested_tensor_class,
    regression_inputs,
    to_probabilities,
)


def test_lists_and_numbers_become_tensors():
    input, target = as_tensors([0.1, 0.9], (0, 1))
    assert input.dtype == torch.float32 and target.tolist() == [0, 1]
    assert as_tensors(0.5, 1)[0].shape == ()
    with pytest.raises(TypeError, match="Unsupported input type: <class 'str'>"):
        as_tensors("abc", [1])


def test_ragged_lists_need_nestedtensor_or_become_one():
    ragged_input, ragged_target = [[0.1, 0.2], [0.3]], [[0, 1], [1]]
    if nested_tensor_class() is None:
        with pytest.raises(ValueError, match="ragged sequence"):
            as_tensors(ragged_input, ragged_target)
    else:
        input, target = as_tensors(ragged_input, ragged_target)
        assert input.tolist() == pytest.approx([0.1, 0.2, 0.3]) and target.tolist() == [0, 1, 1]


def test_to_probabilities_only_maps_logits():
    probabilities = torch.tensor([0.0, 0.3, 1.0])
    torch.testing.assert_close(to_probabilities(probabilities), probabilities)
    logits = torch.tensor([[-1.0, 2.0], [0.5, 0.5]])
    torch.testing.assert_close(to_probabilities(logits), logits.sigmoid())
    torch.testing.assert_close(to_probabilities(logits, dim=-1), logits.softmax(-1))
    assert to_probabilities(torch.tensor([0, 1])).dtype == torch.get_default_dtype()


def test_multiclass_layouts():
    scores, target = multiclass_inputs(torch.rand(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), 4)
    assert scores.shape == (6, 4) and target.shape == (6,)
    scores, _ = multiclass_inputs(torch.rand(2, 4, 3), torch.zeros(2, 3, dtype=torch.long), 4)
    assert scores.shape == (6, 4)
    with pytest.raises(ValueError, match="num_classes=5"):
        multiclass_inputs(torch.rand(2, 4), torch.zeros(2, dtype=torch.long), 5)


def test_regression_layouts():
    input, target = regression_inputs(torch.rand(4, 1), torch.rand(4))
    assert input.shape == target.shape == (4,)
    input, target = regression_inputs(torch.rand(2, 3, 2), torch.rand(2, 3, 2))
    assert input.shape == (6, 2)
    assert regression_inputs(torch.tensor(1.0), torch.tensor(2.0))[0].shape == (1,)
