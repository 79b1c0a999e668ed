"""The scheduler registry: lookup, building from config, total_steps and interval handling."""

from __future__ import annotations

import warnings
from functools import partial
from types import MappingProxyType

import pytest
import torch
from torch.optim import lr_scheduler

from danling.optim import (
    SCHEDULERS,
    BuiltScheduler,
    LRScheduler,
    SchedulerEntry,
    build_scheduler,
    lookup_scheduler,
    normalize_scheduler_interval,
    scheduler_requires_metric,
)
from danling.optim.lr_scheduler.registry import _normalize

# the least config each scheduler needs besides the run's total_steps
MINIMAL_CONFIGS = {
    "linear": {},
    "cosine": {},
    "constant": {},
    "lr_scheduler": {"method": "linear"},
    "step": {"step_size": 10},
    "multistep": {"milestones": [10, 20]},
    "exponential": {"gamma": 0.9},
    "polynomial": {},
    "linear_lr": {},
    "constant_lr": {},
    "cosine_annealing": {},
    "cosine_warm_restarts": {"T_0": 10},
    "cyclic": {"base_lr": 0.01, "max_lr": 0.1},
    "one_cycle": {"max_lr": 0.1},
    "reduce_on_plateau": {},
}


@pytest.fixture
def optimizer():
    return torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)


@pytest.fixture(autouse=True)
def _quiet_torch_order_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step")
        yield


def test_every_entry_has_a_minimal_config_and_names_do_not_collide():
    assert set(MINIMAL_CONFIGS) == set(SCHEDULERS)
    spellings = [_normalize(name) for name, entry in SCHEDULERS.items() for name in (name, *entry.aliases)]
    assert len(spellings) == len(set(spellings))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_entry_builds_and_steps(name, optimizer):
    built = build_scheduler(optimizer, {"type": name, **MINIMAL_CONFIGS[name]}, total_steps=100)
    factory = SCHEDULERS[name].factory
    assert isinstance(built.scheduler, factory.func if isinstance(factory, partial) else factory)
    assert built.scheduler.optimizer is optimizer
    assert built.requires_metric is (name == "reduce_on_plateau")
    assert built.interval == ("epoch" if built.requires_metric else "step")
    for _ in range(3):
        optimizer.step()
        built.step(metric=1.0)
    assert optimizer.param_groups[0]["lr"] == built.scheduler.get_last_lr()[0]


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("StepLR", "step"),
        ("steplr", "step"),
        ("Step", "step"),
        ("multi-step", "multistep"),
        ("MultiStepLR", "multistep"),
        ("CosineAnnealingLR", "cosine_annealing"),
        ("cosine annealing", "cosine_annealing"),
        ("COSINE", "cosine"),
        ("LinearLR", "linear_lr"),
        ("linear", "linear"),
        ("LRScheduler", "lr_scheduler"),
        ("OneCycleLR", "one_cycle"),
        ("ReduceLROnPlateau", "reduce_on_plateau"),
        ("plateau", "reduce_on_plateau"),
    ],
)
def test_lookup_ignores_case_and_separators_and_knows_torch_names(spelling, canonical):
    assert lookup_scheduler(spelling) == (canonical, SCHEDULERS[canonical])


@pytest.mark.parametrize("name", ["warmup_cosine", None, 3])
def test_unknown_type_lists_the_valid_names(name, optimizer):
    config = {} if name is None else {"type": name}
    with pytest.raises(ValueError, match=r"must be one of \[.*'cosine'.*'step'.*\].*but got") as raised:
        build_scheduler(optimizer, config)
    assert repr(name) in str(raised.value)


def test_our_schedulers_take_the_runs_total_steps_and_config_wins(optimizer):
    built = build_scheduler(optimizer, {"type": "cosine", "warmup_steps": 10}, total_steps=100)
    assert isinstance(built.scheduler, LRScheduler)
    assert (built.scheduler.method, built.scheduler.total_steps, built.scheduler.warmup_steps) == ("cosine", 100, 10)
    built = build_scheduler(optimizer, {"type": "linear", "total_steps": 40}, total_steps=100)
    assert (built.scheduler.method, built.scheduler.total_steps) == ("linear", 40)


@pytest.mark.parametrize(
    ("name", "attribute"),
    [("one_cycle", "total_steps"), ("cosine_annealing", "T_max"), ("polynomial", "total_iters")],
)
def test_torch_schedulers_get_total_steps_under_their_own_argument(name, attribute, optimizer):
    built = build_scheduler(optimizer, {"type": name, **MINIMAL_CONFIGS[name]}, total_steps=123)
    assert getattr(built.scheduler, attribute) == 123


# torch schedulers that take no total step count (``total_iters`` of LinearLR and ConstantLR is their warmup length)
WITHOUT_TOTAL_STEPS = {
    "step": lr_scheduler.StepLR,
    "multistep": lr_scheduler.MultiStepLR,
    "exponential": lr_scheduler.ExponentialLR,
    "linear_lr": lr_scheduler.LinearLR,
    "constant_lr": lr_scheduler.ConstantLR,
    "cosine_warm_restarts": lr_scheduler.CosineAnnealingWarmRestarts,
    "cyclic": lr_scheduler.CyclicLR,
    "reduce_on_plateau": lr_scheduler.ReduceLROnPlateau,
}


