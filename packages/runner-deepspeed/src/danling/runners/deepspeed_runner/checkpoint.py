"""``DeepSpeedCheckpointManager``: engine checkpoints in tag directories, named by pointer files.

Layout of the checkpoint directory::

    ckpt-s000000000020/                  # one tag directory per save, never written twice
        mp_rank_00_model_states.pt       #   DeepSpeed's files: module, client state ...
        zero_pp_rank_0_mp_rank_00_optim_states.pt   # ... optimizer partitions, one per rank
        runner.pt                        #   the run's config (plain data); written last
    latest-s000000000025/                # a save off the history cadence (forced, final)
    latest.pointer                       # text: the tag that ``latest`` names
    best.pointer
    model.safetensors                    # the whole model alone, from the final save

Every rank calls ``save`` (DeepSpeed's save is collective).  The engine writes the tag directory;
after a barrier rank 0 writes ``runner.pt`` (which marks the directory complete) and flips the
pointers, each by an atomic rename, so a crash at any moment leaves ``latest`` naming a complete
checkpoint.  A directory no pointer names any more is removed, unless it is one of the newest
``keep_latest_k`` history entries.  The runner's state (progress, RNG, loader positions, loop,
results, its own scheduler) travels as DeepSpeed's client state; the module, the optimizer and
a DeepSpeed-owned scheduler are DeepSpeed's to store.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch
from torch import distributed as dist

from danling.runners.checkpoints import (
    CheckpointManager,
    CheckpointNotFoundError,
    SaveRequest,
    register_checkpoint_manager,
    save_model_state,
)
from danling.runners.config import RunnerConfig
from danling.runners.config_sections import CheckpointConfig
from danling.runners.distributed import broadcast_object, get_rank, is_initialized
from danling.utils.atomic import atomic_write, remove_stale_temporaries

from .engine import gather_model_state

__all__ = ["ENGINE_STATE", "DeepSpeedCheckpointManager", "resolve_tag_directory"]

POINTER = ".pointer"
RUNNER_FILE = "runner.pt"
MODEL_EXPORT = "model.safetensors"
#: What ``load`` returns for the components the engine restored in place (model, optimizer).
ENGINE_STATE = "<restored in place by the DeepSpeed engine>"
#: Components DeepSpeed stores itself; they never go into the client state.
ENGINE_COMPONENTS = ("model", "optimizer")
HISTORY_TAG = re.compile(r"^ckpt-[es]\d+(\.\d+)?$")


def _barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _is_tag_directory(path: str) -> bool:
    return os.path.isdir(path) and bool(glob.glob(os.path.join(glob.escape(path), "*model_states.pt")))


def _read_pointer(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        tag = file.read().strip()
    if not tag or os.sep in tag or (os.altsep and os.altsep in tag) or tag in (os.curdir, os.pardir):
        raise ValueError(f"invalid DeepSpeed checkpoint pointer {path!r}: expected a tag name, got {tag!r}")
    return tag


def _follow(pointer: str) -> str:
    tag_directory = os.path.join(os.path.dirname(pointer), _read_pointer(pointer))
    if not _is_tag_directory(tag_directory):
        error = CheckpointNotFoundError(
            f"checkpoint pointer {pointer!r} names {tag_directory!r}, which holds no DeepSpeed checkpoint "
            "(it was removed, or not copied along with the pointer)"
        )
        error.dangling = True
        raise error
    return tag_directory


def resolve_tag_directory(source: Any, directory: str | None = None) -> str:
    r"""
    The tag directory (one DeepSpeed checkpoint) that ``source`` refers to.

    ``source`` may be a name in ``directory`` (``"latest"``, ``"best"``, any pointer name, a tag),
    a pointer file, a tag directory, a checkpoint directory or a run directory (their ``latest``).

    Raises:
        CheckpointNotFoundError: nothing is there (the message lists what was tried); with
            ``dangling`` set when a pointer names a directory that is gone.
    """
    path = os.fsdecode(source)
    tried: list[str] = []
    if directory is not None and not os.path.isabs(path) and os.sep not in path:
        pointer = os.path.join(directory, path + POINTER)
        tried.append(pointer)
        if os.path.isfile(pointer):
            return _follow(pointer)
        tried.append(os.path.join(directory, path))
        if _is_tag_directory(tried[-1]):
            return tried[-1]
    if os.path.isfile(path) and path.endswith(POINTER):
        return _follow(path)
    tried.append(path)
    if _is_tag_directory(path):
        return path
    if os.path.isdir(path):
        for checkpoints in (path, os.path.join(path, "checkpoints")):
            pointer = os.path.join(checkpoints, "latest" + POINTER)
            tried.append(pointer)
            if os.path.isfile(pointer):
                return _follow(pointer)
    raise CheckpointNotFoundError(
        f"no DeepSpeed checkpoint at {path!r} (looked for {', '.join(repr(item) for item in tried)})"
    )


class DeepSpeedCheckpointManager(CheckpointManager):
    r"""
    Checkpoints written and read by a DeepSpeed engine, with ``latest``/``best``/history pointers.

    Args:
        directory: The run's checkpoint directory.
        config: The ``checkpoint`` section.  Saves are synchronous whatever ``async_mode`` says:
            every rank takes part in DeepSpeed's save.
        engine: The ``DeepSpeedEngine`` to save and restore; ``read_config``, ``resolve`` and
            ``exists`` work without one.
        interval: As for ``CheckpointManager``.
        unit: As for ``CheckpointManager``.
        tag: As for ``CheckpointManager``.
    """

    is_collective = True

    def __init__(
        self,
        directory: Any,
        config: CheckpointConfig | Mapping[str, Any] | None = None,
        *,
        engine: Any = None,
        interval: int | None = None,
        unit: str = "epoch",
        tag: str = "",
    ) -> None:
        settings = CheckpointConfig(dict(config or {}))
        settings.async_mode = "disabled"
        super().__init__(os.fsdecode(directory), settings, interval=interval, unit=unit, tag=tag)
        self.engine = engine
        if get_rank() == 0:
            os.makedirs(self.directory, exist_ok=True)
            remove_stale_temporaries(self.directory)
            self._remove_incomplete()
        _barrier()
        self.history: deque[str] = deque(
            sorted(name for name in self._tags() if HISTORY_TAG.match(name) and self._complete(name))
        )

    # names and pointers

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _tags(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        return [name for name in os.listdir(self.directory) if os.path.isdir(self.path(name))]

    def _complete(self, tag: str) -> bool:
        return os.path.isfile(os.path.join(self.path(tag), RUNNER_FILE))

    def pointers(self) -> dict[str, str]:
        """``{name: tag}`` of every pointer file in the directory."""
        names = {}
        for entry in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
            if entry.endswith(POINTER) and os.path.isfile(self.path(entry)):
                try:
                    names[entry[: -len(POINTER)]] = _read_pointer(self.path(entry))
                except (OSError, ValueError):
                    continue
        return names

    def _point(self, name: str, tag: str) -> str | None:
        """Make pointer ``name`` name ``tag`` (atomic rename); return the tag it named before."""
        pointer = self.path(name + POINTER)
        previous = _read_pointer(pointer) if os.path.isfile(pointer) else None
        with atomic_write(pointer, fsync=self.config.fsync) as file:
            file.write(tag.encode("utf-8"))
        return None if previous == tag else previous

    def _new_tag(self, request: SaveRequest) -> str:
        """A tag no directory has yet, the same on every rank (rank 0 decides)."""
        base = request.history or f"{request.name}-{self.progress_tag(request.progress)}"
        tag, serial = base, 0
        if get_rank() == 0:
            while os.path.exists(self.path(tag)):
                serial += 1
                tag = f"{base}.{serial}"
        return broadcast_object(tag)

    def _remove_incomplete(self) -> None:
        """Delete tag directories a crashed save left behind (no ``runner.pt``, named by no pointer)."""
        named = set(self.pointers().values())
        for tag in self._tags():
            if tag not in named and not self._complete(tag) and _is_tag_directory(self.path(tag)):
                shutil.rmtree(self.path(tag), ignore_errors=True)

    def _retire(self, candidates: list[str | None]) -> list[str]:
        """Delete those of ``candidates`` that no pointer names and that retention does not keep."""
        named = set(self.pointers().values())
        removed = []
        for tag in dict.fromkeys(candidates):
            if tag is None or tag in named or tag in self.history or not os.path.isdir(self.path(tag)):
                continue
            shutil.rmtree(self.path(tag), ignore_errors=True)
            removed.append(tag)
        return removed

    def _remember_history(self, tag: str) -> list[str]:
        if tag in self.history:
            self.history.remove(tag)
        self.history.append(tag)
        dropped, keep = [], self.config.keep_latest_k
        while keep > 0 and len(self.history) > keep:
            dropped.append(self.history.popleft())
        return dropped

    # saving

    def _persist(self, request: SaveRequest) -> None:
        if self.engine is None:
            raise ValueError("cannot save a DeepSpeed checkpoint: the manager has no engine")
        client_state = {key: value for key, value in request.payload.items() if key not in ENGINE_COMPONENTS}
        tag = self._new_tag(request)
        self.engine.save_checkpoint(self.directory, tag=tag, client_state=client_state, save_latest=False)
        _barrier()  # every rank's shards are on disk before anything names them
        aliases: list[str] = []
        if get_rank() == 0:
            with atomic_write(os.path.join(self.path(tag), RUNNER_FILE), fsync=self.config.fsync) as file:
                torch.save(client_state.get("runner") or {}, file)
            superseded = [self._point(request.name, tag)]
            aliases.append(request.name + POINTER)
            if request.best:
                superseded.append(self._point("best", tag))
                aliases.append("best" + POINTER)
            if request.history is not None:
                superseded.extend(self._remember_history(tag))
            self._retire(superseded)
        elif request.history is not None:
            self._remember_history(tag)
        if request.export_model:
            self.export_model(gather_model_state(self.engine))
            aliases.append(MODEL_EXPORT)
        _barrier()  # pointers and export are visible to every rank when save returns
        self.record_success(tag, tuple(aliases))

    def export_model(self, model_state: Mapping[str, Any] | None, name: str = MODEL_EXPORT) -> str:
        r"""
        Write whole-model weights to ``{directory}/{name}`` (safetensors, ``checkpoint.export_dtype``) on rank 0.

        ``model_state`` is ``gather_model_state(engine)`` (``None`` on other ranks, which write nothing).
        """
        path = self.path(name)
        if model_state is not None and get_rank() == 0:
            save_model_state(model_state, path, dtype=self.config.resolved_export_dtype(), fsync=self.config.fsync)
        return path

    # finding and loading

    @classmethod
    def recognizes(cls, path: str) -> bool:
        """A pointer file, a tag directory, or a checkpoint or run directory with ``latest.pointer``."""
        path = os.fsdecode(path)
        if os.path.isfile(path):
            return path.endswith(POINTER)
        if _is_tag_directory(path):
            return True
        return any(
            os.path.isfile(os.path.join(path, *parts))
            for parts in (("latest.pointer",), ("checkpoints", "latest.pointer"))
        )

    @classmethod
    def read_config(cls, path: str) -> RunnerConfig:
        """The ``RunnerConfig`` of the checkpoint ``path`` refers to (see ``resolve_tag_directory``)."""
        tag_directory = resolve_tag_directory(path)
        runner_file = os.path.join(tag_directory, RUNNER_FILE)
        if not os.path.isfile(runner_file):
            raise ValueError(
                f"cannot read runner config: {tag_directory!r} has no {RUNNER_FILE} (a DeepSpeed checkpoint "
                "not written by DeepSpeedRunner, or an incomplete save)"
            )
        runner = torch.load(runner_file, weights_only=True)
        if not runner:
            raise ValueError(f"cannot read runner config: {runner_file!r} holds no config")
        return RunnerConfig(runner)

    def resolve(self, source: Any = "latest") -> str:
        """The tag directory ``source`` refers to (names are looked up in this manager's directory)."""
        return resolve_tag_directory(source, self.directory)

    def load(
        self,
        source: Any = "latest",
        *,
        template: Any = None,
        map_location: Any = "cpu",
        module_only: bool = False,
    ) -> dict[str, Any]:
        r"""
        Restore the engine from the checkpoint ``source`` names, in place, and return the runner's state.

        Every rank must call it.  The module, the optimizer (unless ``module_only``) and a
        DeepSpeed-owned scheduler are loaded into the engine, so ``model`` and ``optimizer`` come
        back as ``ENGINE_STATE``; the rest is the client state the runner saved.
        """
        if self.engine is None:
            raise ValueError("cannot load a DeepSpeed checkpoint: the manager has no engine")
        tag_directory = self.resolve(source)
        load_dir, tag = os.path.split(os.path.normpath(tag_directory))
        path, client_state = self.engine.load_checkpoint(
            load_dir,
            tag=tag,
            load_optimizer_states=not module_only,
            load_lr_scheduler_states=not module_only,
            load_module_only=module_only,
        )
        if path is None:
            raise CheckpointNotFoundError(f"DeepSpeed could not load the checkpoint at {tag_directory!r}")
        payload = dict(client_state or {})
        payload["model"] = ENGINE_STATE
        if not module_only:
            payload["optimizer"] = ENGINE_STATE
        return payload


register_checkpoint_manager("deepspeed", DeepSpeedCheckpointManager)
