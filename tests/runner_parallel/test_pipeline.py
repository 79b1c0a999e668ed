"""Pipeline stage layout, splitting and micro-batch weighting, without processes (pure logic)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from danling.data import StepProxyLoader
from danling.runners.parallel_runner.pipeline import (
    ModelPart,
    PipelineModel,
    even_split,
    split_model_parts,
    stage_indices,
)
from danling.runners.parallel_runner.pipeline_schedule import (
    MicrobatchLoss,
    PipelineGradientWindow,
    resolve_n_microbatches,
    schedule_class,
    stage_style,
)
from danling.runners.parallel_runner.transformer import Transformer


@given(degree=st.integers(1, 6), per_rank=st.integers(1, 4), style=st.sampled_from(["loop", "v"]))
def test_every_stage_runs_on_exactly_one_rank(degree, per_rank, style):
    assume(style == "loop" or per_rank == 2)
    stages = [index for rank in range(degree) for index in stage_indices(rank, degree, degree * per_rank, style)]
    assert sorted(stages) == list(range(degree * per_rank))


def test_v_shaped_stages_put_the_first_and_last_on_rank_zero():
    assert stage_indices(0, 4, 8, "v") == (0, 7) and stage_indices(3, 4, 8, "v") == (3, 4)
    assert stage_style(schedule_class("ZBVZeroBubble")) == "v" and stage_style(schedule_class("1F1B")) == "loop"


def test_unknown_schedule_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"invalid parallel.pipeline_schedule: .*'Foo'.*'GPipe'"):
        schedule_class("Foo")


@given(units=st.integers(1, 12), stages=st.integers(1, 12))
def test_even_split_is_contiguous_and_balanced(units, stages):
    assume(stages <= units)
    model = nn.Sequential(*(nn.Linear(1, 1) for _ in range(units)))
    split = even_split(model, stages)
    assert [name for stage in split for name in stage] == [str(index) for index in range(units)]
    assert max(map(len, split)) - min(map(len, split)) <= 1


def test_even_split_counts_block_list_entries():
    model = Transformer(vocab_size=5, dim=4, num_layers=3, num_heads=2)
    assert even_split(model, 2) == [["embedding", "layers.0", "layers.1"], ["layers.2", "norm", "output"]]
    with pytest.raises(ValueError, match="cannot split Transformer into 7 pipeline stages: it has 6"):
        even_split(model, 7)


def test_parts_run_the_whole_model_stage_after_stage_under_its_names():
    torch.manual_seed(0)
    model = Transformer(vocab_size=5, dim=4, num_layers=3, num_heads=2)
    tokens = torch.randint(0, 5, (2, 3))
    parts = [split_model_parts(model, (index,), 3)[0] for index in range(3)]
    output = tokens
    for part in parts:
        output = part(output)
    torch.testing.assert_close(output, model(tokens))
    names = [name for part in parts for name in part.state_dict()]
    assert sorted(names) == sorted(model.state_dict())
    assert isinstance(parts[0].layers, nn.ModuleList)  # FSDP and activation checkpointing find the blocks


def test_module_names_per_stage_are_checked():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"has no module\(s\) \['9'\]"):
        ModelPart(model, ["0", "9"])
    with pytest.raises(ValueError, match="selects the root module"):
        ModelPart(model, [""])
    with pytest.raises(ValueError, match="names a module twice"):
        ModelPart(model, ["0", "0"])
    with pytest.raises(ValueError, match="has 2 stages, expected 3"):
        split_model_parts(model, (0,), 3, [["0"], ["1", "2"]])
    tied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tied[1].weight = tied[0].weight
    with pytest.raises(ValueError, match="stages cannot share parameters"):
        split_model_parts(tied, (0,), 2, [["0"], ["1"]])


def test_model_hook_builds_its_own_parts():
    class Hooked(nn.Sequential):
        def build_pipeline_model_part(self, stage_index, num_stages, module_fqns, parallel):
            return self[stage_index]

    model = Hooked(nn.Linear(2, 2), nn.Linear(2, 2))
    assert split_model_parts(model, (1,), 2)[0] is model[1]

    class Broken(nn.Sequential):
        def build_pipeline_model_part(self, **kwargs):
            return "stage"

    with pytest.raises(TypeError, match=r"must return an nn\.Module or None, got str"):
        split_model_parts(Broken(nn.Linear(2, 2)), (0,), 2)


def test_pipeline_model_switches_every_part_and_refuses_calls():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Linear(2, 2))
    local = PipelineModel(split_model_parts(model, (0,), 2, [["0", "1"], ["2"]]))
    local.eval()
    assert not any(module.training for part in local.parts for module in part.modules())
    with pytest.raises(RuntimeError, match="is not called directly"):
        local(torch.ones(1, 2))


def test_microbatch_count():
    assert resolve_n_microbatches(8, 2, None, 2) == 4
    with pytest.warns(RuntimeWarning, match="2 pipeline micro-batches for 4 pipeline ranks"):
        resolve_n_microbatches(8, 4, None, 4)
    with pytest.raises(ValueError, match="pipeline_n_microbatches must be a positive integer, got 0"):
        resolve_n_microbatches(8, 1, 0)
    with pytest.raises(ValueError, match=r"set parallel\.pipeline_n_microbatches or dataloader\.batch_size"):
        resolve_n_microbatches(None)


@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), ignored=st.integers(0, 3), scale=st.floats(0.5, 4))
def test_microbatch_losses_add_up_to_the_batch_loss(sizes, ignored, scale):
    generator = torch.Generator().manual_seed(len(sizes))
    logits = torch.randn(sum(sizes), 3, generator=generator)
    target = torch.randint(0, 3, (sum(sizes),), generator=generator)
    target[: min(ignored, sum(sizes) - 1)] = -100  # ignored tokens: micro-batches of unequal weight
    criterion = nn.CrossEntropyLoss()
    loss = MicrobatchLoss(criterion)
    loss.begin(target, scale)
    parts = [loss(output, chunk) for output, chunk in zip(logits.split(sizes), target.split(sizes))]
    parts = [part for part in parts if not part.isnan()]  # a micro-batch of ignored tokens only
    torch.testing.assert_close(sum(parts), criterion(logits, target) * scale)


def test_window_sums_nothing_without_data_parallelism():
    window = PipelineGradientWindow()
    window.pending = 4
    assert window.loss_scale() == 4.0
    window.record(6.0)
    assert window.gradient_scale(world_size=4) == 0.1  # 1 / (4 + 6): no all-reduce over the pipeline


class _TwoDataRanks:
    """A stand-in ``ParallelContext`` whose other data rank counted 6 items."""

    def degree(self, domain):
        return 2 if domain == "loss" else 1

    def all_reduce(self, tensor, domain):
        assert domain == "loss"
        return tensor.add_(6.0)


def test_window_sums_totals_over_the_data_ranks():
    window = PipelineGradientWindow(parallel=_TwoDataRanks())
    window.record(4.0)
    assert window.gradient_scale(world_size=4) == 2 / (4 + 6)  # FSDP's mean over 2 ranks makes it 1 / 10


def test_step_proxy_loader_rejects_a_bad_position():
    proxy = StepProxyLoader([1, 2])
    with pytest.raises(ValueError, match=r"expected \{'position': 0..2\}, got \{'position': 5\}"):
        proxy.load_state_dict({"position": 5})
