"""``FileCheckpointManager``: one ``torch.save`` file per checkpoint, written once, named by aliases.

Layout of ``directory`` (``layout`` has the details)::

    ckpt-e000003.pth                   # history: one per ``interval`` epochs (ckpt-s000000001000.pth in step mode)
    latest-e000005-4711-2.pth          # a save off the history cadence (forced, final)
    latest.pth -> ckpt-e000003.pth     # newest checkpoint ({name}.pth for other names, e.g. seed.pth)
    best.pth -> ckpt-e000003.pth       # best checkpoint so far
    model.safetensors                  # model weights alone, from ``export_model`` or the final save

Each save writes its data once, to a temporary file renamed to a new name, then flips the
aliases (relative symbolic links) with an atomic rename: a crash, ``SIGKILL`` or ``SIGTERM``
mid-save leaves ``latest.pth`` naming the previous, complete checkpoint.  ``torch.load`` of an
alias works as of any file.  Where symbolic links cannot be made, aliases are hard links.

Asynchronous saves stage tensors in shared memory and leave ``torch.save`` to a child process
(``serializer``; ``checkpoint.async_writer``), so the training process only copies tensors.

``load_checkpoint`` and ``resolve_checkpoint_path`` also work without a manager (``Runner.
from_checkpoint`` needs them before a run exists).
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch

from ...utils import PathStr, remove_stale_temporaries
from ..config import RunnerConfig
from ..config_sections import CheckpointConfig
from ..utils import is_main_process
from .base import CheckpointManager, CheckpointNotFoundError, SaveRequest
from .export import averaged_model_weights, load_model_state, save_model_state
from .layout import HISTORY, SUFFIX, CheckpointLayout
from .serializer import SerializerLost, SerializerProcess, encode_payload
from .shared_buffers import SharedBuffers
from .staging import StagingPool

MODEL_EXPORT = "model.safetensors"
#: The weights of the runner's exponential moving average (``config.ema``), exported beside the model.
EMA_EXPORT = "ema.safetensors"
BEST = "best" + SUFFIX


def resolve_checkpoint_path(source: PathStr, directory: PathStr | None = None) -> str:
    r"""
    The checkpoint file that ``source`` names.

    ``source`` may be a file; a checkpoint directory or a run directory (its ``latest.pth`` or
    ``checkpoints/latest.pth``); or, with ``directory``, a name in it (``"latest"``, ``"best"``,
    ``"ckpt-e000003"``, with or without ``.pth``).  An alias is returned as it is named (it stays
    a symbolic link); ``load_checkpoint`` opens the file it points at.

    Raises:
        CheckpointNotFoundError: nothing exists there (the message lists every path tried), or
            an alias points at a file that is gone (the message names both).
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
        if os.path.islink(candidate):
            error = CheckpointNotFoundError(
                f"checkpoint alias {candidate!r} points to {os.readlink(candidate)!r}, which does not exist "
                f"(the file was removed or not copied along with the alias)"
            )
            error.dangling = True
            raise error
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
    # Open the data file an alias names, so a save that flips the alias meanwhile cannot mix two files.
    path = os.path.realpath(path) if os.path.islink(path) else path
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

    Construction creates ``directory`` and, on the main process (the one that writes; call
    ``save`` there only), removes temporary and data files left by crashed processes.  Existing
    history entries are picked up, so ``keep_latest_k`` keeps counting across restarts.
    Retention deletes a data file once no alias names it and it is not one of the newest
    ``keep_latest_k`` history entries: ``latest`` and ``best`` always load.  See
    ``CheckpointManager`` for the arguments and ``save``.

    Examples:
        >>> import tempfile
        >>> manager = FileCheckpointManager(tempfile.mkdtemp(), {"async_mode": "disabled"}, interval=1)
        >>> model = torch.nn.Linear(2, 2)
        >>> manager.save({"model": model, "epoch": 1}, progress=1, best=True)
        True
        >>> sorted(os.listdir(manager.directory)), os.readlink(manager.path("latest"))
        (['best.pth', 'ckpt-e000001.pth', 'latest.pth'], 'ckpt-e000001.pth')
        >>> torch.equal(manager.load("best")["model"]["weight"], model.weight)
        True
    """

    recycles_snapshots = True

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
        self.layout = CheckpointLayout(self.directory, fsync=self.config.fsync)
        self._serializer: SerializerProcess | None = None
        if self._writer is not None and self._uses_serializer_process():
            self._buffers = SharedBuffers()
            self._staging = StagingPool(allocate=self._buffers.empty)
            self._serializer = SerializerProcess.shared()
        if is_main_process():  # the process that writes; others may sit on hosts where its pid means nothing
            remove_stale_temporaries(self.directory)
            self.layout.remove_orphans()
        self.history: deque[str] = deque(
            sorted(
                entry
                for entry in os.listdir(self.directory)
                if HISTORY.match(entry) and not os.path.islink(self.path(entry))
            )
        )

    def path(self, name: str) -> str:
        """Alias of checkpoint ``name`` (``"latest"`` -> ``{directory}/latest.pth``)."""
        return os.path.join(self.directory, name if name.endswith(SUFFIX) else name + SUFFIX)

    def _uses_serializer_process(self) -> bool:
        writer = str(self.config.async_writer).strip().lower()
        # other ranks never write file checkpoints
        return writer != "thread" and SerializerProcess.supported() and is_main_process()

    def _persist(self, request: SaveRequest) -> None:
        data = self.layout.data_name(request.name, self.progress_tag(request.progress), request.history)
        if not self._write_in_child(request, data):
            with self.layout.write(data) as file:
                torch.save(request.payload, file)
        # Files that may have lost their last reference; the new file is one if its alias fails.
        superseded = [data, *(self._remember_history(data) if request.history is not None else ())]
        aliases = []
        try:
            superseded.append(self.layout.point(request.name + SUFFIX, data))
            aliases.append(request.name + SUFFIX)
            if request.best and self._point_best(data, superseded):
                aliases.append(BEST)
            self.layout.sync()
        finally:
            self.layout.remove_unreferenced(superseded, keep=self.history)
        if request.export_model:
            self.export_model(request.payload["model"])
            aliases.append(MODEL_EXPORT)
            averaged = averaged_model_weights(request.payload.get("ema"))
            if averaged:
                self.export_model(averaged, EMA_EXPORT)
                aliases.append(EMA_EXPORT)
        self.record_success(data, tuple(aliases))

    def _write_in_child(self, request: SaveRequest, data: str) -> bool:
        """Write data file ``data`` with the serializer process; ``False`` when this process should write it.

        That is when there is no serializer (any more), and when shared memory ran out for some of the
        request's tensors (``_encode`` left it unencoded): sending those through the socket would copy
        them twice.
        """
        # the buffers' files, which the child reads by name, may be gone: a finalizer unlinks each
        # file when its tensor dies (at interpreter exit, say, for the pool's free buffers)
        if self._serializer is None or request.encoded is None or not all(map(self._buffers.holds, request.staged)):
            return False
        try:
            with self.layout.write_path(data) as temporary:
                self._serializer.send(request.encoded, temporary, self._buffers)
            return True
        except SerializerLost as lost:
            warnings.warn(f"{lost}; writing checkpoints on a thread from now on", RuntimeWarning, stacklevel=2)
            self._serializer = None
            return False

    def _encode(self, request: SaveRequest) -> None:
        # only a payload whose tensors all sit in shared memory: others would cross the socket by value
        if self._serializer is not None and all(map(self._buffers.holds, request.staged)):
            request.encoded = encode_payload(request.payload, self._buffers)

    def _point_best(self, data: str, superseded: list[str | None]) -> bool:
        try:
            superseded.append(self.layout.point(BEST, data))
        except OSError as error:  # the checkpoint itself is saved: record and carry on
            self.record_failure(BEST, error)
            return False
        return True

    def _remember_history(self, name: str) -> list[str]:
        """Add history entry ``name``; return the entries ``keep_latest_k`` drops."""
        if name in self.history:
            self.history.remove(name)
        self.history.append(name)
        keep, dropped = self.config.keep_latest_k, []
        while keep > 0 and len(self.history) > keep:
            dropped.append(self.history.popleft())
        return dropped

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

    @classmethod
    def recognizes(cls, path: str) -> bool:
        """A ``.pth``/``.safetensors`` file, or a run or checkpoint directory holding ``latest.pth``."""
        if os.path.isdir(path):
            return any(
                os.path.lexists(os.path.join(path, *parts, "latest" + SUFFIX)) for parts in ((), ("checkpoints",))
            )
        return path.endswith((SUFFIX, ".safetensors")) or os.path.isfile(path)

    @classmethod
    def read_config(cls, path: str) -> RunnerConfig:
        return read_config(path)

    def resolve(self, source: PathStr = "latest") -> str:
        """The file ``source`` names (see ``resolve_checkpoint_path``); names are looked up in ``directory``."""
        return resolve_checkpoint_path(source, self.directory)

    def load(
        self,
        source: PathStr = "latest",
        *,
        template: Any = None,
        map_location: Any = "cpu",
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Load a checkpoint by name in ``directory`` (``"latest"``, ``"best"``, history names) or by path."""
        return load_checkpoint(source, self.directory, map_location=map_location, weights_only=weights_only)
