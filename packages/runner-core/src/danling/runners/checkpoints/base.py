"""``CheckpointManager``: when to save, what goes into a checkpoint, and writing in the background.

A manager is handed the run's stateful components (``{"model": ..., "optimizer": ..., "state":
...}``) and decides only *when* (cadence), *where* and *how* to write them.  Backends subclass
it and implement ``_persist`` (write one checkpoint) and ``load``; this module holds what they
share:

- cadence: ``should_save`` and ``history_name`` from ``interval`` and the run's progress;
- payload: ``collect_state`` calls ``state_dict()`` on components; for an asynchronous save
  ``snapshot`` (``staging``) copies tensors to host memory so the write cannot see later
  in-place updates;
- ``BackgroundWriter``: one writer thread, saves persisted in order, with queued ``latest``
  saves coalesced (only the newest one is written);
- ``CheckpointHealth``: counters and the last error, for logs and tests.
"""

from __future__ import annotations

import atexit
import math
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from chanfig import FlatDict

from ..config_sections import CheckpointConfig
from .staging import StagingPool, snapshot

#: Units of progress: ``epoch`` counts completed epochs, ``step`` completed optimizer steps.
UNITS = ("epoch", "step")


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """A checkpoint source that does not exist.  Also a ``ValueError`` for callers that catch bad input.

    ``dangling`` is true when a name exists but points at nothing (an alias whose file is gone).
    """

    dangling: bool = False


def resolve_checkpoint_interval(interval: int | None, *, steps: int | None = None, epochs: int | None = None) -> int:
    r"""
    The save cadence a runner should use: ``interval`` when set, else a default from the budget.

    Epoch mode saves every epoch; step mode about 20 times per run; an unknown budget every
    8192 steps.

    Examples:
        >>> resolve_checkpoint_interval(None, epochs=10), resolve_checkpoint_interval(None, steps=1000)
        (1, 50)
        >>> resolve_checkpoint_interval(3, steps=1000), resolve_checkpoint_interval(None)
        (3, 8192)
    """
    if interval is not None:
        return int(interval)
    if epochs is not None:
        return 1
    if steps is not None:
        return max(math.ceil(steps / 20), 1)
    return 8192


def collect_state(components: Mapping[str, Any]) -> dict[str, Any]:
    r"""
    The payload of a checkpoint: ``state_dict()`` of each stateful component, configs as plain dicts.

    Examples:
        >>> payload = collect_state({"model": torch.nn.Linear(2, 1), "epoch": 3})
        >>> sorted(payload["model"]), payload["epoch"]
        (['bias', 'weight'], 3)
    """
    if not isinstance(components, Mapping):
        raise ValueError(
            f"checkpoint state must be a mapping of component name -> state, got {type(components).__name__}"
        )
    payload: dict[str, Any] = {}
    for key, value in components.items():
        # Look ``state_dict`` up on the class: ``hasattr`` on a chanfig config would create the key.
        if callable(getattr(type(value), "state_dict", None)):
            value = value.state_dict()
        elif isinstance(value, FlatDict):
            value = value.dict()
        payload[key] = value
    return payload


@dataclass
class CheckpointHealth:
    r"""
    What happened to the checkpoints so far.

    Attributes:
        saved: Checkpoints written successfully.
        error_count: Failed writes (including failed aliases).
        last_error: Message of the last failure.
        last_failed_target: File (or alias) that failed last.
        last_successful_target: File the last successful save wrote its data to.
        last_successful_aliases: Names the last successful save pointed at that file (``latest.pth``,
            ``best.pth`` ...), and the model export when it wrote one.
    """

    saved: int = 0
    error_count: int = 0
    last_error: str | None = None
    last_failed_target: str | None = None
    last_successful_target: str | None = None
    last_successful_aliases: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class SaveRequest:
    r"""
    One checkpoint to write.

    Attributes:
        name: Logical name (``"latest"``, ``"seed"`` ...).
        payload: What to write.
        progress: Completed epochs or optimizer steps at the time of the save.
        history: History entry to create (``"ckpt-e000003"``), or ``None``.
        best: Also update the ``best`` alias.
        export_model: Also export ``payload["model"]`` on its own (safetensors).
        staged: Recycled host buffers holding the payload's tensors (asynchronous saves of
            backends that recycle them); handed back to the pool once the request is written.
        encoded: The payload already serialised for the writer, where a backend does that on
            the saving thread (``CheckpointManager._encode``).
    """

    name: str
    payload: dict[str, Any]
    progress: int
    history: str | None = None
    best: bool = False
    export_model: bool = False
    staged: list[torch.Tensor] = field(default_factory=list)
    encoded: bytes | None = None

    @property
    def coalescable(self) -> bool:
        """Whether a newer save of the same name may replace this one before it is written."""
        return self.history is None and not self.best and not self.export_model


