"""Tensor plans without a process group: styles and layouts from config values, the built-in plans."""

from __future__ import annotations

import pytest
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInputOutput,
    RowwiseParallel,
    SequenceParallel,
)

from danling.runners.parallel_runner.tensor_parallel import build_tp_plan, transformer_block_plan, transformer_plan
from danling.runners.parallel_runner.transformer import Transformer, TransformerBlock


def test_plan_from_config_values():
    plan = build_tp_plan(
        {
            "w1": "colwise",
            "w2": {"style": "Rowwise", "input_layouts": "shard(-1)", "output_layouts": "replicate"},
            "norm": {"style": "sequence-parallel", "sequence_dim": 0},
            "block": {
                "style": "prepare_input",
                "input_layouts": ["replicate", None],
                "desired_input_layouts": ["shard(1)", None],
            },
        }
    )
    assert isinstance(plan["w1"], ColwiseParallel)
    assert plan["w2"].input_layouts == (Shard(-1),) and plan["w2"].output_layouts == (Replicate(),)
    assert isinstance(plan["norm"], SequenceParallel) and plan["norm"].sequence_sharding == (Shard(0),)
    assert plan["block"].input_layouts == (Replicate(), None)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"w1": "diagonal"}, "entry 'w1': unknown style 'diagonal'"),
        (
            {"w1": {"style": "colwise", "output_layouts": "sharded"}},
            "unknown layout 'sharded'; expected 'replicate' or 'shard",
        ),
        ({"w1": {"style": "colwise", "dim": 1}}, "entry 'w1': .*dim"),
        (["w1"], "must be a mapping of module names to styles, got list"),
    ],
)
def test_plan_errors(plan, message):
    with pytest.raises(ValueError, match=message):
        build_tp_plan(plan)


def test_block_plan_names_existing_modules():
    names = {name for name, _ in TransformerBlock(8, 2, 16).named_modules()}
    plan = transformer_block_plan()
    assert set(plan) <= names
    assert isinstance(plan[""], PrepareModuleInputOutput)
    assert isinstance(plan["attention.wo"], RowwiseParallel) and plan["attention.wo"].output_layouts == (Shard(1),)
    assert "" not in transformer_block_plan(boundary=False)


def test_model_plan_names_existing_modules():
    names = {name for name, _ in Transformer(11, 8, 3, 2).named_modules()}
    assert set(transformer_plan(3)) <= names
