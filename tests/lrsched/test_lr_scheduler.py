"""LRScheduler: schedule values, position semantics, validation, subclassing and checkpointing."""

from __future__ import annotations

import math
import warnings
from itertools import pairwise

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from danling.optim import LRScheduler

DECAY = {
    "linear": lambda progress: progress,
    "cosine": lambda progress: 0.5 - 0.5 * math.cos(math.pi * progress),
    "constant": lambda progress: 0.0,
}


def expected_lr(step, base_lr, *, total, warmup, cooldown, final, min_lr, method, scaling):
    """The schedule written straight from its definition, independent of the implementation."""
    done = DECAY[method](min(max(step / total, 0.0), 1.0))
    if scaling == "percentile":
        curve = base_lr * (final / base_lr) ** done
    else:
        curve = final + (1.0 - done) * (base_lr - final)
    if 1 <= step < warmup:
        curve = min_lr + (step / warmup) * (curve - min_lr)
    elif cooldown > 0 and step > total - cooldown:
        curve = min_lr + (1.0 - (step - (total - cooldown)) / cooldown) * (curve - min_lr)
    return max(min_lr, curve)


def make_optimizer(*lrs: float) -> torch.optim.SGD:
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs], lr=lrs[0])


def applied_rates(scheduler: LRScheduler, steps: int) -> list[list[float]]:
    """The rates the optimizer holds at steps 1..`steps`, stepping as a training loop does."""
    rates = [[group["lr"] for group in scheduler.optimizer.param_groups]]
    for _ in range(steps - 1):
        scheduler.optimizer.step()
        scheduler.step()
        rates.append([group["lr"] for group in scheduler.optimizer.param_groups])
    return rates


@pytest.fixture(autouse=True)
def _quiet_torch_order_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step")
        yield