class BackgroundWriter:
    r"""
    A writer thread that persists ``SaveRequest``\ s one at a time, in submission order.

    A queued request that only refreshes a name (no history, best or export) is dropped when a
    newer request for the same name arrives: the newer one rewrites the same file anyway.
    ``wait`` blocks until the queue is empty; ``close`` waits and stops the thread (and keeps
    everything for a retry if the wait timed out).
    """

    def __init__(self, write: Callable[[SaveRequest], None], name: str) -> None:
        self._write = write
        self._name = name
        self._queue: deque[SaveRequest] = deque()
        self._condition = threading.Condition()
        self._in_flight: SaveRequest | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, request: SaveRequest) -> None:
        with self._condition:
            if self._closed:
                raise RuntimeError("cannot save a checkpoint: the checkpoint writer is closed")
            # Any queued save of this name that only refreshes the file is superseded.
            self._queue = deque(
                queued for queued in self._queue if not (queued.name == request.name and queued.coalescable)
            )
            self._queue.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._condition.notify_all()

    @property
    def pending(self) -> int:
        """Requests queued or being written."""
        with self._condition:
            return len(self._queue) + (self._in_flight is not None)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                self._in_flight = self._queue.popleft()
            try:
                self._write(self._in_flight)
            finally:
                with self._condition:
                    self._in_flight = None
                    self._condition.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted request is written; ``False`` if ``timeout`` expired first."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._queue and self._in_flight is None, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Wait for the queue, then stop the thread; ``False`` (and nothing stopped) on timeout."""
        if not self.wait(timeout):
            return False
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return True


#: Writers that may hold unwritten requests; ``_drain_writers`` waits for them at interpreter exit.
_LIVE_WRITERS: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()
_drain_registered = False


def _drain_at_exit(writer: BackgroundWriter) -> None:
    """Write ``writer``'s pending requests at interpreter exit, before ``weakref.finalize`` callbacks run.

    Those callbacks run newest first, so the finalizers of host buffers staged after the manager
    was made (shared-memory files that a serializer process reads by name) would run before the
    manager's own: ``atexit`` functions registered after the first ``weakref.finalize`` run
    before all of them.
    """
    global _drain_registered
    _LIVE_WRITERS.add(writer)
    if not _drain_registered:
        atexit.register(_drain_writers)
        _drain_registered = True


def _drain_writers() -> None:
    for writer in list(_LIVE_WRITERS):
        writer.close(None)


