"""Fixtures of the DeepSpeed tests run in the test process (workers call ``skip_inference_shm_op`` themselves)."""

from __future__ import annotations

import pytest

from tests.runner_deepspeed.toy_runners import skip_inference_shm_op


@pytest.fixture(scope="session")
def deepspeed_ready():
    """DeepSpeed imported, without the CPU inference op it would compile (see ``skip_inference_shm_op``)."""
    skip_inference_shm_op()