@pytest.mark.parametrize("name", sorted(WITHOUT_TOTAL_STEPS))
def test_schedulers_without_a_total_steps_argument_never_see_it(name, optimizer):
    built = build_scheduler(optimizer, {"type": name, **MINIMAL_CONFIGS[name]}, total_steps=100)
    twin = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)
    direct = WITHOUT_TOTAL_STEPS[name](twin, **MINIMAL_CONFIGS[name])  # torch's defaults for every other argument
    assert type(built.scheduler) is type(direct)
    assert built.scheduler.state_dict() == direct.state_dict()
    if name in ("linear_lr", "constant_lr"):
        assert built.scheduler.total_iters == 5  # torch's default, not the run's 100 steps


def test_step_lr_from_config_behaves_like_step_lr(optimizer):
    built = build_scheduler(optimizer, {"type": "StepLR", "step_size": 2, "gamma": 0.5}, total_steps=100)
    rates = []
    for _ in range(5):
        optimizer.step()
        built.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"type": "StepLR", "step_size": 10, "warmup_steps": 5},
            r"'step' \(StepLR\) does not accept \['warmup_steps'\]",
        ),
        ({"type": "step", "step_size": 10, "total_steps": 100}, r"does not accept \['total_steps'\]"),
        (
            {"type": "cosine", "method": "linear"},
            r"does not accept \['method'\] \(method='cosine' is fixed by its type\)",
        ),
        (
            {"type": "cosine", "warmup": 10},
            r"'cosine' \(LRScheduler\) does not accept \['warmup'\]; it accepts \[.*'warmup_steps'",
        ),
        ({"type": "StepLR"}, r"'step' \(StepLR\) needs \['step_size'\]"),
        ({"type": "one_cycle"}, r"'one_cycle' \(OneCycleLR\) needs \['max_lr'\]"),
    ],
)
def test_arguments_are_checked_against_the_constructor(config, message, optimizer):
    with pytest.raises(ValueError, match=message):
        build_scheduler(optimizer, config, total_steps=100)


def test_missing_total_steps_explains_where_it_comes_from(optimizer):
    with pytest.raises(ValueError, match=r"needs \['total_steps'\]; `total_steps` comes from build_scheduler"):
        build_scheduler(optimizer, {"type": "cosine"})
    with pytest.raises(ValueError, match=r"needs \['T_max'\].*interval is 'step' \(it is 'epoch' here\)"):
        build_scheduler(optimizer, {"type": "cosine_annealing", "interval": "epoch"}, total_steps=100)
    built = build_scheduler(optimizer, {"type": "cosine_annealing", "interval": "epochs", "T_max": 5}, total_steps=100)
    assert (built.interval, built.scheduler.T_max) == ("epoch", 5)


def test_config_is_not_modified_and_any_mapping_works(optimizer):
    config = {"type": "reduce_on_plateau", "interval": "validation", "monitor": "val.loss", "patience": 0}
    built = build_scheduler(optimizer, MappingProxyType(config))
    assert config == {"type": "reduce_on_plateau", "interval": "validation", "monitor": "val.loss", "patience": 0}
    assert (built.interval, built.requires_metric, built.monitor) == ("epoch", True, "val.loss")


def test_metric_scheduler_steps_on_the_metric(optimizer):
    built = build_scheduler(optimizer, {"type": "ReduceLROnPlateau", "patience": 1, "factor": 0.5})
    with pytest.raises(ValueError, match="ReduceLROnPlateau steps on a metric, but got metric=None"):
        built.step()
    for loss in (1.0, 1.0, 1.0):
        built.step(loss)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_metric_scheduler_refuses_a_per_step_interval_and_others_refuse_a_monitor(optimizer):
    with pytest.raises(
        ValueError, match=r"metric schedulers step once per epoch or evaluation, but got interval='step'"
    ):
        build_scheduler(optimizer, {"type": "reduce_on_plateau", "interval": "step"})
    with pytest.raises(ValueError, match=r"`monitor` applies only to metric schedulers.*'step'.*'val.loss'"):
        build_scheduler(optimizer, {"type": "step", "step_size": 3, "monitor": "val.loss"})


@pytest.mark.parametrize(
    ("interval", "requires_metric", "expected"),
    [
        (None, False, "step"),
        (None, True, "epoch"),
        ("Updates", False, "step"),
        (" eval ", True, "epoch"),
        ("EPOCH", False, "epoch"),
        ("evaluation", False, "epoch"),
    ],
)
def test_normalize_interval(interval, requires_metric, expected):
    assert normalize_scheduler_interval(interval, requires_metric=requires_metric) == expected


@pytest.mark.parametrize("interval", ["batch", "", 1])
def test_normalize_interval_rejects_unknown_values(interval):
    with pytest.raises(ValueError, match=r"`interval` must be one of \[.*'epoch'.*'step'.*\], but got"):
        normalize_scheduler_interval(interval, requires_metric=False)


def test_scheduler_requires_metric(optimizer):
    assert scheduler_requires_metric(lr_scheduler.ReduceLROnPlateau(optimizer))
    assert not scheduler_requires_metric(LRScheduler(optimizer, total_steps=10))


class Halving(lr_scheduler.LRScheduler):
    """A user scheduler that halves the rate every `every` steps."""

    def __init__(self, optimizer, total_steps, every=2, last_epoch=-1):
        self.every = every
        self.total_steps = total_steps
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * 0.5 ** (self.last_epoch // self.every) for base in self.base_lrs]


def test_users_add_entries_to_the_plain_mapping(monkeypatch, optimizer):
    monkeypatch.setitem(SCHEDULERS, "halving", SchedulerEntry(Halving, total_steps_argument="total_steps"))
    built = build_scheduler(optimizer, {"type": "Halving", "every": 1}, total_steps=50)
    assert isinstance(built, BuiltScheduler)
    assert (built.scheduler.total_steps, built.scheduler.every) == (50, 1)
    optimizer.step()
    built.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
