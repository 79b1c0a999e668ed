"""build_deepspeed_config: what the runner's settings fix, and the errors that name a bad key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from danling.runners import RunnerConfig
from danling.runners.deepspeed_runner import DeepSpeedConfigError, build_deepspeed_config
from danling.runners.deepspeed_runner.config import op_compatible, precision_section


def build(user=None, **settings):
    values = {"micro_batch_size": 4, "world_size": 2, "accum_steps": 3, "op_available": lambda op: True}
    values.update(settings)
    return build_deepspeed_config(user, **values)


@given(
    micro=st.integers(1, 64),
    world=st.integers(1, 16),
    accum=st.integers(1, 16),
    norm=st.none() | st.floats(0.01, 100.0),
)
def test_derived_keys_follow_the_runner(micro, world, accum, norm):
    config = build(micro_batch_size=micro, world_size=world, accum_steps=accum, max_grad_norm=norm)
    assert config["train_micro_batch_size_per_gpu"] == micro
    assert config["gradient_accumulation_steps"] == accum
    assert config["train_batch_size"] == micro * accum * world
    assert config["managed_gradient_accumulation"] is False
    assert config["gradient_clipping"] == (0.0 if norm is None else norm)


def test_clipping_is_off_without_max_grad_norm_unless_the_user_sets_it():
    assert build()["gradient_clipping"] == 0.0  # never DeepSpeed's silent default of 1.0
    assert build({"gradient_clipping": 2.0})["gradient_clipping"] == 2.0
    assert build({"gradient_clipping": 0.5}, max_grad_norm=0.5)["gradient_clipping"] == 0.5
    with pytest.raises(DeepSpeedConfigError, match=r"deepspeed.gradient_clipping=2.0 conflicts with max_grad_norm=0.5"):
        build({"gradient_clipping": 2.0}, max_grad_norm=0.5)


def test_user_keys_are_kept_and_never_modified():
    user = RunnerConfig({"deepspeed": {"zero_optimization": {"stage": 1}, "steps_per_print": 7}}).deepspeed
    config = build(user, precision="bf16")
    assert config["zero_optimization"] == {"stage": 1} and config["steps_per_print"] == 7
    assert config["bf16"] == {"enabled": True}
    assert "bf16" not in user and "train_batch_size" not in user
    assert type(config["zero_optimization"]) is dict


@pytest.mark.parametrize(
    ("user", "settings", "message"),
    [
        ({"train_batch_size": 12}, {}, r"deepspeed.train_batch_size=12 conflicts with micro batch 4 x accum_steps 3"),
        ({"train_micro_batch_size_per_gpu": 8}, {}, r"train_micro_batch_size_per_gpu=8 conflicts with dataloader"),
        ({"gradient_accumulation_steps": 1}, {}, r"gradient_accumulation_steps=1 conflicts with accum_steps=3"),
        ({"managed_gradient_accumulation": True}, {}, r"managed_gradient_accumulation=True conflicts"),
        ({}, {"micro_batch_size": None}, r"the micro batch size is unknown; set dataloader.batch_size"),
        ({"train_batch_size": 10}, {"micro_batch_size": None}, r"train_batch_size=10 is not divisible"),
        ({"bf16": {"enabled": True}}, {}, r"deepspeed.bf16.enabled=True conflicts with precision=None"),
        ({"bf16": {"enabled": False}}, {"precision": "bf16"}, r"bf16.enabled=False conflicts with precision='bf16'"),
        ({"fp16": True}, {}, r"deepspeed.fp16 must be a mapping"),
        ({}, {"precision": "fp16", "device_type": "cpu"}, r"precision='fp16' \(deepspeed.fp16\) is not supported"),
        ({}, {"precision": "int4"}, r"precision='int4' is not supported by DeepSpeedRunner"),
        ({"zero_optimization": {"stage": 4}}, {}, r"zero_optimization.stage=4 is invalid; expected one of 0, 1, 2, 3"),
        ({"zero_optimization": {"stage": "2"}}, {}, r"zero_optimization.stage='2' is invalid"),
        ({"zero_optimization": 2}, {}, r"deepspeed.zero_optimization must be a mapping, got 2"),
        (
            {"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}},
            {},
            r"offload_param.device='cpu' needs ZeRO stage >= 3, got stage 2",
        ),
        (
            {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "disk"}}},
            {},
            r"offload_optimizer.device='disk' is invalid; expected one of none, cpu, nvme",
        ),
        ({"optimizer": {"type": "Adam"}}, {}, r"deepspeed.optimizer is set and the runner has an optimizer"),
        ({"scheduler": {"type": "WarmupLR"}}, {"client_scheduler": True}, r"deepspeed.scheduler is set and the runner"),
        ([("stage", 2)], {}, r"config.deepspeed must be a mapping of DeepSpeed settings"),
    ],
)
def test_bad_keys_name_the_key_and_the_values(user, settings, message):
    with pytest.raises(DeepSpeedConfigError, match=message):
        build(user, **settings)


def test_fp16_is_accepted_on_an_accelerator():
    assert build(precision="half", device_type="cuda")["fp16"] == {"enabled": True}


def test_optimizer_and_scheduler_sections_without_runner_ones():
    config = build({"optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"}}, client_optimizer=False)
    assert config["optimizer"] == {"type": "AdamW"} and config["scheduler"] == {"type": "WarmupLR"}


def test_offload_needs_the_extension_it_names():
    asked = []

    def only_cpu_adam(op):
        asked.append(op)
        return op == "cpu_adam"

    zero = {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "nvme"}}
    with pytest.raises(DeepSpeedConfigError, match=r"offload_param.device='nvme' needs DeepSpeed's 'async_io'"):
        build({"zero_optimization": zero}, op_available=only_cpu_adam)
    assert asked == ["cpu_adam", "async_io"]
    zero["offload_param"] = {"device": "none"}
    assert build({"zero_optimization": zero}, op_available=only_cpu_adam)["zero_optimization"] == zero


def test_offload_check_asks_deepspeed_for_real():
    """With DeepSpeed's own op check: nvme offload is accepted exactly where async_io can be built."""
    zero = {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/tmp"}}
    settings = {"micro_batch_size": 4, "op_available": op_compatible}
    if op_compatible("async_io"):
        assert build_deepspeed_config({"zero_optimization": zero}, **settings)["zero_optimization"] == zero
    else:
        with pytest.raises(DeepSpeedConfigError, match="'async_io' extension, which cannot be built here"):
            build_deepspeed_config({"zero_optimization": zero}, **settings)


def test_precision_spellings():
    assert [precision_section(name) for name in ("bf16", "BFloat16", "fp16", "float16", "half", "fp32", None)] == [
        "bf16",
        "bf16",
        "fp16",
        "fp16",
        "fp16",
        None,
        None,
    ]