class CheckpointManager:
    r"""
    Shared behaviour of checkpoint backends: cadence, payload, background writing, error handling.

    Args:
        directory: Folder of this run's checkpoints.
        config: The ``checkpoint`` section (a mapping or ``CheckpointConfig``).
        interval: Save every ``interval`` units of progress; ``None`` uses ``config.interval``;
            ``None`` or ``<= 0`` there means no periodic saves (forced and final ones still happen).
            Runners pass ``resolve_checkpoint_interval(...)``.
        unit: ``"epoch"`` (progress = completed epochs) or ``"step"`` (completed optimizer steps);
            it also names history files (``ckpt-e000003``, ``ckpt-s000000001000``).
        tag: Short label for thread names and temporary files (e.g. the run id).
    """

    #: Whether every rank must call ``save`` (distributed formats); file backends save on one rank.
    is_collective = False
    #: Whether ``_persist`` is done with a payload when it returns, so that asynchronous saves may
    #: copy tensors into the host buffers of earlier, written snapshots (``StagingPool``).
    recycles_snapshots = False

    def __init__(
        self,
        directory: str | Any,
        config: CheckpointConfig | Mapping[str, Any] | None = None,
        *,
        interval: int | None = None,
        unit: str = "epoch",
        tag: str = "",
    ) -> None:
        self.config = config if isinstance(config, CheckpointConfig) else CheckpointConfig(dict(config or {}))
        self.directory = str(directory)
        if unit not in UNITS:
            raise ValueError(f"Unknown checkpoint unit: {unit!r}. Valid options are: {', '.join(UNITS)}")
        self.unit = unit
        self.interval = self.config.interval if interval is None else interval
        self.tag = tag
        self.async_mode = self.config.resolved_async_mode()
        self.health = CheckpointHealth()
        self._deferred_error: BaseException | None = None
        self._writer: BackgroundWriter | None = None
        self._finalizer: weakref.finalize | None = None
        self._staging = StagingPool() if self.recycles_snapshots and self.async_mode != "disabled" else None
        if self.async_mode != "disabled":
            self._writer = BackgroundWriter(self._write_request, name=f"danling-ckpt-{tag[:8] or type(self).__name__}")
            # The writer keeps the manager alive until ``close``; at interpreter exit, drain it.
            self._finalizer = weakref.finalize(self, self._writer.close, None)
            _drain_at_exit(self._writer)

    # cadence

    def should_save(self, progress: int, *, last_step: bool = False, force: bool = False) -> bool:
        r"""
        Whether a save at ``progress`` is due: never with ``load_only``; always when forced or final;
        otherwise when ``progress`` is a positive multiple of ``interval``.
        """
        if self.config.load_only:
            return False
        if force or last_step:
            return True
        return self.history_name(progress) is not None

    def history_name(self, progress: int) -> str | None:
        """The history entry for a save at ``progress`` (``None`` off the cadence)."""
        if self.interval is None or self.interval <= 0 or progress <= 0 or progress % self.interval:
            return None
        return f"ckpt-{self.progress_tag(progress)}"

    def progress_tag(self, progress: int) -> str:
        """``progress`` as it appears in file names: ``e000003`` (epochs) or ``s000000001000`` (steps)."""
        return f"e{progress:06d}" if self.unit == "epoch" else f"s{progress:012d}"

    # saving

    def save(
        self,
        state: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        *,
        progress: int,
        name: str = "latest",
        best: bool = False,
        last_step: bool = False,
        force: bool = False,
        fresh: Collection[str] = (),
    ) -> bool:
        r"""
        Save ``state`` as checkpoint ``name`` if one is due; return whether a save was written or queued.

        Args:
            state: ``{component name: component or state}``, or a function returning it (called
                only when a save is due).  Components with ``state_dict()`` are asked for it.
            progress: Completed epochs (``unit="epoch"``) or optimizer steps (``unit="step"``).
            name: Logical name of the checkpoint file.
            best: This is the best checkpoint so far: update the ``best`` alias too.
            last_step: The run's final save: always written, and with
                ``checkpoint.last_save_model_only`` the model is also exported alone.
            force: Write even off the cadence (``load_only`` still wins).  A forced save (a seed
                checkpoint, a save on ``SIGTERM`` in the middle of an epoch) never creates a history
                entry: it need not sit on a cadence boundary.
            fresh: Entries of ``state`` that its owner builds anew for every save and that hold
                nothing changed in place later (plain data, immutable values): an asynchronous
                save does not copy them again.
        """
        if not name or any(separator in name for separator in ("/", "\\")) or name.startswith("."):
            raise ValueError(f"checkpoint name must be a plain file name without directories, got {name!r}")
        if not self.should_save(progress, last_step=last_step, force=force):
            return False
        payload = collect_state(state() if callable(state) else state)
        request = SaveRequest(
            name=name,
            payload=payload,
            progress=progress,
            history=None if force else self.history_name(progress),
            best=best,
            export_model=last_step and self.config.last_save_model_only and "model" in payload,
        )
        if self._writer is None:
            self._write_request(request)
            self._raise_deferred_error()
            return True
        self._raise_deferred_error()
        request.payload = snapshot(request.payload, self._staging, request.staged, fresh)
        self._encode(request)
        self._writer.submit(request)
        return True

    def _encode(self, request: SaveRequest) -> None:
        """Serialise an asynchronous request's snapshot on the saving thread, for a writer that sends bytes.

        Python work on the writer thread holds the GIL the training loop needs between tensor
        operations, and a thread waiting for the GIL waits up to ``sys.getswitchinterval()``: done
        here, the same work costs the loop only its own time.  Nothing to do by default.
        """

    def _write_request(self, request: SaveRequest) -> None:
        try:
            self._persist(request)
        except Exception as error:  # a failed save must not stop training unless asked to
            self.record_failure(request.name, error)
            if self.config.fail_on_error:
                self._deferred_error = error
        finally:
            if self._staging is not None and request.staged:
                self._staging.release(request.staged)
                request.staged, request.payload, request.encoded = [], {}, None

    def _persist(self, request: SaveRequest) -> None:
        """Write ``request`` (and its aliases) to storage.  Backends implement this."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _persist")

    def record_success(self, target: str, aliases: tuple[str, ...]) -> None:
        self.health.saved += 1
        self.health.last_successful_target = target
        self.health.last_successful_aliases = aliases

    def record_failure(self, target: str, error: BaseException) -> None:
        self.health.error_count += 1
        self.health.last_error = f"{type(error).__name__}: {error}"
        self.health.last_failed_target = target
        warnings.warn(f"checkpoint save failed: {error}", RuntimeWarning, stacklevel=2)

    def _raise_deferred_error(self) -> None:
        error, self._deferred_error = self._deferred_error, None
        if error is not None:
            raise error

    # finding and loading checkpoints: each storage format implements these

    @classmethod
    def recognizes(cls, path: str) -> bool:
        """Whether ``path`` (a file or directory) holds a checkpoint in this manager's format."""
        return False

    @classmethod
    def read_config(cls, path: str) -> Any:
        """The ``RunnerConfig`` a checkpoint at ``path`` was saved with, without a manager or a runner."""
        raise NotImplementedError(f"{cls.__name__} does not implement read_config")

    def resolve(self, source: Any = "latest") -> str:
        r"""
        The concrete checkpoint ``source`` refers to: a name in this manager's directory (``"latest"``,
        ``"best"``, a history name), a run or checkpoint directory, or a path.

        Raises:
            CheckpointNotFoundError: nothing is there (the message lists what was tried).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement resolve")

    def exists(self, source: Any = "latest") -> bool:
        """Whether ``source`` names a checkpoint that exists (a dangling alias counts: loading it must fail loudly)."""
        try:
            self.resolve(source)
        except CheckpointNotFoundError as error:
            return bool(getattr(error, "dangling", False))
        return True

    def load(
        self,
        source: Any = "latest",
        *,
        template: Callable[[], Mapping[str, Any]] | None = None,
        map_location: Any = "cpu",
    ) -> dict[str, Any]:
        r"""
        The checkpoint ``source`` refers to, as ``{component: state}``.

        ``template`` returns the runner's current state; formats that load in place (DCP) fill
        its tensors, so sharded tensors stay sharded.  Formats that read whole files ignore it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement load")

    # lifecycle

    def maybe_wait_for_staging(self, timeout: float | None = None) -> bool:
        """Return once it is safe to modify parameters in place; snapshots are taken in ``save``, so at once."""
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until queued saves are written; ``False`` on timeout.  Raises a deferred ``fail_on_error`` error."""
        drained = True if self._writer is None else self._writer.wait(timeout)
        self._raise_deferred_error()
        return drained

    def close(self, timeout: float | None = None) -> bool:
        """Finish queued saves and stop the writer; ``False`` on timeout, leaving the manager usable for a retry."""
        drained = True if self._writer is None else self._writer.close(timeout)
        if drained and self._finalizer is not None:
            self._finalizer.detach()
        if drained and self._staging is not None:
            self._staging.claim()  # no more saves: let the host buffers go
        self._raise_deferred_error()
        return drained
