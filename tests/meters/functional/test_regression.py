"""Regression metrics against scikit-learn and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

from danling.metrics.functional import mae, mse, pearson, r2_score, rmse, spearman


def random_case(seed: int, size: int = 100, outputs: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    shape = (size,) if outputs is None else (size, outputs)
    input = torch.randn(shape, generator=generator, dtype=torch.float64)
    return input, input + 0.5 * torch.randn(shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("outputs", [None, 3])
@pytest.mark.parametrize("seed", range(3))
def test_errors_and_r2_match_sklearn(outputs, seed):
    input, target = random_case(seed, outputs=outputs)
    x, y = input.numpy(), target.numpy()
    assert mse(input, target).item() == pytest.approx(skm.mean_squared_error(y, x))
    assert rmse(input, target).item() == pytest.approx(skm.root_mean_squared_error(y, x))
    assert mae(input, target).item() == pytest.approx(skm.mean_absolute_error(y, x))
    assert r2_score(input, target).item() == pytest.approx(skm.r2_score(y, x))
    if outputs:
        np.testing.assert_allclose(
            r2_score(input, target, average=None).numpy(), skm.r2_score(y, x, multioutput="raw_values")
        )


@pytest.mark.parametrize("seed", range(3))
def test_correlations_match_scipy(seed):
    input, target = random_case(seed, outputs=2)
    for column in range(2):
        x, y = input[:, column].numpy(), target[:, column].numpy()
        per_output_pearson = pearson(input, target, average=None)[column].item()
        assert per_output_pearson == pytest.approx(stats.pearsonr(x, y).statistic)
        assert spearman(input, target, average=None)[column].item() == pytest.approx(stats.spearmanr(x, y).statistic)


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=3, max_size=40))
def test_spearman_with_ties_matches_scipy(pairs):
    x = np.array([a for a, _ in pairs], dtype=float)
    y = np.array([b for _, b in pairs], dtype=float)
    ours = spearman(torch.from_numpy(x), torch.from_numpy(y)).item()
    if x.std() == 0 or y.std() == 0:
        assert math.isnan(ours), "correlation with a constant is undefined"
    else:
        assert ours == pytest.approx(stats.spearmanr(x, y).statistic)


def test_constant_cases_follow_sklearn():
    constant = torch.full((5,), 2.0, dtype=torch.float64)
    varied = torch.arange(5, dtype=torch.float64)
    assert r2_score(constant, constant).item() == skm.r2_score(constant.numpy(), constant.numpy()) == 1.0
    assert r2_score(varied, constant).item() == skm.r2_score(constant.numpy(), varied.numpy()) == 0.0
    assert r2_score(constant, varied).item() == pytest.approx(skm.r2_score(varied.numpy(), constant.numpy()))
    assert math.isnan(pearson(constant, varied).item())


def test_nan_targets_raise_or_are_ignored():
    input, target = random_case(4, size=10)
    target[3] = float("nan")
    with pytest.raises(ValueError, match="target contains NaN"):
        mse(input, target)
    kept = ~target.isnan()
    for fn in (mse, rmse, mae, r2_score, pearson, spearman):
        assert fn(input, target, ignore_nan=True).item() == pytest.approx(fn(input[kept], target[kept]).item())


def test_shapes_are_checked_and_trailing_ones_dropped():
    input, target = random_case(5, size=8)
    assert mse(input.unsqueeze(-1), target).item() == pytest.approx(mse(input, target).item())
    with pytest.raises(ValueError, match=r"same shape, but got \(8,\) and \(7,\)"):
        mse(input, target[:-1])
    with pytest.raises(ValueError, match="average must be 'macro' or None"):
        mse(input, target, average="weighted")


def test_empty_input_is_nan():
    empty = torch.empty(0, dtype=torch.float64)
    for fn in (mse, mae, r2_score, pearson, spearman):
        assert math.isnan(fn(empty, empty).item())