@pytest.mark.parametrize("method", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("scaling", ["percentile", "numerical"])
@pytest.mark.parametrize(("warmup", "cooldown"), [(0, 0), (7, 0), (0, 11), (7, 11), (1, 1)])
def test_values_for_every_method_scaling_and_envelope(method, scaling, warmup, cooldown):
    bases, total, ratio, min_lr = (1.0, 0.1, 3e-4), 40, 1e-2, 1e-6
    scheduler = LRScheduler(
        make_optimizer(*bases),
        total_steps=total,
        final_lr_ratio=ratio,
        min_lr=min_lr,
        method=method,
        scaling=scaling,
        warmup_steps=warmup,
        cooldown_steps=cooldown,
    )
    settings = {"total": total, "warmup": warmup, "cooldown": cooldown, "min_lr": min_lr}
    settings |= {"method": method, "scaling": scaling}
    expected = [
        [expected_lr(step, base, final=base * ratio, **settings) for base in bases] for step in range(1, total + 2)
    ]
    assert applied_rates(scheduler, total + 1) == [pytest.approx(row, rel=1e-12, abs=0) for row in expected]


# What the documented defaults resolve to: method "cosine", scaling "percentile" ("numerical" once a
# final_lr is given), final_lr = final_lr_ratio (1e-3) * base rate, min_lr 1e-9 (lowered to final_lr when
# larger), warmup_steps total // 20 and cooldown_steps total // 5.  The base rate is 1.
DEFAULTS = {"method": "cosine", "scaling": "percentile", "final": 1e-3, "min_lr": 1e-9}


@pytest.mark.parametrize(
    ("kwargs", "steps", "resolved"),
    [
        (  # the defaults: no warmup (10 // 20) and a cooldown of 2 (10 // 5)
            {"total_steps": 10},
            11,
            {"total": 10, "warmup": 0, "cooldown": 2},
        ),
        (  # a final_lr makes the scaling numerical
            {"total_steps": 10, "final_lr": 0.1, "method": "linear"},
            10,
            {"total": 10, "warmup": 0, "cooldown": 2, "method": "linear", "scaling": "numerical", "final": 0.1},
        ),
        (
            {"total_steps": 10, "final_lr": 0.1, "method": "linear", "scaling": "percentile"},
            10,
            {"total": 10, "warmup": 0, "cooldown": 2, "method": "linear", "final": 0.1},
        ),
        (  # warmup ramps from min_lr, strictly below warmup_steps
            {"total_steps": 8, "warmup_steps": 4, "cooldown_steps": 0, "method": "constant"},
            8,
            {"total": 8, "warmup": 4, "cooldown": 0, "method": "constant"},
        ),
        (  # min_lr above an explicit final_lr is lowered to it
            {
                "total_steps": 5,
                "warmup_steps": 0,
                "cooldown_steps": 0,
                "method": "linear",
                "final_lr": 0.5,
                "min_lr": 0.6,
            },
            5,
            {
                "total": 5,
                "warmup": 0,
                "cooldown": 0,
                "method": "linear",
                "scaling": "numerical",
                "final": 0.5,
                "min_lr": 0.5,
            },
        ),
        (  # a zero target is clamped to min_lr everywhere
            {"total_steps": 4, "warmup_steps": 0, "cooldown_steps": 0, "method": "linear", "final_lr_ratio": 0.0},
            4,
            {"total": 4, "warmup": 0, "cooldown": 0, "method": "linear", "final": 0.0},
        ),
    ],
)
def test_reference_vectors(kwargs, steps, resolved):
    settings = DEFAULTS | resolved
    expected = [expected_lr(step, 1.0, **settings) for step in range(1, steps + 1)]
    assert [lr for (lr,) in applied_rates(LRScheduler(make_optimizer(1.0), **kwargs), steps)] == pytest.approx(
        expected, rel=1e-12, abs=0
    )


def test_reference_vectors_in_closed_form():
    """A few of the vectors above, written out by hand."""
    cosine = [0.5 - 0.5 * math.cos(math.pi * step / 10) for step in range(11)]
    defaults = [1e-3 ** cosine[step] for step in range(1, 9)] + [0.5 * 1e-3 ** cosine[9] + 0.5e-9, 1e-9, 1e-9]
    assert [lr for (lr,) in applied_rates(LRScheduler(make_optimizer(1.0), total_steps=10), 11)] == pytest.approx(
        defaults, rel=1e-12, abs=0
    )
    warmup = [1e-9 + step / 4 * (1.0 - 1e-9) for step in (1, 2, 3)] + [1.0] * 5
    constant = LRScheduler(make_optimizer(1.0), total_steps=8, warmup_steps=4, cooldown_steps=0, method="constant")
    assert [lr for (lr,) in applied_rates(constant, 8)] == pytest.approx(warmup, rel=1e-12, abs=0)


def test_defaults_and_their_precedence():
    ratio_default = LRScheduler(make_optimizer(1.0), total_steps=100)
    assert (ratio_default.method, ratio_default.scaling, ratio_default.final_lr_ratio) == ("cosine", "percentile", 1e-3)
    assert (ratio_default.warmup_steps, ratio_default.cooldown_steps, ratio_default.min_lr) == (5, 20, 1e-9)
    explicit_final = LRScheduler(make_optimizer(1.0), total_steps=100, final_lr=0.01)
    assert (explicit_final.scaling, explicit_final.final_lr_ratio, explicit_final.final_lr) == ("numerical", None, 0.01)
    forced = LRScheduler(make_optimizer(1.0), total_steps=100, final_lr=0.01, scaling="percentile")
    assert forced.scaling == "percentile"
    ratio_keeps_min_lr = LRScheduler(make_optimizer(1.0), total_steps=100, final_lr_ratio=1e-12, min_lr=1e-3)
    assert ratio_keeps_min_lr.min_lr == 1e-3


def test_final_lr_is_absolute_and_ratio_is_per_group():
    settings = {"total_steps": 5, "method": "linear", "cooldown_steps": 0}
    absolute = applied_rates(LRScheduler(make_optimizer(1.0, 0.1), final_lr=0.01, **settings), 5)
    assert absolute[0] == pytest.approx([0.802, 0.082])
    assert absolute[-1] == pytest.approx([0.01, 0.01])
    relative = applied_rates(LRScheduler(make_optimizer(1.0, 0.1), final_lr_ratio=0.01, **settings), 5)
    assert relative[-1] == pytest.approx([0.01, 0.001])


def test_construction_applies_step_one_and_get_lr_reads_the_current_step():
    optimizer = make_optimizer(1.0)
    scheduler = LRScheduler(optimizer, total_steps=10)
    assert optimizer.param_groups[0]["lr"] == scheduler.get_lr()[0] == scheduler.lr_at(1)[0] < 1.0
    assert scheduler.get_last_lr() == scheduler.get_lr()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == scheduler.lr_at(2)[0] == scheduler.get_lr()[0]


def test_warmup_is_strict_and_a_single_warmup_step_does_nothing():
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=20, warmup_steps=4, cooldown_steps=0, method="linear")
    plain = LRScheduler(make_optimizer(1.0), total_steps=20, warmup_steps=0, cooldown_steps=0, method="linear")
    assert scheduler.lr_at(3)[0] < plain.lr_at(3)[0]
    assert scheduler.lr_at(4) == plain.lr_at(4)
    single = LRScheduler(make_optimizer(1.0), total_steps=20, warmup_steps=1, cooldown_steps=0, method="linear")
    assert [single.lr_at(step) for step in range(1, 21)] == [plain.lr_at(step) for step in range(1, 21)]


