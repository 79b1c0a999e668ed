"""Build the optimizer and scheduler a run's config describes.

- ``OPTIMIZERS``: the torch optimizers ``config.optim.type`` may name (case, ``_`` and ``-``
  ignored; class names such as ``"AdamW"`` work too).
- ``build_param_groups``: regex-selected parameter groups with their own options
  (``optim.param_groups``), e.g. no weight decay on biases, a larger learning rate on a head.
- ``build_optimizer``: the optimizer for named parameters and ``config.optim``.
- ``build_scheduler`` / ``wrap_scheduler``: a ``danling.optim.BuiltScheduler`` from
  ``config.sched`` (or around a scheduler the user built), which says whether it steps per
  optimizer step or per epoch and whether it needs a metric.
- ``monitored_metric``: the number a metric scheduler (``ReduceLROnPlateau``) steps on.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from danling.optim import BuiltScheduler, normalize_scheduler_interval, scheduler_requires_metric
from danling.optim import build_scheduler as build_registered_scheduler

_OPTIMIZER_NAMES = (
    "SGD",
    "Adam",
    "AdamW",
    "Adagrad",
    "Adadelta",
    "Adamax",
    "ASGD",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "LBFGS",
    "SparseAdam",
    "Adafactor",
    "Muon",
)
#: Optimizers ``config.optim.type`` may name, by lower-case name (those this torch provides).
OPTIMIZERS: dict[str, type[Optimizer]] = {
    name.lower(): getattr(torch.optim, name) for name in _OPTIMIZER_NAMES if hasattr(torch.optim, name)
}
#: ``optim.param_groups`` keys that derive a group option from the optimizer-level one.
_DERIVED_GROUP_KEYS = ("lr_multiplier", "weight_decay_multiplier", "beta1", "beta2")


def _normalize(name: str) -> str:
    return "".join(char for char in name.lower() if char not in "_- ")


def lookup_optimizer(name: Any) -> type[Optimizer]:
    r"""
    The optimizer class ``name`` refers to, ignoring case, ``_``, ``-`` and spaces.

    Examples:
        >>> lookup_optimizer("AdamW").__name__, lookup_optimizer("rms-prop").__name__
        ('AdamW', 'RMSprop')
        >>> lookup_optimizer("adamx")
        Traceback (most recent call last):
        ValueError: Unknown optimizer: 'adamx'. Valid options are: adadelta, adafactor, adagrad, adam, adamax, adamw, ...
    """
    if isinstance(name, str):
        wanted = _normalize(name)
        for key, cls in OPTIMIZERS.items():
            if _normalize(key) == wanted:
                return cls
    raise ValueError(f"Unknown optimizer: {name!r}. Valid options are: {', '.join(sorted(OPTIMIZERS))}")


def _group_options(group: Mapping[str, Any], defaults: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A group's optimizer options: its own keys plus values derived from the optimizer-level ones."""
    options = {key: value for key, value in group.items() if key not in ("pattern", "params", *_DERIVED_GROUP_KEYS)}
    if group.get("lr_multiplier") is not None:
        if defaults.get("lr") is None:
            raise ValueError(f"optim.param_groups[{index}].lr_multiplier requires optim.lr")
        options["lr"] = float(defaults["lr"]) * float(group["lr_multiplier"])
    if group.get("weight_decay_multiplier") is not None:
        if defaults.get("weight_decay") is None:
            raise ValueError(f"optim.param_groups[{index}].weight_decay_multiplier requires optim.weight_decay")
        options["weight_decay"] = float(defaults["weight_decay"]) * float(group["weight_decay_multiplier"])
    if group.get("beta1") is not None or group.get("beta2") is not None:
        if defaults.get("betas") is None:
            raise ValueError(f"optim.param_groups[{index}].beta1/beta2 requires optim.betas")
        beta1, beta2 = defaults["betas"]
        options["betas"] = (
            float(beta1 if group.get("beta1") is None else group["beta1"]),
            float(beta2 if group.get("beta2") is None else group["beta2"]),
        )
    return options


