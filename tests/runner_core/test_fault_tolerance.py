"""``danling.runners.fault_tolerance`` without a lighthouse: lazy import, errors, the commit protocol.

The replica groups themselves (lighthouse, kill, rejoin, recovery) are tested with real processes
in ``tests/runner_core/distributed/test_torchft.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from danling.runners import BaseRunner
from danling.runners.config import RunnerConfig
from danling.runners.fault_tolerance import FaultTolerance, FTOptimizerContainer, ft_state_dict, load_ft_state_dict

from .toy_runners import ClassifierRunner, base_config

ROOT = Path(__file__).resolve().parents[2]


def epoch_config(tmp_path, **overrides):
    return base_config(tmp_path, epochs=1, optim={"type": "sgd", "lr": 0.1}, dataloader={"batch_size": 8}, **overrides)


def test_a_plain_import_and_run_never_imports_torchft(tmp_path):
    code = f"""
import sys
import danling.runners
from danling.runners import TorchRunner, Runner
from tests.runner_core.toy_runners import ClassifierRunner, base_config
runner = ClassifierRunner(base_config({str(tmp_path)!r}, epochs=1, optim={{"type": "sgd", "lr": 0.1}}))
runner.train()
assert runner.ft is not None and not runner.ft.enabled
runner.close()
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "torchft")
assert not loaded, loaded
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def _runner(**ft) -> SimpleNamespace:
    return SimpleNamespace(config=RunnerConfig(ft=ft), rank=0, world_size=1)


def test_enabled_without_torchft_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchft", None)  # an import of it now fails, as when it is not installed
    with pytest.raises(ImportError, match=r"torchft is not installed.*danling-runner-core\[ft\].*ft.enabled"):
        FaultTolerance(_runner(enabled=True))


def test_enabled_without_a_lighthouse_address_is_refused(monkeypatch):
    pytest.importorskip("torchft")
    monkeypatch.delenv("TORCHFT_LIGHTHOUSE", raising=False)
    with pytest.raises(ValueError, match=r"ft\.lighthouse or TORCHFT_LIGHTHOUSE"):
        FaultTolerance(_runner(enabled=True))


def test_disabled_is_an_inert_handle():
    ft = FaultTolerance(_runner())
    assert not ft.enabled and ft.manager is None and ft.participating_rank() is None
    assert ft.data_parallel_info(4, 1) == (4, 1)
    ft.close()
    ft.close()


def test_enabled_data_shards_count_every_replica_group():
    ft = FaultTolerance(_runner())
    ft.manager, ft.replica_id, ft.group_size = object(), 2, 3  # what an enabled handle holds
    # two ranks per group, three groups: rank 1 of group 2 reads shard 5 of 6
    assert ft.data_parallel_info(2, 1) == (6, 5)


def test_base_runner_still_refuses_ft_settings(tmp_path):
    with pytest.raises(NotImplementedError, match=r"ft\.enabled"):
        BaseRunner({"log": False, "workspace_root": str(tmp_path), "ft": {"enabled": True}})


def test_a_stack_without_torchft_wiring_refuses_ft(tmp_path):
    config = epoch_config(tmp_path, ft={"enabled": True})
    config["stack"] = "deepspeed"

    class Other(ClassifierRunner):  # keeps the stack it is given, as DeepSpeedRunner sets its own
        def __init__(self, config):
            config = RunnerConfig(config)
            BaseRunner.__init__(self, config)

    with pytest.raises(NotImplementedError, match="TorchRunner/DDP and ParallelRunner FSDP only"):
        Other(config)


class FakeManager:
    """Records the protocol calls; ``commit`` is what ``should_commit`` answers."""

    def __init__(self, commit: bool) -> None:
        self.commit, self.calls = commit, []

    def start_quorum(self) -> None:
        self.calls.append("start_quorum")

    def allreduce(self, tensor: torch.Tensor) -> SimpleNamespace:
        # another group whose gradients are all ones: the average is (own + 1) / 2
        self.calls.append(f"allreduce[{tensor.numel()}]")
        tensor.add_(1).div_(2)
        return SimpleNamespace(wait=lambda: True)

    def wait_quorum(self) -> None:
        self.calls.append("wait_quorum")

    def should_commit(self) -> bool:
        self.calls.append("should_commit")
        return self.commit


