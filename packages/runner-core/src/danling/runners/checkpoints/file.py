"""``FileCheckpointManager``: one ``torch.save`` file per checkpoint, written atomically.

Layout of ``directory``::

    latest.pth            # newest checkpoint (``{name}.pth`` for other names, e.g. seed.pth)
    best.pth              # best checkpoint so far (hard link to the file it was saved as)
    ckpt-e000003.pth      # history: one per ``interval`` epochs (``ckpt-s000000001000`` in step mode)
    model.safetensors     # model weights alone, from ``export_model`` or the final save

Every file is written to a temporary file, flushed to disk and moved into place with
``os.replace``, so a crash or ``SIGTERM`` mid-save leaves the previous ``latest.pth`` intact.
Aliases (history, ``best``) are hard links, so they cost no extra space or time.

``load_checkpoint`` and ``resolve_checkpoint_path`` also work without a manager (``Runner.
from_checkpoint`` needs them before a run exists).
"""

from __future__ import annotations

import os
import pickle
import re
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import torch

from ...utils import PathStr, atomic_link, atomic_write, remove_stale_temporaries
from ..config import RunnerConfig
from ..config_sections import CheckpointConfig
from ..utils import is_main_process
from .base import CheckpointManager, CheckpointNotFoundError, SaveRequest
from .export import load_model_state, save_model_state

SUFFIX = ".pth"
MODEL_EXPORT = "model.safetensors"
_HISTORY = re.compile(r"^ckpt-[es]\d+\.pth$")


def resolve_checkpoint_path(source: PathStr, directory: PathStr | None = None) -> str:
    r"""
    The checkpoint file that ``source`` names.

    ``source`` may be a file; a checkpoint directory or a run directory (its ``latest.pth`` or
    ``checkpoints/latest.pth``); or, with ``directory``, a name in it (``"latest"``, ``"best"``,
    ``"ckpt-e000003"``, with or without ``.pth``).

    Raises:
        CheckpointNotFoundError: nothing exists there; the message lists every path tried.
    """
    path = os.fsdecode(source)
    candidates = [path]
    if os.path.isdir(path):
        candidates = [os.path.join(path, "latest" + SUFFIX), os.path.join(path, "checkpoints", "latest" + SUFFIX)]
    elif directory is not None and not os.path.isabs(path) and os.sep not in path:
        base = os.fsdecode(directory)
        candidates = [os.path.join(base, path), os.path.join(base, path + SUFFIX), path]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    tried = ", ".join(repr(candidate) for candidate in candidates)
    raise CheckpointNotFoundError(f"checkpoint {path!r} does not exist (looked for {tried})")


def load_checkpoint(
    source: PathStr,
    directory: PathStr | None = None,
    *,
    map_location: Any = "cpu",
    weights_only: bool = True,
    mmap: bool = False,
) -> dict[str, Any]:
    r"""
    Load the checkpoint ``source`` names (see ``resolve_checkpoint_path``) onto ``map_location``.

    ``weights_only=True`` (the default) unpickles only tensors and plain containers, so a
    malicious file cannot run code; checkpoints written by this package load that way.  Pass
    ``weights_only=False`` for a trusted file that holds other Python objects.  A ``.safetensors``
    file (a model export) loads as ``{"model": {name: tensor}}``.

    Raises:
        CheckpointNotFoundError: ``source`` does not exist.
        pickle.UnpicklingError: the file needs ``weights_only=False``; the message says which object.
    """
    path = resolve_checkpoint_path(source, directory)
    if path.endswith(".safetensors"):
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        return {"model": load_model_state(path, device=device)}
    try:
        payload = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except pickle.UnpicklingError as error:
        if not weights_only:
            raise
        raise pickle.UnpicklingError(
            f"checkpoint {path!r} holds objects other than tensors and plain containers, so it cannot be "
            f"loaded with weights_only=True; if you trust the file, load it with weights_only=False. "
            f"torch said: {error}"
        ) from error
    if not isinstance(payload, Mapping):
        raise ValueError(f"checkpoint {path!r} is not a mapping of components: got {type(payload).__name__}")
    return dict(payload)


def read_config(source: PathStr, directory: PathStr | None = None) -> RunnerConfig:
    r"""
    The ``RunnerConfig`` stored in a checkpoint (its ``"runner"`` entry).

    Raises:
        CheckpointNotFoundError: ``source`` does not exist.
        ValueError: the checkpoint has no ``"runner"`` entry (a model-only checkpoint).
    """
    payload = load_checkpoint(source, directory, mmap=True)
    if payload.get("runner") is None:
        raise ValueError(
            "cannot read runner config: checkpoint is missing key 'runner'; use from_pretrained(...) for "
            "model-only checkpoints"
        )
    return RunnerConfig(payload["runner"])


