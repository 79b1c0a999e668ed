"""ParallelRunner in one process: stack, checkpoint format, properties, refused resumes, DCP round trip."""

from __future__ import annotations

import pytest
import torch

from danling.runners import Runner
from danling.runners.parallel_runner import ParallelRunner
from danling.runners.parallel_runner.gradients import ParallelOptimizerContainer
from tests.runner_parallel.runners import TransformerRunner, config, full_parameters


@pytest.fixture
def runner(tmp_path):
    runner = TransformerRunner(config(str(tmp_path), 8, epochs=1, fsdp={"enabled": True}))
    yield runner
    runner.close()


def test_stack_format_and_properties(runner):
    assert runner.config.stack == "parallel" and runner.config.checkpoint.backend == "dcp"
    assert type(runner.checkpoint_manager).__name__ == "DCPCheckpointManager"
    assert isinstance(runner.optimizer_container, ParallelOptimizerContainer)
    assert (runner.shard_degree, runner.tensor_degree, runner.data_degree, runner.data_rank) == (1, 1, 1, 0)
    assert runner.tensor_group is None and runner.device_mesh is None and runner.model_parallel_axes == ()
    assert runner.parallel_axes_state() == dict.fromkeys(runner.topology.axes, 1)
    assert runner.fsdp_enabled and runner.fsdp_mode == "full_shard"
    assert runner.reduce(torch.tensor([2.0])).item() == 2.0


class _Tiny(Runner):
    def __init__(self, config):
        super().__init__(config)
        self.model = torch.nn.Linear(2, 1)


def test_runner_dispatch_builds_a_parallel_runner(tmp_path):
    runner = _Tiny({"stack": "parallel", "log": False, "workspace_root": str(tmp_path)})
    assert isinstance(runner, ParallelRunner) and runner.config.stack == "parallel"
    runner.close()


def test_file_backend_becomes_dcp_with_a_warning(tmp_path):
    with pytest.warns(
        RuntimeWarning,
        match=r"TransformerRunner stores sharded state with DCP: checkpoint.backend='file' becomes 'dcp'",
    ):
        runner = TransformerRunner(config(str(tmp_path), 8, checkpoint={"backend": "file", "async_mode": "disabled"}))
    assert runner.config.checkpoint.backend == "dcp"
    runner.close()


def test_topology_errors_name_axes_product_and_world_size(tmp_path):
    with pytest.raises(ValueError, match=r"WORLD_SIZE\(1\) must equal .*tensor\(2\).* = 2"):
        TransformerRunner(config(str(tmp_path), 8, parallel={"axes": {"tensor": 2}}))


def test_resume_on_an_incompatible_mesh_is_refused(runner):
    state = runner.state_dict()
    state["parallel"]["axes"]["tensor"] = 2  # as if saved with tensor parallelism
    with pytest.raises(ValueError, match=r"parallel.axes.tensor was 2 when it was saved and is 1 now"):
        runner.load_checkpoint(state)


def test_dcp_round_trip_in_one_process(runner, tmp_path):
    runner.train()
    trained = full_parameters(runner)
    fresh = TransformerRunner(config(str(tmp_path / "fresh"), 8, epochs=1, fsdp={"enabled": True}))
    fresh.load_checkpoint(runner.checkpoint_manager.resolve("latest"))
    restored = full_parameters(fresh)
    assert fresh.train_state.global_step == runner.train_state.global_step == 2
    assert all(torch.equal(restored[name], value) for name, value in trained.items())
    assert fresh.optimizer.state_dict()["state"][0]["step"] == 2
    fresh.close()


def test_fp16_steps_through_a_grad_scaler(tmp_path):
    runner = TransformerRunner(config(str(tmp_path), 8, epochs=1, precision="fp16"))
    before = full_parameters(runner)
    runner.train()
    after = full_parameters(runner)
    runner.close()
    assert type(runner.scaler) is torch.amp.GradScaler  # one process; two get a ShardedGradScaler
    assert runner.train_state.global_step == 2 and any(not torch.equal(before[k], after[k]) for k in before)
