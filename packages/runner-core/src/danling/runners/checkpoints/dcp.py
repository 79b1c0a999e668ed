"""``DCPCheckpointManager``: ``torch.distributed.checkpoint`` directories, named by pointer files.

Layout of ``directory``::

    ckpt-s000000000100/                    # a history save: DCP's .metadata plus every rank's shards
    latest-s000000000105-1f3a9c2e-0004/    # a save without a history entry: {name}-{progress}-{run token}-{serial}
    latest.pointer                         # "ckpt-s000000000100": the directory ``latest`` names
    best.pointer
    model.safetensors                      # full model weights, from ``export_model`` or the final save

Every rank calls ``save``; each save writes one new directory that no later save touches (a
history step that already has a directory from an earlier run gets a directory of its own, and a
``{history}.pointer`` names it).  Rank 0 writes the pointers (a temporary file renamed over the
old one) only once DCP has finished: DCP's coordinator writes ``.metadata`` after every rank
reported its shards written, and rank 0's ``save`` returns after that.  So a ``SIGKILL`` at any
moment leaves each pointer naming a complete checkpoint.

DCP stores tensors (``DTensor`` shards included, resharded on load) and pickles every other leaf
as a bytes entry.  Its flattening loses two things a payload may hold, which are recorded in a
small manifest entry and put back on load (``dcp_structure``): empty dicts (an optimizer's
``state`` before its first step) and keys that are not strings (an optimizer's parameter ids).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import distributed as dist
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from ...utils import PathStr, atomic_write, remove_stale_temporaries
from ..config import RunnerConfig
from ..config_sections import CheckpointConfig
from ..distributed import broadcast_object, get_rank, is_initialized
from .base import CheckpointManager, CheckpointNotFoundError, SaveRequest, collect_state
from .dcp_structure import MANIFEST, add_missing_entries, map_tensors, record_structure, restore_structure
from .export import save_model_state
from .layout import CheckpointLayout
from .staging import StagingPool, snapshot

POINTER = ".pointer"
METADATA = ".metadata"
MODEL_EXPORT = "model.safetensors"
#: History directories: ``ckpt-s000000000100``, or ``ckpt-s000000000100-{token}-{serial}`` for a repeated step.
HISTORY_DIR = re.compile(r"^ckpt-[es]\d+(-[0-9a-f]{8}-\d{4})?$")
#: Directories of saves without a history entry: ``{name}-{progress}-{token}-{serial}``.
UNNAMED_DIR = re.compile(r"^.+-[es]\d+-[0-9a-f]{8}-\d{4}$")

__all__ = ["DCPCheckpointManager", "load_dcp_checkpoint", "read_dcp_config", "resolve_dcp_checkpoint"]


#: DCP's warning when it runs without a process group (its wording in torch 2.6 and in later versions).
_SINGLE_PROCESS_WARNING = r"torch\.distributed is (disabled, )?unavailable or uninitialized"


@contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """Silence DCP's warning that it assumes a single process when no group exists: that is how it is used here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING, category=UserWarning)
        yield


def _is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, METADATA))


def _read_pointer(pointer: str) -> str:
    """The checkpoint directory a pointer file names (a sibling of the pointer)."""
    with open(pointer, encoding="utf-8") as file:
        target = file.read().strip()
    if not target or os.sep in target or (os.altsep and os.altsep in target) or target in (os.curdir, os.pardir):
        raise CheckpointNotFoundError(f"checkpoint pointer {pointer!r} is empty or malformed: {target!r}")
    path = os.path.join(os.path.dirname(pointer), target)
    if not _is_checkpoint(path):
        error = CheckpointNotFoundError(
            f"checkpoint pointer {pointer!r} names {target!r}, which is not a complete DCP checkpoint "
            f"(no {METADATA} there: removed, or not copied along with the pointer)"
        )
        error.dangling = True
        raise error
    return path


