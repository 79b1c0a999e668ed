"""FSDP2 settings without a process group: policies from config values, blocks, rejected keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

from danling.runners.parallel_runner.fsdp import apply_fsdp, build_mp_policy, build_offload_policy, fsdp_blocks
from danling.runners.parallel_runner.transformer import Transformer


def test_mp_policy_from_mapping_with_aliases():
    policy = build_mp_policy({"param_dtype": "bf16", "reduce_dtype": "float32", "output_dtype": torch.float16})
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (
        torch.bfloat16,
        torch.float32,
        torch.float16,
    )
    given = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    assert build_mp_policy(given) is given and build_mp_policy(None) is None


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (True, "must be a mapping or a MixedPrecisionPolicy, got bool True"),
        ({"param_dtype": "int8"}, r"param_dtype: unknown dtype 'int8'; expected one of"),
        ({"param_type": "bf16"}, r"fsdp.mp_policy: .*param_type.*valid keys are param_dtype"),
    ],
)
def test_mp_policy_errors(policy, message):
    with pytest.raises(ValueError, match=message):
        build_mp_policy(policy)


def test_offload_policy():
    assert build_offload_policy({"pin_memory": False}) == CPUOffloadPolicy(pin_memory=False)
    with pytest.raises(ValueError, match="must be a mapping or an OffloadPolicy, got str 'cpu'"):
        build_offload_policy("cpu")
    with pytest.raises(ValueError, match="the only key is pin_memory"):
        build_offload_policy({"device": "cpu"})


def test_blocks_are_the_outermost_module_list_entries():
    model = Transformer(vocab_size=5, dim=4, num_layers=3, num_heads=1)
    assert fsdp_blocks(model) == list(model.layers)
    assert fsdp_blocks(nn.Linear(2, 2)) == []


@pytest.mark.skipif(torch.accelerator.is_available(), reason="pinned memory works where an accelerator exists")
def test_pinned_offload_without_accelerator_says_why():
    with pytest.raises(
        ValueError, match=r"pin_memory=True needs an accelerator .* set fsdp.offload_policy.pin_memory=False"
    ):
        apply_fsdp(nn.Linear(2, 2), mesh=None, config={"offload_policy": {"pin_memory": True}})


def test_unknown_fsdp_keys_are_rejected_before_sharding():
    config = {"enabled": True, "cpu_offload": True}  # an FSDP1 option (a RunnerConfig rejects it already)
    with pytest.raises(ValueError, match=r"unsupported fsdp configuration for FSDP2: cpu_offload; valid keys are"):
        apply_fsdp(nn.Linear(2, 2), mesh=None, config=config)
