"""Collection rules for the whole workspace.

Backend runner distributions are optional: where DeepSpeed or TorchFT is not installed (the
``tests(torch='2.6')`` nox session, a user's checkout without the extras), their tests and
their modules' doctests are not collected instead of failing on import.
"""

from __future__ import annotations

import importlib.util

collect_ignore_glob: list[str] = []

if importlib.util.find_spec("deepspeed") is None:
    collect_ignore_glob += ["packages/runner-deepspeed/*", "tests/runner_deepspeed/*"]
if importlib.util.find_spec("torchft") is None:
    collect_ignore_glob += ["packages/runner-parallel/*", "tests/runner_parallel/*"]
