r"""Pipeline stages: which stages a rank runs, and the module each stage runs, cut out of one model.

- ``stage_indices``: the stages of one pipeline rank (one, or several looped or V-shaped ones for
  multi-stage schedules such as interleaved 1F1B).
- ``even_split``: module names of each stage when the config names none: the model's top-level
  modules (the entries of top-level ``ModuleList``\ s and ``Sequential``\ s counted one by one) in
  contiguous runs of nearly equal length.
- ``ModelPart``: the modules of one stage, kept at their names in the whole model, run one after
  the other.  Its ``state_dict`` keys are the whole model's, so a rank checkpoints its own stages'
  names and nothing else.
- ``split_model_parts``: this rank's parts, from ``module_fqns_per_model_part``, the even split, or
  the model's own ``build_pipeline_model_part`` hook.
- ``PipelineModel``: one module that holds every local part at its original names (what the
  optimizer, the checkpoint and ``train()``/``eval()`` see); it is not called itself.

Everything here is arithmetic on modules and works without a process group.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import nn

__all__ = [
    "ModelPart",
    "PipelineModel",
    "even_split",
    "split_model_parts",
    "stage_indices",
]

#: Containers whose entries ``even_split`` counts one by one.
_SEQUENCES = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def stage_indices(rank: int, degree: int, num_stages: int, style: str = "loop") -> tuple[int, ...]:
    r"""
    The pipeline stages pipeline rank ``rank`` of ``degree`` runs, out of ``num_stages``.

    One stage per rank is stage ``rank``.  With several, ``"loop"`` gives ``rank, rank + degree,
    ...`` (interleaved 1F1B, looped BFS) and ``"v"`` gives ``rank, 2 * degree - 1 - rank`` (the
    V-shaped schedules: ZBV zero bubble, DualPipeV, two stages per rank).

    Examples:
        >>> stage_indices(1, 2, 4), stage_indices(0, 2, 4, "v"), stage_indices(1, 4, 4)
        ((1, 3), (0, 3), (1,))
        >>> stage_indices(0, 2, 3)
        Traceback (most recent call last):
        ValueError: pipeline stages must be a multiple of the pipeline degree 2 (each rank runs as many), got 3 stages
    """
    if num_stages < degree or num_stages % degree:
        raise ValueError(
            f"pipeline stages must be a multiple of the pipeline degree {degree} (each rank runs as many), "
            f"got {num_stages} stages"
        )
    per_rank = num_stages // degree
    if style == "v":
        if per_rank != 2:
            raise ValueError(f"V-shaped pipeline schedules run 2 stages per rank, got {per_rank} ({num_stages} stages)")
        return (rank, num_stages - 1 - rank)
    if style != "loop":
        raise ValueError(f"unknown pipeline stage style {style!r}; expected 'loop' or 'v'")
    return tuple(rank + offset * degree for offset in range(per_rank))


def _units(model: nn.Module) -> list[str]:
    units = []
    for name, child in model.named_children():
        if isinstance(child, _SEQUENCES):
            units.extend(f"{name}.{entry}" for entry, _ in child.named_children())
        else:
            units.append(name)
    return units


def even_split(model: nn.Module, num_stages: int) -> list[list[str]]:
    r"""
    Module names of ``num_stages`` contiguous stages of nearly equal length (earlier stages get one
    more where they cannot be equal).

    The units are ``model``'s top-level modules, with the entries of top-level ``ModuleList``,
    ``Sequential`` and ``ModuleDict`` counted one by one.  The split runs them one after the other,
    in registration order: right for an ``nn.Sequential`` and for models whose ``forward`` applies
    their modules in that order (the example ``Transformer``); name the stages
    (``parallel.module_fqns_per_model_part``) for any other model.

    Examples:
        >>> even_split(nn.Sequential(*(nn.Linear(2, 2) for _ in range(5))), 2)
        [['0', '1', '2'], ['3', '4']]
        >>> model = nn.Module(); model.embed = nn.Embedding(3, 2)
        >>> model.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
        >>> even_split(model, 3)
        [['embed'], ['layers.0'], ['layers.1']]
    """
    units = _units(model)
    if num_stages < 1 or len(units) < num_stages:
        raise ValueError(
            f"cannot split {type(model).__name__} into {num_stages} pipeline stages: it has {len(units)} "
            f"top-level modules ({units}); set parallel.module_fqns_per_model_part"
        )
    size, extra = divmod(len(units), num_stages)
    stages, start = [], 0
    for stage in range(num_stages):
        stop = start + size + (1 if stage < extra else 0)
        stages.append(units[start:stop])
        start = stop
    return stages


def _container_like(module: nn.Module) -> nn.Module:
    """An empty container of ``module``'s kind, so block lists stay ``ModuleList``\\ s (FSDP and AC look for them)."""
    for kind in _SEQUENCES:
        if isinstance(module, kind):
            return kind()
    return nn.Module()


