"""Strategies: plain functions from progress to the fraction of the decay done."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from danling.optim import STRATEGIES, LRScheduler
from danling.optim.lr_scheduler.strategies import constant, cosine, linear

progress_values = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@pytest.mark.parametrize(("strategy", "start", "end"), [(linear, 0.0, 1.0), (cosine, 0.0, 1.0), (constant, 0.0, 0.0)])
def test_endpoints(strategy, start, end):
    assert strategy(0.0) == pytest.approx(start, abs=1e-15)
    assert strategy(1.0) == pytest.approx(end, abs=1e-15)


def test_cosine_is_half_a_cosine_wave():
    # slow at the ends, fastest in the middle, passing through one half at the midpoint
    assert cosine(0.5) == pytest.approx(0.5, abs=1e-15)
    assert cosine(0.1) < 0.1 < 0.9 < cosine(0.9)
    assert cosine(1 / 3) == pytest.approx(0.25, abs=1e-15)


@given(progress_values)
def test_cosine_is_point_symmetric_about_the_midpoint(progress):
    assert cosine(progress) + cosine(1.0 - progress) == pytest.approx(1.0, abs=1e-12)


@given(progress_values, progress_values)
def test_every_strategy_stays_in_unit_range_and_never_goes_back(first, second):
    low, high = sorted((first, second))
    for name, strategy in STRATEGIES.items():
        assert 0.0 <= strategy(low) <= strategy(high) <= 1.0, name


def test_registry_of_strategies_is_read_only_and_complete():
    assert dict(STRATEGIES) == {"linear": linear, "cosine": cosine, "constant": constant}
    with pytest.raises(TypeError):
        STRATEGIES["exp"] = math.exp  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_scheduler_exposes_each_strategy_as_a_method(name):
    method = getattr(LRScheduler, name)
    assert method is STRATEGIES[name]
    assert name in LRScheduler.strategy_names()
