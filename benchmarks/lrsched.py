"""Time `LRScheduler.step()` against `LambdaLR.step()` computing the same cosine schedule.

Run: ``python benchmarks/lrsched.py [--steps N] [--repeats R]``. Prints the median time per
``step()`` for each scheduler and each number of parameter groups, and the ratio against
``LambdaLR``, which our scheduler should keep at or under 1.5x. A plain loop that writes
``group["lr"]`` itself is timed too, as the floor a hand-written schedule would reach.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from danling.optim import LRScheduler

TOTAL_STEPS = 10_000
WARMUP_STEPS = 500
COOLDOWN_STEPS = 2_000
FINAL_LR_RATIO = 1e-3
MIN_LR = 1e-9


def cosine_multiplier(last_epoch: int, base_lr: float) -> float:
    """The schedule `LRScheduler` runs, as a multiplier of `base_lr`, for LambdaLR and the plain loop."""
    step = last_epoch + 1
    done = (1.0 - math.cos(math.pi * min(step / TOTAL_STEPS, 1.0))) / 2.0
    lr = base_lr ** (1.0 - done) * (base_lr * FINAL_LR_RATIO) ** done
    if 0 < step < WARMUP_STEPS:
        lr = step / WARMUP_STEPS * (lr - MIN_LR) + MIN_LR
    elif step > TOTAL_STEPS - COOLDOWN_STEPS:
        lr = (1.0 - (step - (TOTAL_STEPS - COOLDOWN_STEPS)) / COOLDOWN_STEPS) * (lr - MIN_LR) + MIN_LR
    return max(MIN_LR, lr) / base_lr


def make_optimizer(groups: int) -> torch.optim.Optimizer:
    params = [{"params": [torch.zeros(1, requires_grad=True)], "lr": 0.1 * (index + 1)} for index in range(groups)]
    optimizer = torch.optim.SGD(params, lr=0.1)
    return optimizer


def build_ours(optimizer: torch.optim.Optimizer) -> LRScheduler:
    return LRScheduler(
        optimizer,
        total_steps=TOTAL_STEPS,
        final_lr_ratio=FINAL_LR_RATIO,
        min_lr=MIN_LR,
        method="cosine",
        warmup_steps=WARMUP_STEPS,
        cooldown_steps=COOLDOWN_STEPS,
    )


def build_lambda(optimizer: torch.optim.Optimizer) -> LambdaLR:
    bases = [group["lr"] for group in optimizer.param_groups]
    return LambdaLR(optimizer, [lambda epoch, base=base: cosine_multiplier(epoch, base) for base in bases])


class PlainLoop:
    """What a user writes without a scheduler: set every group's rate from the step number."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self.step()

    def step(self) -> None:
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * cosine_multiplier(self.last_epoch, base)


BUILDERS: dict[str, Callable[[torch.optim.Optimizer], object]] = {
    "LRScheduler": build_ours,
    "LambdaLR": build_lambda,
    "plain loop": PlainLoop,
}


def check_same_schedule(groups: int, steps: int) -> None:
    """Fail loudly if the schedulers being timed do not produce the same rates."""
    runs = {}
    for name, build in BUILDERS.items():
        optimizer = make_optimizer(groups)
        scheduler = build(optimizer)
        optimizer.step()
        rates = []
        for _ in range(steps):
            rates.append([group["lr"] for group in optimizer.param_groups])
            scheduler.step()
        runs[name] = torch.tensor(rates, dtype=torch.float64)
    for name, rates in runs.items():
        torch.testing.assert_close(rates, runs["LRScheduler"], rtol=1e-12, atol=0.0, msg=f"{name} differs")


def time_per_step(name: str, groups: int, steps: int) -> float:
    optimizer = make_optimizer(groups)
    scheduler = BUILDERS[name](optimizer)
    optimizer.step()  # so torch does not warn that the scheduler stepped first
    step = scheduler.step
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TOTAL_STEPS, help="step() calls per timed run")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timed runs per scheduler")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; cosine schedule over {TOTAL_STEPS} steps; {args.steps} step() calls per run")
    print(f"{'groups':>6}  {'scheduler':<12} {'median us/step':>15} {'vs LambdaLR':>12}")
    for groups in (1, 8):
        check_same_schedule(groups, TOTAL_STEPS)
        samples: dict[str, list[float]] = {name: [] for name in BUILDERS}
        for _ in range(args.repeats):
            for name in BUILDERS:
                samples[name].append(time_per_step(name, groups, args.steps))
        medians = {name: statistics.median(values) for name, values in samples.items()}
        for name, median in medians.items():
            print(f"{groups:>6}  {name:<12} {median * 1e6:>15.2f} {median / medians['LambdaLR']:>11.2f}x")


if __name__ == "__main__":
    main()