def _graft(root: nn.Module, model: nn.Module, fqn: str, module: nn.Module) -> None:
    """Put ``module`` into ``root`` at ``fqn``, creating the containers on the way as ``model`` has them."""
    *path, leaf = fqn.split(".")
    node, source = root, model
    for name in path:
        source = source.get_submodule(name)
        child = node._modules.get(name)
        if child is None:
            child = _container_like(source)
            node.add_module(name, child)
        node = child
    node.add_module(leaf, module)


class ModelPart(nn.Module):
    r"""
    The modules of one pipeline stage, at their names in the whole model, run in the order given.

    ``forward`` calls the first module with the stage's inputs and each next one with the
    previous output.  Modules are shared with ``model``, not copied.  ``parallelize(parallel)``
    runs the ``parallelize`` hooks of the modules that define one (the example transformer's
    blocks do); the others stay whole on every tensor-parallel rank.

    Examples:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> part = ModelPart(model, ["1", "2"])
        >>> sorted(part.state_dict()), part(torch.ones(4, 3)).shape
        (['2.bias', '2.weight'], torch.Size([4, 1]))
    """

    def __init__(self, model: nn.Module, module_fqns: Sequence[str], stage_index: int = 0) -> None:
        super().__init__()
        module_fqns = [str(fqn) for fqn in module_fqns]
        if not module_fqns:
            raise ValueError(f"pipeline stage {stage_index} has no modules")
        if "" in module_fqns:
            raise ValueError(f"pipeline stage {stage_index} selects the root module: name submodules instead")
        if len(set(module_fqns)) != len(module_fqns):
            raise ValueError(f"pipeline stage {stage_index} names a module twice: {module_fqns}")
        modules = dict(model.named_modules(remove_duplicate=False))
        unknown = [fqn for fqn in module_fqns if fqn not in modules]
        if unknown:
            raise ValueError(
                f"pipeline stage {stage_index}: {type(model).__name__} has no module(s) {unknown}; "
                f"its top-level modules are {_units(model)}"
            )
        nested = [fqn for fqn in module_fqns if any(fqn.startswith(other + ".") for other in module_fqns)]
        if nested:
            raise ValueError(f"pipeline stage {stage_index} names module(s) {nested} inside another it names")
        self.stage_index = stage_index
        self.module_fqns = tuple(module_fqns)
        for fqn in module_fqns:
            _graft(self, model, fqn, modules[fqn])

    def stage_modules(self) -> Iterator[nn.Module]:
        for fqn in self.module_fqns:
            yield self.get_submodule(fqn)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        modules = self.stage_modules()
        output = next(modules)(*args, **kwargs)
        for module in modules:
            output = module(output)
        return output

    def parallelize(self, parallel: Any) -> None:
        for module in self.stage_modules():
            hook = getattr(module, "parallelize", None)
            if callable(hook):
                hook(parallel)

    def activation_checkpoint_blocks(self) -> list[nn.Module]:
        """The entries of the part's block lists; the stage's modules themselves when it has none."""
        blocks = [block for module in self.modules() if isinstance(module, nn.ModuleList) for block in module]
        return blocks or list(self.stage_modules())

    def extra_repr(self) -> str:
        return f"stage={self.stage_index}, modules={list(self.module_fqns)}"


