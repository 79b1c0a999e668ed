"""``WindowTotalHook`` on real DDP modules: three processes on a gloo group over loopback.

On all three ranks the totals (large enough that float32 alone would round their sum) must sum
exactly, and gradients must stay those of DDP without a hook up to the order in which the backend
adds the last bucket (three addends are not associative, and a longer bucket is split into chunks
differently).  On a two-rank subgroup, where the order of two addends cannot matter, the
gradients must equal DDP's bit for bit, and the total must be summed over that group only.
"""

from __future__ import annotations

import pytest
import torch
from torch import distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from danling.runners.ddp_comm import WindowTotalHook
from tests.distributed import run_workers

pytestmark = pytest.mark.distributed

#: Per-rank totals beyond float32's exact integers (2**24): only the two-part encoding sums them exactly.
TOTALS = [(1 << 30) + 1, (1 << 30) + 4098, (1 << 30) + 8196]


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 20), nn.Tanh(), nn.Linear(20, 3)).to(dtype)


def _wrap(model, group=None):
    # a tiny bucket cap: several buckets, so only the last one carries the total
    return DistributedDataParallel(model, process_group=group, bucket_cap_mb=0.002)


def _backward(model, rank, dtype=torch.float32):
    generator = torch.Generator().manual_seed(rank)
    inputs = torch.randn(7 + rank, 40, generator=generator).to(dtype)
    model(inputs).pow(2).sum().backward()


def _gradients(model):
    return [parameter.grad.clone() for parameter in model.parameters()]


def _zero(model):
    for parameter in model.parameters():
        parameter.grad = None


def _hooked_backward(rank, group=None):
    plain, hooked = _wrap(_model(), group), _wrap(_model(), group)
    hook = WindowTotalHook(hooked)
    for model in (plain, hooked):  # DDP rebuilds its buckets after the first backward
        hook.carry(1.0)
        _backward(model, rank)
        _zero(model)
    _backward(plain, rank)

    with hooked.no_sync():  # an accumulating micro-batch: DDP reduces nothing, so nothing is carried
        early = hook.carry(float(TOTALS[rank] // 2))
        _backward(hooked, rank)
    late = hook.carry(float(TOTALS[rank]))
    _zero(hooked)  # compare one backward's reduction with the plain module's
    _backward(hooked, rank)
    buckets = len(hooked.reducer._get_zeros_like_grad_buckets())
    pairs = list(zip(_gradients(plain), _gradients(hooked)))

    flagged = hook.carry(2.5 if rank == 1 else 3.0)  # one rank cannot encode its total: every rank falls back
    _backward(hooked, rank)
    again = hook.carry(4.0)
    _backward(hooked, rank)
    return {
        "registered": hook.registered,
        "buckets": buckets,
        "same_gradients": all(torch.equal(a, b) for a, b in pairs),
        "close_gradients": all(torch.allclose(a, b, rtol=1e-6, atol=1e-8) for a, b in pairs),
        "early": early(),
        "late": late(),
        "flagged": flagged(),
        "again": again(),
    }


def _fallbacks(rank, world_size):
    user = _wrap(_model())
    user.register_comm_hook(None, allreduce_hook)  # the user's hook wins
    user_hook = WindowTotalHook(user)
    half = _wrap(_model(torch.bfloat16))  # bf16 buckets cannot carry a count exactly
    half_hook = WindowTotalHook(half)
    carried = (user_hook.carry(5.0), half_hook.carry(5.0))
    _backward(user, rank)
    _backward(half, rank, torch.bfloat16)
    return carried == (None, None), user_hook.registered, half_hook.registered, len(half._comm_hooks)


def _workers(rank, world_size):
    pair = dist.new_group([0, 1])  # every rank creates the group; ranks 0 and 1 train in it
    in_pair = _hooked_backward(rank, pair) if rank < 2 else None
    return _hooked_backward(rank), in_pair, _fallbacks(rank, world_size)


@pytest.fixture(scope="module")
def results():
    return run_workers(_workers, 3, timeout=120)


@pytest.mark.timeout(300)
def test_hooked_gradients_equal_plain_ddp(results):
    for everyone, pair, _ in results:
        assert everyone["registered"] is True
        assert everyone["buckets"] > 1
        assert everyone["close_gradients"]
        if pair is not None:
            assert pair["buckets"] > 1
            assert pair["same_gradients"]


@pytest.mark.timeout(300)
def test_the_window_total_sums_exactly_and_only_in_a_synchronising_backward(results):
    assert sum(TOTALS) % 2 and (TOTALS[0] + TOTALS[1]) % 2  # odd, above 2**24: float32 alone would round them
    for everyone, _, _ in results:
        assert everyone["late"] == float(sum(TOTALS))
        assert everyone["early"] is None  # its backward ran under no_sync
        assert everyone["flagged"] is None
        assert everyone["again"] == 12.0


@pytest.mark.timeout(300)
def test_the_total_is_summed_over_the_ddp_process_group(results):
    pairs = [pair for _, pair, _ in results]
    assert pairs[2] is None
    for pair in pairs[:2]:
        assert pair["late"] == float(TOTALS[0] + TOTALS[1])
        assert pair["again"] == 8.0


@pytest.mark.timeout(300)
def test_no_hook_over_a_users_hook_or_bf16_buckets(results):
    assert [fallback for _, _, fallback in results] == [(True, False, False, 0)] * 3