def resolve_dcp_checkpoint(source: PathStr, directory: PathStr | None = None, dir_name: str = "checkpoints") -> str:
    r"""
    The DCP checkpoint directory ``source`` refers to.

    ``source`` may be a checkpoint directory (it holds ``.metadata``), a pointer file, a folder of
    checkpoints or a run directory (their ``latest.pointer`` or ``{dir_name}/latest.pointer``), or,
    with ``directory``, a name in it (``"latest"``, ``"best"``, ``"ckpt-s000000000100"``).

    Raises:
        CheckpointNotFoundError: nothing is there (the message lists what was tried), or a pointer
            names a directory that is gone or incomplete (``dangling``).
    """
    path = os.fsdecode(source)
    if os.path.isdir(path):
        if _is_checkpoint(path):
            return path
        candidates = [os.path.join(path, "latest" + POINTER), os.path.join(path, dir_name, "latest" + POINTER)]
    elif directory is not None and not os.path.isabs(path) and os.sep not in path:
        base = os.fsdecode(directory)
        name = path.removesuffix(POINTER)
        candidates = [os.path.join(base, name + POINTER), os.path.join(base, name), path]
    else:
        candidates = [path]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return _read_pointer(candidate)
        if os.path.isdir(candidate) and _is_checkpoint(candidate):
            return candidate
    tried = ", ".join(repr(candidate) for candidate in candidates)
    raise CheckpointNotFoundError(f"DCP checkpoint {path!r} does not exist (looked for {tried})")


def _read(path: str, keys: set[str] | None = None) -> dict[str, Any]:
    """Everything (or the entries under ``keys``) of the DCP checkpoint at ``path``, in this process alone.

    Tensors come back whole, as plain CPU tensors, however many ranks wrote them.  No process
    group is used, so one rank of a running group may call it (``dcp.load`` would wait for the
    others).  This is what ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` does.
    """
    state: dict[str, Any] = {}
    planner = _EmptyStateDictLoadPlanner(keys=None if keys is None else {*keys, MANIFEST})
    with _single_process_is_intended():
        _load_state_dict(state, storage_reader=FileSystemReader(path), planner=planner, no_dist=True)
    return restore_structure(state, keys)


def load_dcp_checkpoint(source: PathStr, directory: PathStr | None = None, *, map_location: Any = "cpu") -> dict:
    r"""
    The whole DCP checkpoint ``source`` refers to (see ``resolve_dcp_checkpoint``), tensors on ``map_location``.

    Works without a process group; a checkpoint written by any number of ranks loads whole.
    """
    state = _read(resolve_dcp_checkpoint(source, directory))
    if isinstance(map_location, (str, torch.device)) and torch.device(map_location) != torch.device("cpu"):
        state = map_tensors(state, lambda tensor: tensor.to(map_location))
    return state


def read_dcp_config(source: PathStr, directory: PathStr | None = None) -> RunnerConfig:
    r"""
    The ``RunnerConfig`` a DCP checkpoint was saved with; reads only its ``runner`` entry.

    Raises:
        CheckpointNotFoundError: ``source`` does not exist.
        ValueError: the checkpoint has no ``runner`` entry.
    """
    path = resolve_dcp_checkpoint(source, directory)
    state = _read(path, {"runner"})
    if state.get("runner") is None:
        raise ValueError(f"cannot read runner config: DCP checkpoint {path!r} has no 'runner' entry")
    return RunnerConfig(state["runner"])