def _check_cover(model: nn.Module, stages: Mapping[int, Sequence[str]]) -> None:
    """Every parameter of ``model`` in exactly one stage: none left out (it would never train), none shared."""
    owner: dict[int, int] = {}
    for stage, fqns in stages.items():
        for fqn in fqns:
            for parameter in model.get_submodule(fqn).parameters():
                if owner.setdefault(id(parameter), stage) != stage:
                    raise ValueError(
                        f"a parameter of {fqn!r} (stage {stage}) is also in stage {owner[id(parameter)]}: pipeline "
                        "stages cannot share parameters (untie them, or put both users in one stage)"
                    )
    missing = [name for name, parameter in model.named_parameters() if id(parameter) not in owner]
    if missing:
        raise ValueError(f"parameters in no pipeline stage (they would never train): {missing}")


def split_model_parts(
    model: nn.Module,
    local_stages: Sequence[int],
    num_stages: int,
    module_fqns_per_model_part: Sequence[Sequence[str] | str] | None = None,
    parallel: Any = None,
) -> list[nn.Module]:
    r"""
    This rank's pipeline parts of ``model``: one module per stage in ``local_stages``.

    In order of precedence: the model's ``build_pipeline_model_part(stage_index=, num_stages=,
    module_fqns=, parallel=)`` hook (``module_fqns`` is ``None`` without a configured split; a
    ``None`` return means the whole model); ``module_fqns_per_model_part`` (one list of module
    names per stage, ``num_stages`` of them); else ``even_split``.  A split by names must give
    every parameter to exactly one stage.

    Examples:
        >>> model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(4)))
        >>> [part.module_fqns for part in split_model_parts(model, (1, 3), 4)]
        [('1',), ('3',)]
        >>> split_model_parts(model, (0,), 2, [["0", "1"], ["2"]])
        Traceback (most recent call last):
        ValueError: parameters in no pipeline stage (they would never train): ['3.weight', '3.bias']
    """
    if module_fqns_per_model_part is not None:
        stages = [[entry] if isinstance(entry, str) else list(entry) for entry in module_fqns_per_model_part]
        if len(stages) != num_stages:
            raise ValueError(f"parallel.module_fqns_per_model_part has {len(stages)} stages, expected {num_stages}")
    else:
        stages = None
    hook = getattr(model, "build_pipeline_model_part", None)
    if callable(hook):
        parts = []
        for index in local_stages:
            part = hook(
                stage_index=index,
                num_stages=num_stages,
                module_fqns=None if stages is None else tuple(stages[index]),
                parallel=parallel,
            )
            if part is not None and not isinstance(part, nn.Module):
                raise TypeError(
                    f"model.build_pipeline_model_part(...) must return an nn.Module or None, got {type(part).__name__}"
                )
            parts.append(model if part is None else part)
        return parts
    if stages is None:
        stages = even_split(model, num_stages)
    for index, fqns in enumerate(stages):  # validate every stage: all ranks must agree on the split
        ModelPart(model, fqns, index)
    _check_cover(model, dict(enumerate(stages)))
    return [ModelPart(model, stages[index], index) for index in local_stages]


class PipelineModel(nn.Module):
    r"""
    Every local pipeline part in one module, each of its modules at its name in the whole model.

    The runner's ``model``: ``named_parameters`` (the optimizer's), ``state_dict`` (the
    checkpoint's: this rank's stages under their original names) and ``train``/``eval`` work as
    on the whole model.  The schedule runs the parts; calling this module is an error.

    Examples:
        >>> model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(4)))
        >>> local = PipelineModel(split_model_parts(model, (0, 2), 4))
        >>> sorted(local.state_dict()), len(local.parts)
        (['0.bias', '0.weight', '2.bias', '2.weight'], 2)
    """

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = list(parts)  # a list, not a ModuleList: the parts' modules register below, by name
        for part in self.parts:
            if isinstance(part, ModelPart):
                for fqn in part.module_fqns:
                    _graft(self, part, fqn, part.get_submodule(fqn))
            else:
                self.add_module(f"stage_{getattr(part, 'stage_index', len(self._modules))}", part)

    def train(self, mode: bool = True) -> PipelineModel:
        super().train(mode)
        for part in self.parts:
            part.train(mode)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            "a PipelineModel holds this rank's pipeline stages and is not called directly: "
            "the runner's pipeline schedule runs them (runner.pipeline_schedule)"
        )
