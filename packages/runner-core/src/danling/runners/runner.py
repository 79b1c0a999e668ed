"""``Runner``: build the runner class that ``config.stack`` names.

``Runner(config)`` returns an instance of the concrete runner registered for the stack
(``TorchRunner`` for ``"auto"``, ``"ddp"`` and ``"torch"``; ``DeepSpeedRunner`` and
``ParallelRunner`` when their distributions are installed).  Subclass ``Runner`` to write a
training script once and switch backends from the config: ``class MyRunner(Runner)`` runs on
whichever backend ``config.stack`` names, with ``MyRunner``'s methods taking precedence.
``RUNNER_REGISTRY`` is the read-only ``{stack: runner class}`` view of what is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base_runner import BaseRunner
from .registry import RUNNER_REGISTRY, normalize_stack_name, resolve_runner_class

__all__ = ["RUNNER_REGISTRY", "Runner"]

_COMBINED: dict[tuple[type, type], type] = {}


class Runner(BaseRunner):
    r"""
    A runner whose backend is chosen by ``config.stack`` through the ``danling.runners`` entry points.

    Examples:
        >>> import tempfile
        >>> from torch import nn
        >>> class Tiny(Runner):
        ...     def __init__(self, config):
        ...         super().__init__(config)
        ...         self.model = nn.Linear(2, 1)
        >>> runner = Tiny({"stack": "torch", "log": False, "workspace_root": tempfile.mkdtemp()})
        >>> [cls.__name__ for cls in type(runner).__mro__[:4]], runner.config.stack
        (['Tiny', 'Tiny', 'Runner', 'TorchRunner'], 'ddp')
        >>> runner.close()
        True
        >>> Runner.resolve_stack({"stack": "DS"})
        'deepspeed'
    """

    def __new__(cls, config: Mapping[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        runner_cls = cls.resolve_runner_class(config if config is not None else {})
        if cls is Runner:
            return runner_cls(config, *args, **kwargs)
        combined = _COMBINED.get((cls, runner_cls))
        if combined is None:
            combined = type(cls.__name__, (cls, runner_cls), {"__module__": cls.__module__, "__doc__": cls.__doc__})
            _COMBINED[(cls, runner_cls)] = combined
        return super().__new__(combined)

    @staticmethod
    def resolve_stack(config: Mapping[str, Any]) -> str:
        """The canonical stack name of ``config`` (``"auto"`` and ``"torch"`` are ``"ddp"``)."""
        return normalize_stack_name(config.get("stack", "auto"))

    @classmethod
    def resolve_runner_class(cls, config: Mapping[str, Any]) -> type:
        """The runner class registered for ``config.stack``; a ``ValueError`` lists the valid stacks."""
        return resolve_runner_class(cls.resolve_stack(config))