def _container(commit: bool) -> tuple[torch.nn.Linear, FTOptimizerContainer]:
    model = torch.nn.Linear(2, 1)
    container = FTOptimizerContainer(FakeManager(commit), torch.optim.SGD(model.parameters(), lr=0.1), normalize=True)
    return model, container


@pytest.mark.parametrize("commit", [True, False])
def test_the_update_is_applied_only_when_the_manager_commits(commit):
    model, container = _container(commit)
    before = model.weight.detach().clone()
    for _ in range(2):  # an accumulation window of two micro-batches: one quorum
        container.backward(model(torch.ones(1, 2)).sum())
    assert container.step() is commit
    # the window's item count (2 micro-batches) is averaged over the groups too: (2 + 1) / 2
    assert container.manager.calls == ["start_quorum", "allreduce[1]", "wait_quorum", "should_commit"]
    assert torch.equal(model.weight, before) is not commit
    assert model.weight.grad is None and container.window.total == 0  # gradients dropped either way


def test_a_step_without_backward_has_nothing_to_commit():
    _, container = _container(True)
    assert container.step() is False and container.manager.calls == []


def test_a_peer_state_loads_in_place_and_keeps_the_parameter_groups(tmp_path):
    optim = {"type": "sgd", "lr": 0.1, "momentum": 0.9}
    source, target = (ClassifierRunner(base_config(tmp_path / name, epochs=1, optim=optim)) for name in ("a", "b"))
    source.train()
    groups, parameters = target.optimizer.param_groups, list(target.model.parameters())
    load_ft_state_dict(target, ft_state_dict(source))
    assert target.train_state.global_step == source.train_state.global_step > 0
    for name, value in source.model.state_dict().items():
        assert torch.equal(value, target.model.state_dict()[name]), name
    assert target.optimizer.param_groups is groups and list(target.model.parameters()) == parameters
    assert target.optimizer.state_dict()["state"].keys() == source.optimizer.state_dict()["state"].keys()
    for runner in (source, target):
        runner.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "fsdp.enabled=False"),
        ({"fsdp": {"enabled": True}, "parallel": {"axes": {"tensor": 2}}}, "parallel.axes.tensor=2"),
    ],
)
def test_parallel_ft_needs_fsdp_without_model_parallel_axes(settings, message):
    from danling.runners.fault_tolerance import check_ft_support

    config = RunnerConfig(stack="parallel", ft={"enabled": True}, **settings)
    with pytest.raises(NotImplementedError, match=message):
        check_ft_support(config)
    config.merge({"fsdp": {"enabled": True}, "parallel": {"axes": {"tensor": 1}}})
    check_ft_support(config)


def test_gradients_are_averaged_over_the_groups_in_parameter_order_buckets():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[1].bias.requires_grad_(False)  # frozen: left alone
    manager = FakeManager(commit=True)
    container = FTOptimizerContainer(
        manager, torch.optim.SGD(model.parameters(), lr=0.0), all_reduce_gradients=True, bucket_bytes=6 * 4
    )
    container.backward(model[0](torch.ones(1, 2)).sum())  # the second layer gets no gradient
    own = [parameter.grad.clone() for parameter in model[0].parameters()]
    assert container.step() is True
    # weight (6 numbers) fills one bucket; bias (3) and the missing second-layer weight (3, as zeros) the next
    # then the window's item count
    assert manager.calls == [
        "start_quorum",
        "allreduce[6]",
        "allreduce[6]",
        "allreduce[1]",
        "wait_quorum",
        "should_commit",
    ]
    averaged = [(gradient + 1) / 2 for gradient in own]
    assert [parameter.grad is None for parameter in model.parameters()] == [True] * 4  # zeroed after the step
    container.backward(model[0](torch.ones(1, 2)).sum())
    container.average_over_groups()
    for parameter, expected in zip(model[0].parameters(), averaged):
        assert torch.equal(parameter.grad, expected)
    assert torch.equal(model[1].weight.grad, torch.full((1, 3), 0.5)) and model[1].bias.grad is None
