"""RoundDict: nesting, rounding and formatting."""

from __future__ import annotations

import math

import torch

from danling.metrics import RoundDict


def test_nesting_rounding_and_formatting():
    result = RoundDict({"acc": 0.123456, "task": {"f1": torch.tensor(0.5), "vec": torch.tensor([0.12345, 1.0])}})
    assert isinstance(result.task, RoundDict)
    rounded = round(result, 2)
    assert rounded.acc == 0.12 and rounded.task.f1 == 0.5
    torch.testing.assert_close(rounded.task.vec, torch.tensor([0.12, 1.0]))
    assert result.acc == 0.123456, "round() returns a copy"
    assert result.round(3) is result and result.acc == 0.123
    assert f"{RoundDict({'a': 0.5, 'b': math.nan}):.2f}" == "a: 0.50\tb: nan"
    assert RoundDict({"a.b": 1}).dict() == {"a": {"b": 1}}
