"""The column-wise ranking core: integer sort keys, tie groups, ROC AUC and average precision."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as skm

from danling.metrics.functional.ranking import average_columns, average_precision, order_keys, roc_auc, tie_groups


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_order_keys_sort_like_the_floats(dtype):
    values = torch.tensor([3.5, -0.0, 0.0, -2.25, float("inf"), -float("inf"), 1e-3, -1e-3, 2.0, 2.0]).to(dtype)
    keys = order_keys(values)
    assert not keys.is_floating_point()
    torch.testing.assert_close(values[keys.argsort(stable=True)], values.sort(stable=True).values)
    assert keys[1] == keys[2], "-0.0 and 0.0 are equal scores"


@given(st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=50))
def test_order_keys_preserve_order_and_equality(values):
    tensor = torch.tensor(values, dtype=torch.float32)
    keys = order_keys(tensor)
    assert torch.equal(keys.unsqueeze(0) < keys.unsqueeze(1), tensor.unsqueeze(0) < tensor.unsqueeze(1))
    assert torch.equal(keys.unsqueeze(0) == keys.unsqueeze(1), tensor.unsqueeze(0) == tensor.unsqueeze(1))


def test_tie_groups_mark_runs_of_equal_values():
    first, last = tie_groups(torch.tensor([[5, 5, 3, 2, 2, 2], [9, 8, 7, 6, 5, 4]]))
    assert first.tolist() == [[0, 0, 2, 3, 3, 3], [0, 1, 2, 3, 4, 5]]
    assert last.tolist() == [[1, 1, 2, 5, 5, 5], [0, 1, 2, 3, 4, 5]]


def test_columns_are_independent_problems():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (60, 3), generator=generator).double()
    positive = torch.rand(60, 3, generator=generator) < 0.5
    mask = torch.rand(60, 3, generator=generator) < 0.8
    auc, ap = roc_auc(scores, positive, mask), average_precision(scores, positive, mask)
    for k in range(3):
        keep = mask[:, k]
        y, s = positive[keep, k].numpy(), scores[keep, k].numpy()
        assert auc[k].item() == pytest.approx(skm.roc_auc_score(y, s))
        assert ap[k].item() == pytest.approx(skm.average_precision_score(y, s))


def test_undefined_columns_and_averaging():
    scores = torch.tensor([[0.1, 0.1], [0.9, 0.2]])
    positive = torch.tensor([[False, False], [True, False]])
    auc = roc_auc(scores, positive)
    assert auc[0].item() == 1.0 and math.isnan(auc[1].item())
    assert average_columns(auc, torch.tensor([1, 0]), "macro").item() == 1.0
    assert average_columns(torch.tensor([0.5, 1.0]), torch.tensor([3, 1]), "weighted").item() == 0.625
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        roc_auc(torch.rand(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="average must be"):
        average_columns(auc, torch.tensor([1, 1]), "samples")
