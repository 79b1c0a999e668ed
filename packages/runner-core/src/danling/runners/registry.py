"""Stack registry: find the runner class for a ``stack`` name through entry points.

Runner classes live in separate distributions (``danling-runner-core`` ships
``ddp``, ``danling-runner-deepspeed`` ships ``deepspeed``, ``danling-runner-parallel``
ships ``parallel``).  Each announces its runner in the ``danling.runners`` entry-point
group, so ``Runner(config)`` finds whatever is installed without importing the rest.

>>> normalize_stack_name(" DS ")
'deepspeed'
>>> normalize_stack_name(None)
'ddp'
>>> normalize_stack_name("my-stack")
'my_stack'
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

ENTRY_POINT_GROUP = "danling.runners"

#: Every spelling users may write, mapped to the canonical stack name.
STACK_ALIASES: dict[str, str] = {
    "auto": "ddp",
    "ddp": "ddp",
    "torch": "ddp",
    "deepspeed": "deepspeed",
    "ds": "deepspeed",
    "parallel": "parallel",
}

#: The distribution that provides each built-in stack, for install hints.
STACK_DISTRIBUTIONS: dict[str, str] = {
    "ddp": "danling-runner-core",
    "deepspeed": "danling-runner-deepspeed",
    "parallel": "danling-runner-parallel",
}


class StackNotInstalledError(ImportError):
    """A known stack was requested but the distribution that provides it is not installed."""


def normalize_stack_name(stack: Any) -> str:
    """Lower-case, strip and resolve aliases; ``None`` and ``""`` mean ``auto`` (DDP).

    Unknown names come back normalized (``-`` becomes ``_``) so a third-party entry point
    can register any name.
    """
    name = str(stack or "auto").strip().lower().replace("-", "_")
    return STACK_ALIASES.get(name, name)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(normalize_stack_name(entry_point.name), entry_point)
    return found


def valid_stack_names() -> list[str]:
    """Every name ``resolve_runner_class`` accepts: aliases plus installed third-party stacks."""
    return sorted(set(STACK_ALIASES) | set(_entry_points()))


def resolve_runner_class(stack: Any) -> type:
    """Return the runner class registered for ``stack`` (after alias resolution).

    Raises:
        ValueError: the name is neither a known stack nor an installed entry point.
        StackNotInstalledError: the stack is known but its distribution is missing.
    """
    name = normalize_stack_name(stack)
    entry_point = _entry_points().get(name)
    if entry_point is not None:
        return entry_point.load()
    if name in STACK_DISTRIBUTIONS:
        distribution = STACK_DISTRIBUTIONS[name]
        raise StackNotInstalledError(
            f"stack {stack!r} needs the distribution {distribution!r}, which provides no runner in this "
            f"environment. Install it with: pip install {distribution}",
            name=distribution,
        )
    valid = ", ".join(valid_stack_names())
    raise ValueError(f"Unknown stack: {stack!r}. Valid options are: {valid}")


class _RunnerRegistry(Mapping[str, type]):
    """Read-only ``{stack name: runner class}`` view of the installed entry points.

    Aliases are keys too (``"torch"`` and ``"ddp"`` give the same class); classes load on access.
    """

    def _names(self) -> list[str]:
        installed = _entry_points()
        aliases = [alias for alias, name in STACK_ALIASES.items() if name in installed and alias != "auto"]
        return sorted(set(aliases) | set(installed))

    def __getitem__(self, stack: str) -> type:
        if stack not in self._names():
            raise KeyError(stack)
        return resolve_runner_class(stack)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"RUNNER_REGISTRY({', '.join(self._names())})"


RUNNER_REGISTRY: Mapping[str, type] = _RunnerRegistry()


#: Axes of ``parallel.axes`` that only the ``parallel`` stack honours (the ``ddp`` stack replicates the data).
MODEL_PARALLEL_AXES = ("shard", "context", "pipeline", "tensor", "expert", "expert_tensor")


def check_stack_sections(config: Mapping[str, Any]) -> None:
    r"""
    Refuse settings that only another stack reads, on the ``ddp`` stack (which would ignore them).

    ``fsdp.enabled`` and a ``parallel.axes`` degree other than 1 (except ``replicate``) need
    ``stack: parallel``; a ``deepspeed`` section needs ``stack: deepspeed``.  Other stacks are
    left to check their own settings.

    Examples:
        >>> check_stack_sections({"stack": "ddp", "fsdp": {"enabled": True}})
        Traceback (most recent call last):
        ValueError: fsdp.enabled=True is read by the 'parallel' stack only (danling-runner-parallel); the 'ddp' stack would ignore it: set stack: parallel, or remove it
    """
    if normalize_stack_name(config.get("stack")) != "ddp":
        return
    ignored: list[tuple[str, Any, str]] = []
    fsdp = config.get("fsdp") or {}
    if fsdp.get("enabled"):
        ignored.append(("fsdp.enabled", fsdp.get("enabled"), "parallel"))
    axes = (config.get("parallel") or {}).get("axes") or {}
    ignored.extend(
        (f"parallel.axes.{axis}", axes[axis], "parallel") for axis in MODEL_PARALLEL_AXES if axes.get(axis, 1) != 1
    )
    if config.get("deepspeed"):
        ignored.append(("deepspeed", sorted(config["deepspeed"]), "deepspeed"))
    if ignored:
        key, value, stack = ignored[0]
        raise ValueError(
            f"{key}={value!r} is read by the {stack!r} stack only ({STACK_DISTRIBUTIONS[stack]}); the 'ddp' stack "
            f"would ignore it: set stack: {stack}, or remove it"
        )
