"""``RunnerCheckpointing``: what a runner's checkpoint holds, and saving and restoring it through its manager.

``BaseRunner`` mixes this in.  The manager (``danling.runners.checkpoints``) owns the storage
format: when to save, where, how names (``latest``, ``best``, history entries) resolve to files or
directories, and how to read them back.  This module owns the runner's side: the payload
(``state_dict``), the restore order (state, model, EMA, optimizer, scheduler, dataloaders), the
precedence of ``resume`` > ``auto_resume`` > ``pretrained``, and the choice of manager
(``init_checkpoint_manager``: ``checkpoint.backend``, with ``"auto"`` meaning the runner class's
``default_checkpoint_backend``).  It never builds a checkpoint file name itself.

A manager of ``danling.runners.checkpoints`` (a ``CheckpointManager``) is handed the payload and
the progress.  Any other object bound as the manager follows the reference's runner-bound
protocol: it holds its runner and is called as ``save_checkpoint(name=..., epochs=...,
save_best=..., last_step=..., force=...)`` and ``load_checkpoint(path)``, besides
``is_collective``, ``maybe_wait_for_staging()``, ``wait()`` and ``close()``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from danling.metrics import RoundDict
from danling.utils import save as save_file

from .checkpoints import (
    CheckpointManager,
    checkpoint_manager_class,
    declared_fresh_entries,
    find_checkpoint_format,
    fresh_entries,
)
from .config import RunnerConfig, check_semantic_match
from .restore import MODEL_KEYS, apply_exclusions, exclusion_paths, load_component, plain_data, read_checkpoint

if TYPE_CHECKING:
    from .base_runner import BaseRunner

__all__ = ["RunnerCheckpointing"]


class RunnerCheckpointing:
    r"""
    Checkpoint payload, saving and restoring for ``BaseRunner`` (a mixin: it reads the runner's
    ``config``, ``state``, ``workspace``, ``dataloaders``, ``results`` and components).
    """

    #: The storage format ``checkpoint.backend="auto"`` means for this runner class.
    default_checkpoint_backend: str = "file"
    checkpoint_manager: CheckpointManager | None = None
    #: Splits whose loader position came from a checkpoint; the loop fast-forwards the others it resumes.
    restored_loaders: frozenset[str] = frozenset()

    # the manager

    @classmethod
    def resolve_checkpoint_backend(cls, config: RunnerConfig) -> str:
        """``checkpoint.backend`` lower-cased, with ``"auto"`` meaning ``default_checkpoint_backend``."""
        backend = str(config.checkpoint.backend).strip().lower()
        return cls.default_checkpoint_backend if backend == "auto" else backend

    @property
    def checkpoint_backend(self) -> str:
        """The storage format of this run's checkpoints (``BaseRunner.__init__`` writes it into the config)."""
        return self.resolve_checkpoint_backend(self.config)

    def init_checkpoint_manager(self) -> None:
        """Bind the manager of ``checkpoint_backend`` (the one place that chooses the storage format)."""
        self.set_checkpoint_manager(self.build_checkpoint_manager(self.checkpoint_backend))

    def build_checkpoint_manager(self, backend: str) -> CheckpointManager:
        r"""
        A manager for ``backend`` in ``{run dir}/checkpoints`` with the run's cadence.

        Backend hook: the managers registered in ``danling.runners.checkpoints`` (``file``,
        ``dcp``) are built here; a backend with its own storage format overrides this.
        """
        manager_class = checkpoint_manager_class(backend)
        return manager_class(
            self.workspace.checkpoint_dir,
            self.config.checkpoint,
            interval=self.checkpoint_interval,
            unit="step" if self.is_step_mode else "epoch",
            tag=self.id,
        )

    def set_checkpoint_manager(self, manager: CheckpointManager) -> None:
        """Replace the checkpoint manager, closing the previous one."""
        if manager is self.checkpoint_manager:
            return
        if self.checkpoint_manager is not None:
            self.checkpoint_manager.close(timeout=0.0)
        self.checkpoint_manager = manager

    # checkpoints: saving

    @fresh_entries("runner", "state", "loop", "results")
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload: config, progress, RNG, loader positions, loop position and results."""
        self.rng_state.capture()
        return {
            "runner": plain_data(self.config),
            "state": self.state.state_dict(),
            "dataloaders": self.dataloader_state_dict(),
            "loop": self.loop_state.state_dict(),
            "results": plain_data(self.results),
        }

    def dataloader_state_dict(self) -> dict[str, Any]:
        """Positions of the training loaders (evaluation loaders always start from their beginning)."""
        return self.dataloaders.state_dict(self.train_splits)

    def save_checkpoint(
        self,
        name: str = "latest",
        epochs: int | None = None,  # the 0-based epoch the save belongs to
        save_best: bool = True,
        last_step: bool = False,  # the run's final save
        force: bool = False,
    ) -> bool:
        r"""
        Save a checkpoint if one is due (the manager's cadence), or always with ``force``/``last_step``.

        ``epochs`` is the 0-based epoch the save belongs to (the epoch just finished; default:
        ``train_state.epoch``).  Progress is the global step in step mode and the completed epochs
        in epoch mode.  Returns whether a save was written or queued (a runner-bound manager that
        returns nothing counts as saving).  Non-main processes return at once unless the manager
        is collective: call this on every rank.
        """
        manager = self.checkpoint_manager
        if manager is None or not (self.is_main_process or manager.is_collective):
            return False
        if not isinstance(manager, CheckpointManager):  # runner-bound: it reads the runner's state itself
            epochs = self.train_state.epoch if epochs is None else epochs
            saved = manager.save_checkpoint(
                name=name, epochs=epochs, save_best=save_best, last_step=last_step, force=force
            )
            return saved is None or bool(saved)
        if self.is_step_mode:
            progress = self.train_state.global_step
        else:
            progress = self.train_state.epoch if epochs is None else epochs + 1
        if not manager.should_save(progress, last_step=last_step, force=force):
            return False  # before scoring the results: the loops ask at every cadence boundary
        best = save_best and self.is_best
        return manager.save(
            self.state_dict,
            progress=progress,
            name=name,
            best=best,
            last_step=last_step,
            force=force,
            fresh=declared_fresh_entries(self),
        )

    def save_seed_checkpoint(self, name: str = "seed") -> bool:
        """Save the untrained state as checkpoint ``name`` (for reproducing a run from its start)."""
        if self.train_state.epoch or self.train_state.global_step:
            warnings.warn(
                "save_seed_checkpoint() is intended before training advances; "
                f"current epoch={self.train_state.epoch}, global_step={self.train_state.global_step}",
                RuntimeWarning,
                stacklevel=2,
            )
        return self.save_checkpoint(name=name, epochs=0, save_best=False, last_step=True, force=True)

    def save(self, obj: Any, file: str, main_process_only: bool = True, *args: Any, **kwargs: Any) -> str:
        """Save ``obj`` to ``file`` by extension (``danling.utils.save``), on the main process only by default."""
        if main_process_only and not self.is_main_process:
            return file
        return save_file(obj, file, *args, **kwargs)

    # checkpoints: loading

    def read_checkpoint(self, checkpoint: Any) -> Mapping[str, Any]:
        r"""
        A checkpoint as a mapping: given one, or loaded by the manager from a name (``"latest"``,
        ``"best"``) or a path (a ``model.safetensors`` export reads as ``{"model": weights}``).
        """
        manager = self.checkpoint_manager
        if manager is not None and not isinstance(manager, CheckpointManager):
            path = os.fsdecode(checkpoint) if isinstance(checkpoint, (str, bytes, os.PathLike)) else None
            if path is not None and not path.endswith(".safetensors"):
                return manager.load_checkpoint(path)  # a runner-bound manager reads its own format
            manager = None
        return read_checkpoint(checkpoint, manager, template=self.state_dict)

    @classmethod
    def read_config(cls, checkpoint: Any) -> RunnerConfig:
        """The ``RunnerConfig`` a checkpoint (mapping or path) was saved with."""
        if isinstance(checkpoint, Mapping):
            if checkpoint.get("runner") is None:
                raise ValueError(
                    "cannot read runner config: checkpoint is missing key 'runner'; use from_pretrained(...) for "
                    "model-only checkpoints"
                )
            return RunnerConfig(checkpoint["runner"])
        if isinstance(checkpoint, (str, bytes, os.PathLike)):
            path = os.fsdecode(checkpoint)
            return find_checkpoint_format(path).read_config(path)
        raise ValueError(
            f"invalid checkpoint input: expected a mapping or path, got {type(checkpoint).__name__}: {checkpoint!r}"
        )

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Restore progress, RNG, loop position and results; refuse a semantically different config."""
        if checkpoint.get("runner") is not None:
            check_semantic_match(checkpoint["runner"], self.config)
        self.state.load_state_dict(dict(checkpoint.get("state") or {}))
        if isinstance(checkpoint.get("loop"), Mapping):
            self.loop_state.load_state_dict(checkpoint["loop"])
        if isinstance(checkpoint.get("results"), Mapping):
            self.results = RoundDict()
            for index, row in checkpoint["results"].items():
                self.results[int(index)] = RoundDict(row)
        self.rng_state.restore()

    def load_checkpoint(self, checkpoint: Any) -> None:
        r"""
        Restore a full checkpoint: state, model, EMA, optimizer, scheduler, dataloaders (in that order).

        Each component goes through its overridable hook (``load_state_dict``, ``load_model``,
        ``load_ema``, ``load_optimizer``, ``load_scheduler``, ``load_dataloaders``); the hook of a
        component the runner lacks and the checkpoint lacks too is not called.  A component the
        runner has must be in the checkpoint; an entry the runner has no component for is ignored.
        The model comes from ``model``, else ``model_parts``.  ``checkpoint_exclude_from_loading()``
        skips entries.  A path input is remembered in ``config.resume``.
        """
        payload, excluded = apply_exclusions(self.read_checkpoint(checkpoint), self.checkpoint_exclude_from_loading())
        if "runner" in excluded:
            payload = {key: value for key, value in payload.items() if key != "runner"}
        self.load_state_dict(payload)
        if not excluded.intersection(MODEL_KEYS):
            weights = payload.get("model") if payload.get("model") is not None else payload.get("model_parts")
            if weights is not None:
                self.load_model(weights)
            elif self.model is not None:
                raise ValueError(
                    "cannot restore model: checkpoint has no model state\n"
                    "Use `load_pretrained` only for model-only checkpoints with model/ema payloads"
                )
        loaders = (("ema", self.load_ema), ("optimizer", self.load_optimizer), ("scheduler", self.load_scheduler))
        for component, load in loaders:
            if component not in excluded and (getattr(self, component) is not None or component in payload):
                load(payload.get(component))
        if "dataloaders" not in excluded:
            self.load_dataloaders(payload.get("dataloaders"))
        if isinstance(checkpoint, (str, bytes, os.PathLike)):
            manager = self.checkpoint_manager
            source = os.fsdecode(checkpoint)
            resolvable = isinstance(manager, CheckpointManager) and not manager.is_collective
            # remember where the state came from, not a name that means another file in another run
            self.config.resume = manager.resolve(source) if resolvable else source

    def checkpoint_exclude_from_loading(self) -> tuple[tuple[str, ...], ...]:
        r"""
        The entries ``load_checkpoint`` leaves alone: ``checkpoint.exclude_from_loading`` as paths
        (``"lr_scheduler"`` -> ``("scheduler",)``, ``"state.train"`` -> ``("state", "train")``).
        """
        return exclusion_paths(self.config.checkpoint.exclude_from_loading)

    def _load_component(self, component: str, label: str, state: Any) -> None:
        load_component(getattr(self, component), component, label, state)

    def load_model(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        if self.model is None:
            raise ValueError("cannot restore model: model is not initialized")
        return self.unwrap(self.model).load_state_dict(state_dict, *args, **kwargs)

    def load_ema(self, state_dict: Any) -> None:
        self._load_component("ema", "EMA state", state_dict)

    def load_optimizer(self, state_dict: Any) -> None:
        self._load_component("optimizer", "optimizer state", state_dict)

    def load_scheduler(self, state_dict: Any) -> None:
        self._load_component("scheduler", "scheduler state", state_dict)

    def load_dataloaders(self, state_dict: Any) -> None:
        """Restore the training loaders' positions (nothing when the checkpoint has none)."""
        if isinstance(state_dict, Mapping):
            self.dataloaders.load_state_dict(state_dict)
            self.restored_loaders = frozenset(state_dict)

    def load_pretrained(self, checkpoint: Any) -> None:
        r"""
        Load model weights only (from ``ema`` when present, else ``model``), e.g. to fine-tune.

        ``checkpoint`` is a mapping, a ``.pth`` checkpoint or a ``model.safetensors`` export.
        """
        if self.model is None:
            raise ValueError("cannot load pretrained weights: model is not initialized")
        payload = self.read_checkpoint(checkpoint)
        weights = payload.get("ema") if payload.get("ema") is not None else payload.get("model")
        if weights is None:
            weights = payload.get("model_parts")
        if weights is None:
            raise ValueError(
                "cannot load pretrained weights: checkpoint has no EMA or model state\n"
                "Use `load_checkpoint` for full checkpoint restore instead of `load_pretrained`"
            )
        self.load_model(weights)
        is_path = isinstance(checkpoint, (str, bytes, os.PathLike))
        self.config.pretrained = os.fsdecode(checkpoint) if is_path else None

    @classmethod
    def from_checkpoint(cls, checkpoint: Any) -> BaseRunner:
        """A runner built from the config stored in ``checkpoint``, with the checkpoint fully restored."""
        config = cls.read_config(checkpoint)
        config.resume, config.auto_resume, config.pretrained = None, False, None
        runner = cls(config)
        runner.load_checkpoint(checkpoint)
        return runner

    @classmethod
    def from_pretrained(cls, config: RunnerConfig | Mapping[str, Any], checkpoint: Any) -> BaseRunner:
        """A runner built from ``config`` whose model starts from the weights in ``checkpoint``."""
        prepared = RunnerConfig(config.dict() if isinstance(config, RunnerConfig) else config)
        prepared.resume, prepared.auto_resume, prepared.pretrained = None, False, None
        runner = cls(prepared)
        runner.load_pretrained(checkpoint)
        return runner

    def auto_restore(self) -> None:
        r"""
        Restore what the config asks for, by precedence: ``resume`` > ``auto_resume`` > ``pretrained``.

        ``auto_resume`` resumes from this run's ``latest`` checkpoint when it exists and starts
        from scratch otherwise (so one job script serves the first start and every restart).
        """
        resume, auto_resume, pretrained = self.config.resume, self.config.auto_resume, self.config.pretrained
        if resume and auto_resume and pretrained:
            warnings.warn(
                "`config.resume`, `config.auto_resume`, and `config.pretrained` are all set; precedence is "
                "`resume` > `auto_resume` > `pretrained`",
                RuntimeWarning,
                stacklevel=2,
            )
        if resume:
            self.load_checkpoint(resume)
        elif auto_resume:
            manager = self.checkpoint_manager
            if manager is not None and not isinstance(manager, CheckpointManager):
                raise ValueError(
                    f"auto_resume needs a checkpoint manager that can find this run's 'latest' checkpoint; "
                    f"{type(manager).__name__} is not a danling CheckpointManager: set `resume` to a checkpoint "
                    "it can load instead"
                )
            # exists() counts a dangling alias: it must fail loudly in load_checkpoint, not restart silently
            if manager is not None and manager.exists("latest"):
                self.load_checkpoint(manager.resolve("latest") if not manager.is_collective else "latest")
            else:
                where = manager.directory if manager is not None else self.workspace.checkpoint_dir
                print(f"auto_resume: no checkpoint at {where} (looked for 'latest'); starting from scratch")
        elif pretrained:
            self.load_pretrained(pretrained)