class FileCheckpointManager(CheckpointManager):
    r"""
    Checkpoints as ``torch.save`` files with ``latest``, ``best`` and history aliases.

    Construction creates ``directory``, removes temporary files left by crashed processes (on the
    main process, which is the one that writes; call ``save`` there only), and
    picks up existing history files so ``keep_latest_k`` keeps counting across restarts.  See
    ``CheckpointManager`` for the arguments and ``save``.

    Examples:
        >>> import tempfile
        >>> manager = FileCheckpointManager(tempfile.mkdtemp(), {"async_mode": "disabled"}, interval=1)
        >>> model = torch.nn.Linear(2, 2)
        >>> manager.save({"model": model, "epoch": 1}, progress=1, best=True)
        True
        >>> sorted(os.listdir(manager.directory))
        ['best.pth', 'ckpt-e000001.pth', 'latest.pth']
        >>> torch.equal(manager.load("best")["model"]["weight"], model.weight)
        True
    """

    def __init__(
        self,
        directory: PathStr,
        config: CheckpointConfig | Mapping[str, Any] | None = None,
        *,
        interval: int | None = None,
        unit: str = "epoch",
        tag: str = "",
    ) -> None:
        super().__init__(os.fsdecode(directory), config, interval=interval, unit=unit, tag=tag)
        if self.async_mode == "async_with_pinned_mem":
            self.async_mode = "async"  # the snapshot in ``save`` is already a host copy
        os.makedirs(self.directory, exist_ok=True)
        if is_main_process():  # the process that writes; others may sit on hosts where its pid means nothing
            remove_stale_temporaries(self.directory)
        self.history: deque[str] = deque(sorted(entry for entry in os.listdir(self.directory) if _HISTORY.match(entry)))

    def path(self, name: str) -> str:
        """File of checkpoint ``name`` (``"latest"`` -> ``{directory}/latest.pth``)."""
        return os.path.join(self.directory, name if name.endswith(SUFFIX) else name + SUFFIX)

    def _persist(self, request: SaveRequest) -> None:
        target = self.path(request.name)
        with atomic_write(target, fsync=self.config.fsync) as file:
            torch.save(request.payload, file)
        aliases = [os.path.basename(target)]
        if request.history is not None and self._alias(target, self.path(request.history)):
            aliases.append(request.history + SUFFIX)
            self._remember_history(request.history + SUFFIX)
        if request.best and self._alias(target, self.path("best")):
            aliases.append("best" + SUFFIX)
        if request.export_model:
            self.export_model(request.payload["model"])
            aliases.append(MODEL_EXPORT)
        self.record_success(request.history + SUFFIX if request.history else os.path.basename(target), tuple(aliases))

    def _alias(self, source: str, alias: str) -> bool:
        try:
            atomic_link(source, alias)
        except OSError as error:
            self.record_failure(os.path.basename(alias), error)
            return False
        return True

    def _remember_history(self, name: str) -> None:
        if name in self.history:
            self.history.remove(name)
        self.history.append(name)
        keep = self.config.keep_latest_k
        while keep > 0 and len(self.history) > keep:
            with suppress(FileNotFoundError):
                os.remove(os.path.join(self.directory, self.history.popleft()))

    def export_model(self, model_state: Mapping[str, Any], name: str = MODEL_EXPORT) -> str:
        r"""
        Write the model weights alone to ``{directory}/{name}`` (safetensors), cast to ``checkpoint.export_dtype``.

        Synchronous; returns the path.  Load it with ``load_model`` (or any safetensors reader).
        """
        path = os.path.join(self.directory, name)
        return save_model_state(model_state, path, dtype=self.config.resolved_export_dtype(), fsync=self.config.fsync)

    def load_model(self, source: PathStr = MODEL_EXPORT) -> dict[str, torch.Tensor]:
        """Read an exported model (a name in ``directory`` or a path) as ``{name: tensor}``."""
        path = os.fsdecode(source)
        candidate = os.path.join(self.directory, path)
        if os.sep not in path and os.path.isfile(candidate):
            path = candidate
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"model export {os.fsdecode(source)!r} does not exist (looked for {path!r})")
        return load_model_state(path)

    def load(
        self, source: PathStr = "latest", *, map_location: Any = "cpu", weights_only: bool = True
    ) -> dict[str, Any]:
        """Load a checkpoint by name in ``directory`` (``"latest"``, ``"best"``, history names) or by path."""
        return load_checkpoint(source, self.directory, map_location=map_location, weights_only=weights_only)
