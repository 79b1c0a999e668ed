"""Which topology changes a resume allows, and the messages of those it refuses."""

from __future__ import annotations

import pytest

from danling.runners.parallel_runner.resume import check_resumable, topology_metadata
from danling.runners.parallel_runner.topology import AXES

ONE = dict.fromkeys(AXES, 1)


def _axes(**degrees):
    return {**ONE, **degrees}


@pytest.mark.parametrize(
    ("saved", "current", "changed"),
    [
        (_axes(shard=2), _axes(), ["shard"]),  # FSDP 2 -> 1
        (_axes(), _axes(shard=2), ["shard"]),  # 1 -> 2
        (_axes(replicate=2, shard=2), _axes(shard=4), ["replicate", "shard"]),
        (_axes(context=2), _axes(shard=2), ["shard", "context"]),
        (_axes(tensor=2), _axes(tensor=2), []),
    ],
)
def test_reshardable_changes_pass(saved, current, changed):
    assert check_resumable(topology_metadata(saved, fsdp=True), current) == changed


@pytest.mark.parametrize("axis", ["pipeline", "tensor", "expert", "expert_tensor"])
def test_other_axes_are_refused_by_name(axis):
    with pytest.raises(ValueError) as error:
        check_resumable({"axes": _axes(**{axis: 2})}, _axes(shard=2))
    message = str(error.value)
    assert message.startswith(
        f"cannot resume this checkpoint: parallel.axes.{axis} was 2 when it was saved and is 1 now"
    )
    assert f"Resume with parallel.axes.{axis}=2, or set parallel.allow_degree_change=True" in message


def test_several_refused_axes_are_all_named():
    with pytest.raises(ValueError, match=r"pipeline was 1 when it was saved and is 2 now, tensor 2 -> 1;"):
        check_resumable({"axes": _axes(tensor=2)}, _axes(pipeline=2))


def test_allowed_degree_change_warns():
    with pytest.warns(RuntimeWarning, match="resuming with changed parallel degrees tensor"):
        assert check_resumable({"axes": _axes(tensor=2)}, _axes(shard=2), allow_degree_change=True) == [
            "shard",
            "tensor",
        ]


def test_checkpoints_without_topology_are_not_checked():
    assert check_resumable(None, _axes(tensor=2)) == []
    assert check_resumable({"fsdp": True}, _axes(tensor=2)) == []
