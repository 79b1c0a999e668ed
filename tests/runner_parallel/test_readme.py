"""The README's example, run as it says: ``torchrun --nproc-per-node 2`` (two CPU processes, gloo)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "packages" / "runner-parallel" / "README.md"


@pytest.mark.distributed
def test_readme_example_trains_with_torchrun(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    shard_degree, steps, loss = done.stdout.strip().splitlines()[-1].split()[-3:]
    assert (shard_degree, steps) == ("2", "32") and float(loss) > 0
    assert list(tmp_path.rglob("checkpoints/model.safetensors"))  # the final save's export
