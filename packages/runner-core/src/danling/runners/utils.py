"""Small runner helpers: the run mode, run identity (time string, git hash) and process ranks.

- ``RunnerMode``: ``train`` / ``evaluate`` / ``infer``.
- ``get_time_str()``: a short, sortable-within-a-week timestamp for file names.
- ``get_git_hash()`` / ``get_git_diff()``: the code version of the working directory.
- ``get_rank()``, ``get_local_rank()``, ``get_world_size()``, ``is_main_process()``: this
  process's place in the job, from ``torch.distributed`` when it is initialised, else from the
  ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` environment variables.
- ``on_main_process`` / ``on_local_main_process``: run a function on one process only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from functools import wraps
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        """``str`` enum whose members compare and format as their values."""

        def __str__(self) -> str:
            return str(self.value)


Function = TypeVar("Function", bound=Callable[..., Any])

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class RunnerMode(StrEnum):
    r"""
    What the runner is doing; the value is the lower-case name.

    Examples:
        >>> RunnerMode("evaluate") is RunnerMode.evaluate, f"{RunnerMode.train}"
        (True, 'train')
    """

    train = "train"
    evaluate = "evaluate"
    infer = "infer"


def base62(number: int) -> str:
    r"""
    ``number`` (non-negative) written in base 62 with digits ``0-9A-Za-z``.

    Examples:
        >>> base62(0), base62(61), base62(62)
        ('0', 'z', '10')
    """
    if number < 0:
        raise ValueError(f"base62 needs a non-negative integer, got {number}")
    digits = []
    while True:
        number, remainder = divmod(number, 62)
        digits.append(_BASE62[remainder])
        if number == 0:
            return "".join(reversed(digits))


def get_time_str(now: datetime | None = None) -> str:
    r"""
    A compact timestamp: ISO week, weekday, hour, minute, second, microsecond, each in base 62.

    Examples:
        >>> get_time_str(datetime(2024, 1, 1, 0, 0, 0, 0))
        '110000'
    """
    now = now or datetime.now()
    parts = (*now.isocalendar()[1:], now.hour, now.minute, now.second, now.microsecond)
    return "".join(base62(part) for part in parts)


def _git(*args: str, cwd: str | None = None) -> bytes | None:
    try:
        completed = subprocess.run(["git", *args], cwd=cwd or os.getcwd(), capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout


def get_git_hash(cwd: str | None = None) -> str | None:
    r"""
    The short commit hash of the git checkout holding ``cwd`` (default: the working directory).

    A tree with uncommitted changes to tracked files gets a suffix from the hash of its diff,
    ``"{sha8}-d{diff_sha10}"``, so runs of different uncommitted code do not share an id.
    ``None`` outside a git checkout or without a ``git`` executable.
    """
    head = _git("rev-parse", "HEAD", cwd=cwd)
    if not head:
        return None
    sha = head.decode().strip()[:8]
    status = _git("status", "--porcelain=v1", "--untracked-files=no", cwd=cwd)
    if not status:
        return sha
    diff = _git("diff", "HEAD", "--binary", cwd=cwd) or status
    return f"{sha}-d{hashlib.sha1(diff).hexdigest()[:10]}"


def get_git_diff(cwd: str | None = None) -> str | None:
    """``git diff HEAD --binary`` of the checkout holding ``cwd``, or ``None`` outside git."""
    diff = _git("diff", "HEAD", "--binary", cwd=cwd)
    return None if diff is None else diff.decode(errors="replace")


def _distributed_initialized() -> bool:
    distributed = sys.modules.get("torch.distributed")  # never import torch just to ask
    return distributed is not None and distributed.is_available() and distributed.is_initialized()


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    if _distributed_initialized():
        return sys.modules["torch.distributed"].get_rank()
    return int(os.getenv("RANK", "0"))


def get_world_size() -> int:
    """Number of processes in the job (1 when not distributed)."""
    if _distributed_initialized():
        return sys.modules["torch.distributed"].get_world_size()
    return int(os.getenv("WORLD_SIZE", "1"))


def get_local_rank() -> int:
    """Rank of this process on its machine (0 when not distributed)."""
    return int(os.getenv("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process has global rank 0."""
    return get_rank() == 0


def is_local_main_process() -> bool:
    """Whether this process has local rank 0 (the first process on its machine)."""
    return get_local_rank() == 0


def on_main_process(func: Function) -> Function:
    r"""
    Run ``func`` only on the global main process; elsewhere the call returns ``None``.

    Works for functions and methods alike.  Use it for writes that one process must do (results
    files, metadata); never for collective operations, which every rank must enter.

    Examples:
        >>> @on_main_process
        ... def write_summary():
        ...     return "written"
        >>> write_summary()
        'written'
    """

    @wraps(func)
    def main_only(*args: Any, **kwargs: Any) -> Any:
        if is_main_process():
            return func(*args, **kwargs)
        return None

    return main_only  # type: ignore[return-value]


def on_local_main_process(func: Function) -> Function:
    """Run ``func`` only on the first process of each machine; elsewhere return ``None``."""

    @wraps(func)
    def local_main_only(*args: Any, **kwargs: Any) -> Any:
        if is_local_main_process():
            return func(*args, **kwargs)
        return None

    return local_main_only  # type: ignore[return-value]
