"""Topology arithmetic: axis resolution, each validation error, rank layout and domains (no process group)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from danling.runners.config_sections import ParallelAxesConfig
from danling.runners.parallel_runner.topology import AXES, ParallelContext, build_topology


def test_auto_fill_resolves_one_axis_and_keeps_the_config():
    axes = ParallelAxesConfig(shard=-1, tensor=2)
    topology = build_topology(axes, world_size=8, rank=0)
    assert topology.axes == {
        "replicate": 1,
        "shard": 4,
        "context": 1,
        "pipeline": 1,
        "tensor": 2,
        "expert": 1,
        "expert_tensor": 1,
    }
    assert axes.shard == -1
    assert topology.axis_names == AXES and topology.mesh_shape == (1, 4, 1, 1, 2, 1, 1)


def test_product_mismatch_names_axes_product_and_world_size():
    with pytest.raises(ValueError) as error:
        build_topology({"shard": 2, "tensor": 2}, world_size=8)
    message = str(error.value)
    assert "WORLD_SIZE(8)" in message and "= 4" in message
    assert "shard(2)" in message and "tensor(2)" in message and "replicate(1)" in message


def test_two_auto_axes_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"at most one axis degree may be -1 .* got shard=-1, tensor=-1"):
        build_topology({"shard": -1, "tensor": -1}, world_size=4)


def test_auto_fill_must_divide_the_world_size():
    with pytest.raises(
        ValueError,
        match=r"WORLD_SIZE\(6\) must be divisible by the known axis product .*tensor\(4\).* = 4 to fill shard=-1",
    ):
        build_topology({"shard": -1, "tensor": 4}, world_size=6)


@pytest.mark.parametrize("degree", [0, -2, 1.5, True, "2"])
def test_bad_degrees_name_the_axis(degree):
    with pytest.raises(ValueError, match=rf"positive integers .* got pipeline={degree!r}"):
        build_topology({"pipeline": degree}, world_size=1)


def test_unknown_axes_world_size_and_rank():
    with pytest.raises(ValueError, match=r"unknown axes \['data'\]; valid axes are"):
        build_topology({"data": 2}, world_size=2)
    with pytest.raises(ValueError, match="WORLD_SIZE must be a positive integer, got 0"):
        build_topology({}, world_size=0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        build_topology({"shard": 2}, world_size=2, rank=2)
    with pytest.raises(ValueError, match="domain 'mixed' must list some of the axes"):
        build_topology({}, world_size=1, domains={"mixed": ("shard", "batch")})


def test_rank_layout_is_row_major_with_tensor_fastest():
    # replicate=2, shard=2, tensor=2: rank = replicate*4 + shard*2 + tensor
    coordinates = [build_topology({"replicate": 2, "shard": 2, "tensor": 2}, 8, rank).coordinates for rank in range(8)]
    assert [(c["replicate"], c["shard"], c["tensor"]) for c in coordinates] == [
        (r, s, t) for r in range(2) for s in range(2) for t in range(2)
    ]


def test_domains():
    topology = build_topology({"replicate": 2, "shard": 2, "context": 2, "tensor": 2}, world_size=16, rank=13)
    # rank 13 = replicate 1, shard 1, context 0, tensor 1
    assert topology.domain_degree("data") == 4 and topology.domain_rank("data") == 3
    assert topology.domain_degree("loss") == 8 and topology.domain_rank("loss") == 6
    assert topology.domain_degree("model") == 2 and topology.domain_rank("model") == 1
    assert topology.domain_degree("optimizer") == 16 and topology.domain_rank("optimizer") == 13
    assert topology.domain_degree("tensor") == 2
    with pytest.raises(KeyError, match="unknown parallel domain 'everything'"):
        topology.domain_degree("everything")


def test_rank_from_coordinates_errors():
    topology = build_topology({"shard": 2, "pipeline": 2}, world_size=4)
    assert topology.rank_from_coordinates({"pipeline": 1}) == 1
    with pytest.raises(ValueError, match=r"unknown axes \['stage'\]"):
        topology.rank_from_coordinates({"stage": 0})
    with pytest.raises(ValueError, match=r"pipeline=2 is outside \[0, 2\)"):
        topology.rank_from_coordinates({"pipeline": 2})


@given(st.lists(st.sampled_from([1, 2, 3]), min_size=len(AXES), max_size=len(AXES)), st.data())
def test_coordinates_round_trip(degrees, data):
    world_size = math.prod(degrees)
    assume(world_size <= 64)
    rank = data.draw(st.integers(0, world_size - 1))
    topology = build_topology(dict(zip(AXES, degrees)), world_size, rank)
    assert topology.rank_from_coordinates(topology.coordinates) == rank
    assert 0 <= topology.domain_rank("data") < topology.domain_degree("data")


def test_context_without_mesh():
    context = ParallelContext(build_topology({"shard": 2}, world_size=2, rank=1))
    assert context.degree("data") == 2 and context.rank("data") == 1 and context.group("shard") is None
    assert context.all_reduce(torch.ones(1)).item() == 1.0
    with pytest.raises(RuntimeError, match="has no device mesh"):
        context.submesh("data")
    with pytest.raises(KeyError, match="unknown parallel axis 'data'"):
        context.group("data")