def build_param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], config: Mapping[str, Any]
) -> list[nn.Parameter] | list[dict[str, Any]]:
    r"""
    Parameter groups for ``config.optim``: a flat list without ``param_groups``, else one group per entry.

    Each ``param_groups`` entry has a ``pattern`` (``re.search`` against the parameter name; the
    first matching entry wins) and optimizer options for its group, directly (``lr``,
    ``weight_decay`` ...) or derived from the optimizer-level values (``lr_multiplier``,
    ``weight_decay_multiplier``, ``beta1``, ``beta2``).  Parameters no pattern matches form a
    last group with the optimizer's defaults.  A parameter appears once even if shared.

    Examples:
        >>> model = nn.Sequential()
        >>> model.add_module("encoder", nn.Linear(2, 2)); model.add_module("head", nn.Linear(2, 1))
        >>> groups = build_param_groups(model.named_parameters(), {
        ...     "lr": 0.1, "param_groups": [{"pattern": r"bias$", "weight_decay": 0.0},
        ...                                 {"pattern": r"^head", "lr_multiplier": 10}]})
        >>> [(len(group["params"]), {k: v for k, v in group.items() if k != "params"}) for group in groups]
        [(2, {'weight_decay': 0.0}), (1, {'lr': 1.0}), (1, {})]
    """
    unique: dict[int, tuple[str, nn.Parameter]] = {}
    for name, parameter in named_parameters:
        unique.setdefault(id(parameter), (name, parameter))
    parameters = list(unique.values())
    specs = config.get("param_groups")
    if specs is None:
        return [parameter for _, parameter in parameters]
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Iterable):
        raise ValueError(f"optim.param_groups must be a sequence of mappings, got {type(specs).__name__}")
    groups: list[dict[str, Any]] = []
    remaining = parameters
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise ValueError(f"optim.param_groups[{index}] must be a mapping, got {type(spec).__name__}")
        if spec.get("pattern") is None:
            raise ValueError(f"optim.param_groups[{index}] requires `pattern`")
        pattern = re.compile(str(spec["pattern"]))
        matched = [parameter for name, parameter in remaining if pattern.search(name)]
        remaining = [(name, parameter) for name, parameter in remaining if not pattern.search(name)]
        options = _group_options(spec, config, index)
        if not matched:
            warnings.warn(
                f"optim.param_groups[{index}] pattern {spec['pattern']!r} matched no parameters",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        groups.append({"params": matched, **options})
    if remaining:
        groups.append({"params": [parameter for _, parameter in remaining]})
    return groups


def build_optimizer(named_parameters: Iterable[tuple[str, nn.Parameter]], config: Mapping[str, Any]) -> Optimizer:
    r"""
    The optimizer ``config`` describes (``type`` plus its keyword arguments) over ``named_parameters``.

    Raises:
        ValueError: ``type`` is missing or unknown (the message lists the valid names), or
            an argument is not one the optimizer takes (the message lists those it takes).

    Examples:
        >>> optimizer = build_optimizer(nn.Linear(2, 1).named_parameters(), {"type": "adamw", "lr": 1e-3})
        >>> type(optimizer).__name__, optimizer.defaults["lr"]
        ('AdamW', 0.001)
        >>> build_optimizer(nn.Linear(2, 1).named_parameters(), {"type": "sgd", "lr": 0.1, "beta": 0.9})
        Traceback (most recent call last):
        ValueError: optimizer 'sgd' (SGD) does not accept ['beta']; it accepts ['dampening', ...]
    """
    kwargs = {key: value for key, value in config.items() if key not in ("type", "param_groups")}
    if config.get("type") is None:
        raise ValueError(f"optim.type is required; valid options are: {', '.join(sorted(OPTIMIZERS))}")
    cls = lookup_optimizer(config["type"])
    parameters = list(inspect.signature(cls).parameters.values())[1:]  # the first one takes the parameters
    accepted = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"optimizer {config['type']!r} ({cls.__name__}) does not accept {unknown}; it accepts {sorted(accepted)}"
        )
    return cls(build_param_groups(named_parameters, config), **kwargs)


