"""Optimizer building, parameter groups and the monitored metric of metric schedulers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from danling.runners.optim import (
    OPTIMIZERS,
    build_optimizer,
    build_param_groups,
    lookup_optimizer,
    monitored_metric,
    wrap_scheduler,
)


def two_part_model() -> nn.Module:
    model = nn.Sequential()
    model.add_module("encoder", nn.Linear(2, 2))
    model.add_module("head", nn.Linear(2, 1))
    return model


def test_registry_holds_torch_optimizers_by_any_spelling():
    assert {"sgd", "adam", "adamw", "rmsprop", "adagrad"} <= set(OPTIMIZERS)
    assert lookup_optimizer("Ada-Grad") is torch.optim.Adagrad
    with pytest.raises(ValueError, match="Unknown optimizer: None"):
        lookup_optimizer(None)


def test_param_groups_with_derived_options_and_warnings():
    model = two_part_model()
    config = {
        "lr": 0.1,
        "weight_decay": 0.01,
        "betas": (0.9, 0.999),
        "param_groups": [
            {"pattern": "^head", "weight_decay_multiplier": 0.0, "beta2": 0.95},
            {"pattern": "nomatch"},
            {"pattern": "weight", "beta1": 0.0},
        ],
    }
    with pytest.warns(RuntimeWarning, match=r"optim.param_groups\[1\] pattern 'nomatch' matched no parameters"):
        groups = build_param_groups(model.named_parameters(), config)
    assert [len(group["params"]) for group in groups] == [2, 1, 1]
    assert groups[0]["weight_decay"] == 0.0 and groups[0]["betas"] == (0.9, 0.95)
    assert groups[1]["betas"] == (0.0, 0.999) and groups[1]["params"][0] is model.encoder.weight
    assert set(groups[2]) == {"params"} and groups[2]["params"][0] is model.encoder.bias


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"pattern": "x"}, "must be a sequence of mappings"),
        ([1], r"param_groups\[0\] must be a mapping"),
        ([{}], r"param_groups\[0\] requires `pattern`"),
        ([{"pattern": "x", "lr_multiplier": 2}], r"lr_multiplier requires optim.lr"),
        ([{"pattern": "x", "weight_decay_multiplier": 2}], r"weight_decay_multiplier requires optim.weight_decay"),
        ([{"pattern": "x", "beta1": 0.5}], r"beta1/beta2 requires optim.betas"),
    ],
)
def test_param_group_errors(groups, message):
    with pytest.raises(ValueError, match=message):
        build_param_groups(two_part_model().named_parameters(), {"param_groups": groups})


def test_shared_parameters_appear_once():
    model = two_part_model()
    model.add_module("tied", model.head)
    optimizer = build_optimizer(model.named_parameters(), {"type": "sgd", "lr": 0.1})
    assert len(optimizer.param_groups[0]["params"]) == 4


def test_user_built_scheduler_gets_its_interval():
    optimizer = torch.optim.SGD(two_part_model().parameters(), lr=0.1)
    step = wrap_scheduler(torch.optim.lr_scheduler.StepLR(optimizer, 2), {"interval": "epoch"})
    assert (step.interval, step.requires_metric) == ("epoch", False)
    assert wrap_scheduler(torch.optim.lr_scheduler.StepLR(optimizer, 2)).interval == "step"


@pytest.mark.parametrize(
    ("result", "monitor", "message"),
    [
        ({"val": {"loss": 1.0}}, "val.acc", "could not resolve scheduler.monitor='val.acc'"),
        ({"val": {"loss": 1.0}}, "acc", "could not resolve scheduler.monitor='acc'"),
        ({"val": {"loss": torch.tensor([1.0, 2.0])}}, "val.loss", r"tensor of shape \(2,\)"),
    ],
)
def test_monitored_metric_errors(result, monitor, message):
    with pytest.raises(ValueError, match=message):
        monitored_metric(result, monitor)


def test_monitored_metric_prefers_the_score_split_and_reads_tensors():
    result = {"train": {"loss": 1.0}, "val": {"loss": torch.tensor(2.0)}, "loss": 3.0}
    assert monitored_metric(result, "loss", "val") == 2.0
    assert monitored_metric(result, "loss") == 3.0