def test_cooldown_ends_at_min_lr_and_range_warnings():
    scheduler = LRScheduler(
        make_optimizer(1.0), total_steps=6, cooldown_steps=2, min_lr=1e-4, final_lr_ratio=0.1, method="linear"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rates = applied_rates(scheduler, 7)  # steps 1..7 = total + 1
        assert rates[-2:] == [[1e-4], [1e-4]]
        assert rates[-3][0] == pytest.approx(1e-4 + 0.5 * (0.1 ** (5 / 6) - 1e-4), rel=1e-12)
        assert rates[-4][0] == pytest.approx(0.1 ** (4 / 6), rel=1e-12)
    with pytest.warns(RuntimeWarning, match=r"step 8 is out of the schedule's range \[1, 7\]"):
        scheduler.step()
    assert scheduler.get_last_lr() == [1e-4]


def test_rate_stays_at_min_lr_past_the_end_even_below_a_tiny_curve():
    # the cooldown factor turns negative past total_steps; it must not lift the rate above min_lr
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=2, cooldown_steps=1, final_lr_ratio=0.0, min_lr=1e-6)
    assert [scheduler.lr_at(step) for step in (2, 3, 4, 10)] == [[1e-6]] * 4


def test_new_scheduler_on_a_used_optimizer_starts_from_the_initial_lr():
    optimizer = make_optimizer(1.0)
    applied_rates(LRScheduler(optimizer, total_steps=5, method="linear"), 4)
    assert optimizer.param_groups[0]["lr"] < 0.1
    again = LRScheduler(optimizer, total_steps=5, method="linear", final_lr_ratio=1e-5)
    assert again.base_lrs == [1.0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_last_epoch_and_step_epoch_set_the_position():
    reference = LRScheduler(make_optimizer(1.0, 0.5), total_steps=30, warmup_steps=3)
    rates = applied_rates(reference, 12)
    optimizer = make_optimizer(1.0, 0.5)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    resumed = LRScheduler(optimizer, total_steps=30, warmup_steps=3, last_epoch=6)
    assert [group["lr"] for group in optimizer.param_groups] == rates[7]
    with pytest.warns(UserWarning, match="epoch"):
        resumed.step(2)
    assert [group["lr"] for group in optimizer.param_groups] == rates[2]


def test_tensor_learning_rates_are_updated_in_place():
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=torch.tensor(0.5))
    lr_tensor = optimizer.param_groups[0]["lr"]
    scheduler = LRScheduler(optimizer, total_steps=10, warmup_steps=2)
    floats = LRScheduler(make_optimizer(0.5), total_steps=10, warmup_steps=2)
    for step in range(1, 12):
        if step > 1:
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] is lr_tensor
        assert lr_tensor.item() == pytest.approx(floats.lr_at(step)[0], rel=1e-6)
    assert scheduler.base_lrs[0] is not lr_tensor
    assert scheduler.base_lrs[0].item() == 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_parameters_with_fused_adamw_and_a_tensor_lr():
    weight = torch.ones(4, device="cuda", requires_grad=True)
    optimizer = torch.optim.AdamW([weight], lr=torch.tensor(0.01), fused=True)
    scheduler = LRScheduler(optimizer, total_steps=10, warmup_steps=3)
    floats = LRScheduler(make_optimizer(0.01), total_steps=10, warmup_steps=3)
    for step in range(1, 11):
        if step > 1:
            scheduler.step()
        assert optimizer.param_groups[0]["lr"].item() == pytest.approx(floats.lr_at(step)[0], rel=1e-6)
        weight.square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.isfinite(weight).all()