class DCPCheckpointManager(CheckpointManager):
    r"""
    Checkpoints as ``torch.distributed.checkpoint`` directories with ``latest``, ``best`` and history pointers.

    Every rank must call ``save`` (``is_collective``) and construct the manager (it agrees on a run
    token, and for asynchronous saves creates a dedicated gloo process group once).  With
    ``async_mode="async"`` a save returns once the payload is copied to host memory; the write
    goes on in DCP's thread and the pointers flip when it completes.  One save is in flight at a
    time: the next one waits for it.  ``keep_latest_k`` keeps the newest history directories;
    rank 0 deletes older ones and any directory no pointer names, never one a pointer names.

    See ``CheckpointManager`` for the arguments and ``save``.

    Examples:
        >>> import tempfile
        >>> manager = DCPCheckpointManager(tempfile.mkdtemp(), {"async_mode": "disabled"}, interval=1)
        >>> model = torch.nn.Linear(2, 2)
        >>> manager.save({"model": model, "runner": {"lr": 0.1}}, progress=1, best=True)
        True
        >>> sorted(os.listdir(manager.directory))
        ['best.pointer', 'ckpt-e000001', 'latest.pointer']
        >>> loaded = manager.load("best")
        >>> torch.equal(loaded["model"]["weight"], model.weight), loaded["runner"]
        (True, {'lr': 0.1})
    """

    is_collective = True

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
        # DCP runs its own background save; the base class's writer thread would let ranks drop
        # different queued saves, and a collective save must happen on every rank or on none.
        if self._finalizer is not None:
            self._finalizer.detach()
        self._writer = self._finalizer = None
        if self.async_mode == "async_with_pinned_mem":
            self.async_mode = "async"  # the snapshot is a host copy either way
        self._main = get_rank() == 0
        os.makedirs(self.directory, exist_ok=True)
        taken: list[str] = []
        if self._main:
            remove_stale_temporaries(self.directory)
            self._remove_debris()
            taken = sorted(os.listdir(self.directory))
        # One collective here: every rank names its saves alike, after rank 0 has cleaned up.
        self._token, taken = broadcast_object((uuid.uuid4().hex[:8], taken))
        self._taken = set(taken)
        self._serials = itertools.count()
        self.history: deque[str] = deque(name for name in taken if HISTORY_DIR.match(name))
        self._group = self._async_group() if self.async_mode == "async" else None
        self._in_flight: Future | None = None
        self._staging_future: Future | None = None  # DCP's host copy of the save in flight, where it has one
        self._pool = StagingPool()  # host buffers of the last written snapshot, for the next one

    def _async_group(self) -> Any:
        if not is_initialized() or not self.config.dedicated_async_process_group:
            return None
        return dist.new_group(backend=self.config.async_process_group_backend)

    # names

    def pointer(self, name: str) -> str:
        """Pointer file of checkpoint ``name`` (``"latest"`` -> ``{directory}/latest.pointer``)."""
        return os.path.join(self.directory, name.removesuffix(POINTER) + POINTER)

    def _target(self, request: SaveRequest) -> str:
        """The new directory of ``request``: its history name if free, else a name of its own."""
        if request.history is not None and request.history not in self._taken:
            name = request.history
        else:
            base = request.history or f"{request.name}-{self.progress_tag(request.progress)}"
            name = f"{base}-{self._token}-{next(self._serials) % 10000:04d}"
        self._taken.add(name)
        return name

    # saving

    def _persist(self, request: SaveRequest) -> None:
        self._drain()  # one save in flight: DCP's background save holds the async group and its staged copy
        target = self._target(request)
        payload = dict(request.payload)
        payload[MANIFEST] = record_structure(request.payload)
        writer = FileSystemWriter(os.path.join(self.directory, target), sync_files=self.config.fsync)
        if request.export_model:
            self.export_model(request.payload["model"])
        if self.async_mode != "async":
            try:
                with _single_process_is_intended():
                    dcp.save(payload, storage_writer=writer)
            except CheckpointException as error:
                raise _failed(target, error) from error
            self._finish(request, target)
            if is_initialized():
                dist.barrier()  # the pointers are in place on every rank's return
            return
        # Our own host copy: DCP's staging in torch < 2.7 hands CPU tensors over as they are
        # (``.to("cpu")``), so training would change them under the write.
        staged: list[torch.Tensor] = []
        payload = snapshot(payload, self._pool, staged, fresh={MANIFEST})
        try:
            with _single_process_is_intended():
                response = dcp.async_save(payload, storage_writer=writer, process_group=self._group)
        except BaseException:
            self._pool.release(staged)
            raise
        future = getattr(response, "upload_completion", response)
        self._staging_future = getattr(response, "staging_completion", None)
        done: Future = Future()
        future.add_done_callback(lambda finished: self._complete(finished, done, request, target, staged))
        self._in_flight = done

    def _complete(
        self, finished: Future, done: Future, request: SaveRequest, target: str, staged: list[torch.Tensor]
    ) -> None:
        """DCP's save ended (on its thread): flip the pointers, or record why not; recycle the host copy."""
        self._pool.release(staged)
        try:
            try:
                finished.result()
            except CheckpointException as error:
                raise _failed(target, error) from error
            self._finish(request, target)
        except Exception as error:
            self.record_failure(target, error)
            if self.config.fail_on_error:
                self._deferred_error = error
        finally:
            done.set_result(None)

    def _finish(self, request: SaveRequest, target: str) -> None:
        """Point the request's names at ``target`` (rank 0), apply retention, record the save."""
        names = ["latest"]
        if request.name != "latest":
            names.append(request.name)
        if request.history is not None and target != request.history:
            names.append(request.history)
        if request.best:
            names.append("best")
        if request.history is not None:
            self.history.append(target)
        keep = self.config.keep_latest_k
        while keep > 0 and len(self.history) > keep:
            self.history.popleft()
        if self._main:
            for name in names:
                with atomic_write(self.pointer(name), fsync=self.config.fsync) as file:
                    file.write(target.encode("utf-8"))
            CheckpointLayout(self.directory, fsync=self.config.fsync).sync()
            self._remove_unneeded()
        aliases = tuple(name + POINTER for name in names)
        self.record_success(target, (*aliases, MODEL_EXPORT) if request.export_model else aliases)

    def export_model(self, model_state: Mapping[str, Any], name: str = MODEL_EXPORT) -> str:
        r"""
        Write full, unsharded model weights to ``{directory}/{name}`` (safetensors); return the path.

        Collective in a process group (every rank calls it): each ``DTensor`` is gathered
        (``full_tensor``) on every rank, then rank 0 writes the file.
        """
        full = {
            key: value.full_tensor() if hasattr(value, "full_tensor") else value for key, value in model_state.items()
        }
        path = os.path.join(self.directory, name)
        if self._main:
            save_model_state(full, path, dtype=self.config.resolved_export_dtype(), fsync=self.config.fsync)
        if is_initialized():
            dist.barrier()  # the file is there on every rank's return
        return path

    # retention and clean-up (rank 0)

    def _referenced(self) -> set[str]:
        names = set()
        for entry in os.listdir(self.directory):
            if entry.endswith(POINTER):
                with suppress(OSError), open(os.path.join(self.directory, entry), encoding="utf-8") as file:
                    names.add(file.read().strip())
        return names

    def _remove_unneeded(self) -> None:
        """Drop history beyond ``keep_latest_k`` and saves no pointer names; never a directory a pointer names."""
        for entry in os.listdir(self.directory):  # the pointer of a repeated history step goes with its entry
            if entry.endswith(POINTER) and HISTORY_DIR.match(entry.removesuffix(POINTER)):
                with suppress(OSError), open(os.path.join(self.directory, entry), encoding="utf-8") as file:
                    dropped = file.read().strip() not in self.history
                if dropped:
                    with suppress(FileNotFoundError):
                        os.remove(os.path.join(self.directory, entry))
        referenced = self._referenced()
        for entry in os.listdir(self.directory):
            if entry in referenced or entry in self.history or not os.path.isdir(os.path.join(self.directory, entry)):
                continue
            if HISTORY_DIR.match(entry) or UNNAMED_DIR.match(entry):
                shutil.rmtree(os.path.join(self.directory, entry), ignore_errors=True)

    def _remove_debris(self) -> None:
        """At start: drop what crashed saves left (incomplete directories, saves no pointer names)."""
        referenced = self._referenced()
        for entry in os.listdir(self.directory):
            path = os.path.join(self.directory, entry)
            if entry in referenced or not os.path.isdir(path):
                continue
            complete_history = HISTORY_DIR.match(entry) and _is_checkpoint(path)
            if not complete_history and (HISTORY_DIR.match(entry) or UNNAMED_DIR.match(entry)):
                shutil.rmtree(path, ignore_errors=True)

    # finding and loading

    @classmethod
    def recognizes(cls, path: str) -> bool:
        """A DCP directory (``.metadata``), a pointer naming one, or a folder whose pointers name one."""
        path = os.fsdecode(path)
        if os.path.isfile(path):
            return path.endswith(POINTER) and _pointer_names_checkpoint(path)
        if not os.path.isdir(path):
            return False
        if _is_checkpoint(path):
            return True
        for folder in (path, os.path.join(path, "checkpoints")):
            if os.path.isdir(folder) and any(
                entry.endswith(POINTER) and _pointer_names_checkpoint(os.path.join(folder, entry))
                for entry in os.listdir(folder)
            ):
                return True
        return False

    @classmethod
    def read_config(cls, path: str) -> RunnerConfig:
        return read_dcp_config(path)

    def resolve(self, source: PathStr = "latest") -> str:
        """The checkpoint directory ``source`` refers to; names are looked up in ``directory``."""
        return resolve_dcp_checkpoint(source, self.directory, self.config.dir_name)

    def load(
        self,
        source: PathStr = "latest",
        *,
        template: Callable[[], Mapping[str, Any]] | None = None,
        map_location: Any = "cpu",
    ) -> dict[str, Any]:
        r"""
        The checkpoint ``source`` refers to, as ``{component: state}``.

        With ``template`` (returning the current components or their states) the checkpoint is read
        into the template's tensors in place with ``dcp.load``, so ``DTensor``\ s stay sharded and
        are resharded from however many ranks wrote them; every rank must call it then.  Entries the
        template lacks are read whole.  Without a template everything is read whole, in this process
        alone (no process group needed), onto ``map_location``.
        """
        path = self.resolve(source)
        if template is None:
            return load_dcp_checkpoint(path, map_location=map_location)
        state = collect_state(template())
        add_missing_entries(state, FileSystemReader(path).read_metadata())
        # Entries the template has and the checkpoint lacks (a component added since) keep their values.
        planner = DefaultLoadPlanner(allow_partial_load=True)
        with _single_process_is_intended():
            dcp.load(state, storage_reader=FileSystemReader(path), planner=planner)
        return restore_structure(state)

    # lifecycle

    def maybe_wait_for_staging(self, timeout: float | None = None) -> bool:
        """Return once DCP's host copy of the save in flight is made, so parameters may change."""
        staging = self._staging_future
        if staging is None:
            return True
        try:
            staging.result(timeout)
        except FutureTimeout:
            return False
        self._staging_future = None
        return True

    def _drain(self, timeout: float | None = None) -> bool:
        in_flight = self._in_flight
        if in_flight is not None:
            try:
                in_flight.result(timeout)
            except FutureTimeout:
                return False
            self._in_flight = self._staging_future = None
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the save in flight is written and its pointers flipped; ``False`` on timeout.

        Raises the error of a failed save when ``checkpoint.fail_on_error`` is set.
        """
        drained = self._drain(timeout)
        self._raise_deferred_error()
        return drained

    def close(self, timeout: float | None = None) -> bool:
        """Wait for the save in flight; ``False`` on timeout (call again to retry)."""
        return self.wait(timeout)


def _failed(target: str, error: CheckpointException) -> RuntimeError:
    """DCP's ``CheckpointException`` (a ``BaseException``) as an error that a failed save may record and go on from."""
    return RuntimeError(f"DCP could not save checkpoint {target!r}: {error}")


def _pointer_names_checkpoint(pointer: str) -> bool:
    try:
        _read_pointer(pointer)
    except (OSError, CheckpointNotFoundError):
        return False
    return True
