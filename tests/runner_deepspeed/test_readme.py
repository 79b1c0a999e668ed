"""The README's opening example runs as written (in a temporary working directory)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "packages" / "runner-deepspeed" / "README.md"


def test_readme_example_trains_and_saves(tmp_path, monkeypatch, capsys, deepspeed_ready):
    example = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)  # the example writes under ./experiments
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    loss, steps = re.findall(r"(\S+) (\d+)$", capsys.readouterr().out, re.MULTILINE)[-1]  # the example's print
    assert int(steps) == 5 * 256 // (16 * 2)
    assert float(loss) < namespace["results"][0]["val"]["loss"]
    (checkpoints,) = tmp_path.glob("experiments/*/*/checkpoints")
    assert (checkpoints / "model.safetensors").is_file() and (checkpoints / "latest.pointer").is_file()