def test_zero_base_rate_with_percentile_scaling_gives_min_lr():
    scheduler = LRScheduler(make_optimizer(0.0, 1.0), total_steps=4, cooldown_steps=0)
    assert [rates[0] for rates in applied_rates(scheduler, 4)] == [1e-9] * 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"total_steps": 0}, r"`total_steps` must be at least 1, but got 0"),
        ({"total_steps": 10.5}, r"`total_steps` must be an integer, but got 10.5"),
        ({"total_steps": True}, r"`total_steps` must be an integer, but got True"),
        ({"total_steps": 10, "warmup_steps": -1}, r"`warmup_steps` must be at least 0, but got -1"),
        ({"total_steps": 10, "cooldown_steps": -3}, r"`cooldown_steps` must be at least 0, but got -3"),
        (
            {"total_steps": 10, "warmup_steps": 11, "cooldown_steps": 0},
            r"must not exceed total_steps, but got 11 \+ 0 > 10",
        ),
        ({"total_steps": 10, "warmup_steps": 6, "cooldown_steps": 5}, r"but got 6 \+ 5 > 10"),
        ({"total_steps": 10, "last_epoch": -2}, r"`last_epoch` must be at least -1, but got -2"),
        ({"total_steps": 10, "final_lr_ratio": 0.1, "final_lr": 0.1}, r"only one of `final_lr_ratio` and `final_lr`"),
        ({"total_steps": 10, "final_lr_ratio": -0.1}, r"`final_lr_ratio` must be a finite number >= 0, but got -0.1"),
        ({"total_steps": 10, "final_lr": float("nan")}, r"`final_lr` must be a finite number >= 0, but got nan"),
        ({"total_steps": 10, "min_lr": -1e-9}, r"`min_lr` must be a finite number >= 0, but got -1e-09"),
        (
            {"total_steps": 10, "method": "exp"},
            r"`method` must be one of \['constant', 'cosine', 'linear'\], but got 'exp'",
        ),
        ({"total_steps": 10, "method": "get_lr"}, r"but got 'get_lr'"),
        (
            {"total_steps": 10, "scaling": "log"},
            r"`scaling` must be one of \['percentile', 'numerical'\], but got 'log'",
        ),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRScheduler(make_optimizer(1.0), **kwargs)


def test_boundaries_that_are_allowed():
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=10, warmup_steps=10, cooldown_steps=0)
    assert scheduler.warmup_steps == 10
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=10, warmup_steps=4, cooldown_steps=6)
    assert scheduler.cooldown_steps_begin == 4


class Exponential(LRScheduler):
    """A subclass adding a strategy the way the docs suggest: one public method."""

    def exponential(self, progress: float) -> float:
        return (math.exp(progress) - 1.0) / (math.e - 1.0)


def test_subclass_adds_a_strategy_and_keeps_the_builtins():
    assert Exponential.strategy_names() == ("constant", "cosine", "exponential", "linear")
    assert LRScheduler.strategy_names() == ("constant", "cosine", "linear")
    cosine = Exponential(make_optimizer(1.0), total_steps=10)
    assert cosine.lr_at(3) == LRScheduler(make_optimizer(1.0), total_steps=10).lr_at(3)
    scheduler = Exponential(make_optimizer(2.0), total_steps=10, method="exponential", cooldown_steps=0, final_lr=0.2)
    done = (math.exp(0.3) - 1.0) / (math.e - 1.0)
    assert scheduler.lr_at(3)[0] == pytest.approx(0.2 + (1 - done) * 1.8, rel=1e-12)
    assert repr(scheduler).startswith("Exponential(exponential, scaling=numerical,")