def build_scheduler(optimizer: Optimizer, config: Mapping[str, Any], *, total_steps: int | None) -> BuiltScheduler:
    r"""
    The scheduler ``config`` describes (``config.sched``), through ``danling.optim.build_scheduler``.

    ``total_steps`` (the run's optimizer-step budget) fills the scheduler's length argument when
    the config leaves it out and the scheduler steps per optimizer step.

    Examples:
        >>> optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
        >>> built = build_scheduler(optimizer, {"type": "cosine"}, total_steps=100)
        >>> built.interval, built.scheduler.total_steps
        ('step', 100)
    """
    return build_registered_scheduler(optimizer, dict(config), total_steps=total_steps)


def wrap_scheduler(scheduler: Any, config: Mapping[str, Any] | None = None) -> BuiltScheduler:
    r"""
    A ``BuiltScheduler`` around a scheduler the user built, with ``interval``/``monitor`` from ``config``.

    Examples:
        >>> optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
        >>> plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        >>> built = wrap_scheduler(plateau, {"monitor": "val.loss"})
        >>> built.interval, built.requires_metric, built.monitor
        ('epoch', True, 'val.loss')
    """
    config = config or {}
    requires_metric = scheduler_requires_metric(scheduler)
    interval = normalize_scheduler_interval(config.get("interval"), requires_metric=requires_metric)
    monitor = config.get("monitor")
    return BuiltScheduler(scheduler, interval, requires_metric, None if monitor is None else str(monitor))


def _scalar(value: Any, monitor: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"scheduler monitor {monitor!r} must resolve to a scalar metric, but got a tensor of shape "
                f"{tuple(value.shape)}"
            )
        return value.item()
    return value


def monitored_metric(result: Mapping[str, Any], monitor: str, score_split: str | None = None) -> Any:
    r"""
    The value a metric scheduler steps on, from a round's ``{split: {metric: value}}`` result.

    ``monitor`` is a dotted path (``"val.loss"``) or a metric name, looked up in
    ``score_split`` first, then at the top level, then in the only split that has it.

    Raises:
        ValueError: nothing matches, or several splits do (use ``"<split>.<metric>"``).

    Examples:
        >>> result = {"train": {"loss": 1.0}, "val": {"loss": 2.0, "acc": 0.5}}
        >>> monitored_metric(result, "val.loss"), monitored_metric(result, "loss", "val"), monitored_metric(result, "acc")
        (2.0, 2.0, 0.5)
        >>> monitored_metric(result, "loss")
        Traceback (most recent call last):
        ValueError: ambiguous scheduler.monitor='loss': matched multiple splits (train, val). Use '<split>.<metric>' to disambiguate.
    """
    if "." in monitor:
        node: Any = result
        for part in monitor.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(
                    f"could not resolve scheduler.monitor={monitor!r} from aggregated result {dict(result)!r}"
                )
            node = node[part]
        return _scalar(node, monitor)
    if score_split is not None and isinstance(result.get(score_split), Mapping) and monitor in result[score_split]:
        return _scalar(result[score_split][monitor], monitor)
    if monitor in result and not isinstance(result[monitor], Mapping):
        return _scalar(result[monitor], monitor)
    splits = [split for split, row in result.items() if isinstance(row, Mapping) and monitor in row]
    if len(splits) > 1:
        raise ValueError(
            f"ambiguous scheduler.monitor={monitor!r}: matched multiple splits ({', '.join(splits)}). "
            "Use '<split>.<metric>' to disambiguate."
        )
    if not splits:
        raise ValueError(f"could not resolve scheduler.monitor={monitor!r} from aggregated result {dict(result)!r}")
    return _scalar(result[splits[0]][monitor], monitor)
