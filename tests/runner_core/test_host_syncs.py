"""The training step reads nothing back from tensors except the loss, on the log cadence, and where a feature needs it.

On an accelerator, ``.item()``, ``float()``, ``bool()``, ``int()`` or ``.tolist()`` of a tensor waits for
every queued kernel.  Here every such read made by danling's own code during ``train()`` is counted
(reads inside torch and the data loader's sampler, once per pass, are not the runner's).  On the CPU the
loop reads each loss at once (the meter's cheap path; nothing to wait for); on an accelerator the loss
meter keeps it on the device (see the meters' tests).  So two runs that differ only in their number of
steps differ by exactly one read per step, and a feature that needs a read adds exactly one per step.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import danling
from tests.runner_core.toy_runners import ClassifierRunner, base_config

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
SOURCES = tuple(os.path.dirname(path) for path in danling.__path__)  # every member's `danling` folder


@pytest.fixture
def host_reads(monkeypatch):
    """Count host reads of tensors made directly by danling code while ``counting`` is on."""
    state = {"count": 0, "counting": False}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if state["counting"] and sys._getframe(1).f_code.co_filename.startswith(SOURCES):
                state["count"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return state


def train_counting(tmp_path, host_reads, **overrides) -> int:
    # step mode, one progress line, no checkpoint before the final one
    values = dict(log_interval=overrides.get("steps"), optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 4})
    values.update(overrides)
    runner = ClassifierRunner(base_config(tmp_path, **values), samples=800)  # one pass holds every step
    host_reads["counting"], host_reads["count"] = True, 0
    try:
        runner.train()
    finally:
        host_reads["counting"] = False
    assert runner.train_state.global_step == values["steps"]
    runner.close()
    return host_reads["count"]


def test_each_step_reads_only_its_loss(tmp_path, host_reads):
    hundred = train_counting(tmp_path / "100", host_reads, steps=100)
    two_hundred = train_counting(tmp_path / "200", host_reads, steps=200)
    assert two_hundred - hundred == 100
    assert hundred - 100 < 20  # the progress line, the evaluation and the results read a few numbers once


def test_nonfinite_skip_reads_once_more_per_step(tmp_path, host_reads):
    plain = train_counting(tmp_path / "plain", host_reads, steps=100)
    skipping = train_counting(tmp_path / "skip", host_reads, steps=100, skip_nonfinite_grad=True)
    assert skipping - plain == 100
