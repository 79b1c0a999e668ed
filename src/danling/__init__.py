"""danling: small, focused PyTorch training packages under one namespace.

The umbrella distribution re-exports the documented top-level names lazily, so
``import danling`` stays cheap and each name imports only its own package::

    >>> import danling
    >>> danling.AverageMeter.__module__
    'danling.metrics.average_meter'

A name whose distribution is not installed raises an ``ImportError`` that says
which distribution to install.
"""

from __future__ import annotations

from importlib import import_module
from pkgutil import extend_path
from typing import Any

# Members of the workspace each ship part of ``danling`` (``danling.tensors``,
# ``danling.metrics`` ...) without an ``__init__.py`` of their own.  Extending
# ``__path__`` lets this regular package see all of them, both from wheels
# installed into one ``site-packages`` and from editable installs whose source
# trees sit in different folders.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"

# name -> (module that defines it, distribution that ships the module)
_EXPORTS: dict[str, tuple[str, str]] = {
    # danling-nestedtensor
    "NestedTensor": ("danling.tensors", "danling-nestedtensor"),
    "PNTensor": ("danling.tensors", "danling-nestedtensor"),
    "tensor": ("danling.tensors", "danling-nestedtensor"),
    # danling-meters
    "AverageMeter": ("danling.metrics", "danling-meters"),
    "AverageMeters": ("danling.metrics", "danling-meters"),
    "MetricMeter": ("danling.metrics", "danling-meters"),
    "StreamMetrics": ("danling.metrics", "danling-meters"),
    "GlobalMetrics": ("danling.metrics", "danling-meters"),
    "MultiTaskMetrics": ("danling.metrics", "danling-meters"),
    # danling-lrsched
    "LRScheduler": ("danling.optim", "danling-lrsched"),
    # danling-runner-core
    "RunnerConfig": ("danling.runners", "danling-runner-core"),
    "RunnerState": ("danling.runners", "danling-runner-core"),
    "BaseRunner": ("danling.runners", "danling-runner-core"),
    "TorchRunner": ("danling.runners", "danling-runner-core"),
    "Runner": ("danling.runners", "danling-runner-core"),
    # danling-runner-core: utilities and data helpers
    **{
        name: ("danling.utils", "danling-runner-core")
        for name in (
            "catch",
            "debug",
            "flexible_decorator",
            "method_cache",
            "load",
            "load_pandas",
            "save",
            "is_json_serializable",
            "ensure_dir",
        )
    },
    "to_device": ("danling.data", "danling-runner-core"),
    # backend runners
    "DeepSpeedRunner": ("danling.runners", "danling-runner-deepspeed"),
    "ParallelRunner": ("danling.runners", "danling-runner-parallel"),
}

# Sub-packages reachable as attributes (``danling.metrics.functional`` ...).
_SUBPACKAGES: dict[str, str] = {
    "tensors": "danling-nestedtensor",
    "metrics": "danling-meters",
    "optim": "danling-lrsched",
    "runners": "danling-runner-core",
    "utils": "danling-runner-core",
    "data": "danling-runner-core",
}

__all__ = sorted(_EXPORTS)


def _missing(name: str, distribution: str, error: ImportError) -> ImportError:
    message = (
        f"danling.{name} is provided by the distribution {distribution!r}, which is not installed "
        f"or does not provide it ({error}). Install it with: pip install {distribution}"
    )
    return ImportError(message, name=f"danling.{name}")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        try:
            module = import_module(f"{__name__}.{name}")
        except ImportError as error:
            raise _missing(name, _SUBPACKAGES[name], error) from error
        globals()[name] = module
        return module
    if name not in _EXPORTS:
        raise AttributeError(f"module 'danling' has no attribute {name!r}")
    module_name, distribution = _EXPORTS[name]
    try:
        module = import_module(module_name)
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name and not error.name.startswith("danling"):
            raise  # a third-party dependency of an installed distribution is missing: report it as is
        raise _missing(name, distribution, error) from error
    try:
        value = getattr(module, name)
    except ImportError as error:
        if distribution in str(error):
            raise  # the package already said which distribution to install
        raise _missing(name, distribution, error) from error
    except AttributeError as error:
        raise _missing(name, distribution, ImportError(str(error))) from error
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))