def test_repr():
    scheduler = LRScheduler(make_optimizer(1.0), total_steps=10, final_lr=0.1)
    assert repr(scheduler) == (
        "LRScheduler(cosine, scaling=numerical, final_lr_ratio=None, total_steps=10, warmup_steps=0, cooldown_steps=2)"
    )


def train(model, optimizer, scheduler, steps):
    """A real loop: forward, backward, optimizer step, scheduler step; returns the rates used."""
    used = []
    for _ in range(steps):
        used.append([group["lr"] for group in optimizer.param_groups])
        loss = model(torch.ones(1, 3)).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return used


def build_run(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.02}], lr=0.1, momentum=0.9
    )
    scheduler = LRScheduler(optimizer, total_steps=30, warmup_steps=4, cooldown_steps=6, method="cosine")
    return model, optimizer, scheduler


@pytest.mark.parametrize("load_optimizer", [True, False])
def test_resume_from_disk_continues_identically(tmp_path, load_optimizer):
    model, optimizer, scheduler = build_run()
    uninterrupted = train(model, optimizer, scheduler, 30)

    model, optimizer, scheduler = build_run()
    first = train(model, optimizer, scheduler, 12)
    path = tmp_path / "checkpoint.pt"
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)

    model, optimizer, scheduler = build_run(seed=1)
    checkpoint = torch.load(path, weights_only=True)
    if load_optimizer:
        optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    assert scheduler.state_dict() == checkpoint["scheduler"]
    assert first + train(model, optimizer, scheduler, 18) == uninterrupted


def test_state_dict_is_plain_data_and_a_copy():
    _, _, scheduler = build_run()
    state = scheduler.state_dict()
    allowed = (int, float, str, bool, type(None))
    for key, value in state.items():
        items = value if isinstance(value, list) else [value]
        assert all(isinstance(item, allowed) for item in items), key
    state["base_lrs"].append(1.0)
    assert len(scheduler.base_lrs) == 2


def test_load_ignores_upstream_strategies_and_rejects_mismatches():
    _, _, scheduler = build_run()
    state = scheduler.state_dict() | {"strategies": {"cosine": LRScheduler.cosine}, "last_epoch": 5}
    scheduler.load_state_dict(state)
    assert "strategies" not in scheduler.state_dict()
    assert scheduler.last_epoch == 5
    with pytest.raises(ValueError, match=r"`method` must be one of .*but got 'exp'"):
        scheduler.load_state_dict(state | {"method": "exp"})
    with pytest.raises(ValueError, match=r"3 entries in 'base_lrs' but the optimizer has 2 param groups"):
        scheduler.load_state_dict(state | {"base_lrs": [0.1, 0.1, 0.1]})


@given(
    total=st.integers(min_value=2, max_value=200),
    warmup_share=st.floats(min_value=0.0, max_value=0.5),
    cooldown_share=st.floats(min_value=0.0, max_value=0.5),
    ratio=st.floats(min_value=0.0, max_value=1.0),
    bases=st.lists(st.floats(min_value=1e-6, max_value=10.0), min_size=1, max_size=3),
    method=st.sampled_from(["linear", "cosine", "constant"]),
    scaling=st.sampled_from(["percentile", "numerical"]),
)
def test_decaying_schedule_stays_in_bounds_and_is_monotone_after_warmup(
    total, warmup_share, cooldown_share, ratio, bases, method, scaling
):
    warmup, cooldown = int(total * warmup_share), int(total * cooldown_share)
    scheduler = LRScheduler(
        make_optimizer(*bases),
        total_steps=total,
        final_lr_ratio=ratio,
        method=method,
        scaling=scaling,
        warmup_steps=warmup,
        cooldown_steps=cooldown,
    )
    rates = list(zip(*applied_rates(scheduler, total + 1)))
    for base, series in zip(bases, rates):
        assert all(scheduler.min_lr <= lr <= base * (1 + 1e-12) for lr in series)
        after_warmup = series[max(warmup, 1) - 1 :]
        assert all(later <= earlier * (1 + 1e-12) for earlier, later in pairwise(after_warmup))
