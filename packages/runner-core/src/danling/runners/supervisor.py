"""Process-level duties of a run: termination signals, heartbeat files and paced garbage collection.

``RunnerSupervisor`` takes plain values (config sections, the run directory, rank, world size),
not a runner, so each duty works and is tested on its own.  The loop drives it at three points:

- after each applied optimizer step: ``mark_heartbeat_progress(...)`` (memory only),
  ``maybe_collect_garbage(global_step)``, then ``maybe_handle_termination_signal(save)``, which
  returns ``True`` when every rank agreed to stop after saving;
- around saves: ``set_status("saving")`` / ``set_status("training")`` so a watchdog can tell a long
  save from a hang;
- at the end: ``close()``.

A termination signal only sets a flag.  The step in flight finishes; at a step boundary the
ranks agree (``StopAgreement``: a small ``all_reduce`` over gloo a few times a second), save,
and leave the loop together, all after the same step.
"""

from __future__ import annotations

import gc as pygc
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import Any

from .config_sections import GcConfig, HeartbeatConfig
from .heartbeat import HeartbeatWriter, heartbeat_path
from .stop_agreement import StopAgreement

logger = logging.getLogger(__name__)

#: Signals whose second delivery ends the process at once (an impatient Ctrl-C).  A repeated
#: ``SIGTERM`` does not: Slurm signals every process of a step and ``torchrun`` forwards the signal
#: again, so a rank may well see it twice while its checkpoint is being written.
ESCALATING_SIGNALS = frozenset({signal.SIGINT})


def _signal_number(value: str | int) -> signal.Signals:
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        number = getattr(signal, name, None)
        if not isinstance(number, signal.Signals):
            raise ValueError(f"unknown signal {value!r}: expected a name such as 'SIGTERM' or 'SIGINT'")
        return number
    try:
        return signal.Signals(value)
    except ValueError:
        raise ValueError(f"unknown signal {value!r}: expected a signal number or name such as 'SIGTERM'") from None


def _section(value: Any, cls: type, key: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls(**dict(value))
    raise TypeError(f"{key} must be a {cls.__name__} or a mapping, got {type(value).__name__}")


class RunnerSupervisor:
    r"""
    Termination signals, per-rank heartbeats and paced garbage collection for one process of a run.

    Args:
        workspace_dir: The run directory; heartbeat files go to ``{workspace_dir}/{heartbeat.dir_name}``.
        heartbeat: ``config.heartbeat`` (a ``HeartbeatConfig`` or mapping); ``None``: disabled.
        gc: ``config.gc`` (a ``GcConfig`` or mapping); ``None``: Python collects as usual.
        rank: This process's rank, reported in the heartbeat.
        world_size: The number of processes of the run, reported in the heartbeat.
        local_rank: This process's rank on its node, reported in the heartbeat.
        signals: Signals that request a graceful stop (names or numbers); add ``"SIGINT"`` to
            stop gracefully on Ctrl-C too.
        process_group: Group the ranks agree over; ``None`` uses the default group when it can
            reduce CPU tensors (gloo), otherwise a gloo group made by ``init_signal_handlers``.
        fields: Constant heartbeat entries (``id``, ``name``, ...).
        overlap_agreement: Read each stop agreement one step later, so its collective runs
            while the next step computes (see ``StopAgreement``).
        agreement_interval: Agree every this many optimizer steps; ``None`` adapts the interval
            to about one agreement per 0.2 s, so the collective never shows in the step time.

    Examples:
        >>> import gc, tempfile
        >>> supervisor = RunnerSupervisor(tempfile.mkdtemp(), gc={"interval": 2})
        >>> supervisor.init_garbage_collection(), gc.isenabled()
        (True, False)
        >>> [supervisor.maybe_collect_garbage(step) for step in range(1, 5)]
        [False, True, False, True]
        >>> supervisor.should_stop()
        False
        >>> supervisor.close(); gc.isenabled()
        True
    """

    def __init__(
        self,
        workspace_dir: str | os.PathLike,
        *,
        heartbeat: HeartbeatConfig | Mapping[str, Any] | None = None,
        gc: GcConfig | Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int | None = None,
        signals: Iterable[str | int] = ("SIGTERM",),
        process_group: Any = None,
        fields: Mapping[str, Any] | None = None,
        overlap_agreement: bool = True,
        agreement_interval: int | None = None,
    ) -> None:
        self.workspace_dir = os.fsdecode(workspace_dir)
        self.heartbeat = _section(heartbeat, HeartbeatConfig, "heartbeat")
        self.gc = _section(gc, GcConfig, "gc")
        self.rank, self.world_size = rank, world_size
        self.local_rank = rank if local_rank is None else local_rank
        self.signals = tuple(dict.fromkeys(_signal_number(value) for value in signals))
        self.fields = dict(fields or {})
        self.agreement = StopAgreement(process_group, interval=agreement_interval, overlap=overlap_agreement)
        # signals
        self.received_signal: signal.Signals | None = None
        self.signal_count = 0
        self._signal_counts: dict[signal.Signals, int] = {}
        self._previous_handlers: dict[signal.Signals, Any] = {}
        self._handlers_restored = False
        # heartbeat
        self._heartbeat: HeartbeatWriter | None = None
        # garbage collection
        self._gc_active = False
        self._gc_disabled_here = False
        self._collected_at: dict[str, int] = {}
        self.closed = False

    # ------------------------------------------------------------------ signals

    def init_signal_handlers(self) -> bool:
        r"""
        Install ``request_shutdown`` for ``signals`` and pick the group the ranks agree over.

        Handlers go in only from the main thread (Python's rule); a second call does nothing.
        When distributed over a backend that cannot reduce CPU tensors (NCCL alone), this makes a
        gloo group, which is a collective: call it on every rank at the same point of setup.
        Returns whether handlers were installed by this call.
        """
        self.agreement.init_group()
        if self._previous_handlers or threading.current_thread() is not threading.main_thread():
            return False
        for signum in self.signals:
            self._previous_handlers[signum] = signal.signal(signum, self.request_shutdown)
        self._handlers_restored = False
        return True

    def request_shutdown(self, signum: int, frame: FrameType | None = None) -> None:
        r"""
        The signal handler: record the signal and return, so the step in flight finishes.

        It sets two attributes and touches no lock, file or stream.  A second ``SIGINT`` raises
        ``SystemExit(128 + signum)`` at once; a handler installed before ours is called too.
        """
        signum = signal.Signals(signum)
        self.signal_count += 1
        self._signal_counts[signum] = self._signal_counts.get(signum, 0) + 1
        if self.received_signal is None:
            self.received_signal = signum
        if signum in ESCALATING_SIGNALS and self._signal_counts[signum] > 1:
            raise SystemExit(128 + signum)
        previous = _resolve_handler(self._previous_handlers.get(signum), signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    def should_stop(self) -> bool:
        r"""
        Whether to stop now: some rank received a termination signal.  Every rank gets the same answer.

        Call it on every rank at the same points (after each applied optimizer step): the ranks
        agree through ``self.agreement`` (a ``StopAgreement``), so they stop together a few steps
        after the signal at most.  Without a process group it reads the local flag.
        """
        return self.agreement(self.received_signal is not None)

    @property
    def stop_agreed(self) -> bool:
        """Whether the ranks agreed to stop."""
        return self.agreement.agreed

    def maybe_handle_termination_signal(self, save: Callable[[], Any] | None = None) -> bool:
        r"""
        After an optimizer step: when the ranks agree to stop, run ``save`` and return ``True``.

        The heartbeat reads ``saving`` while ``save`` runs and ``stopping`` afterwards.  The caller
        leaves its loop, closes the runner and exits with status 0.
        """
        if not self.should_stop():
            return False
        if self.received_signal is not None:
            reason, what = self.received_signal.name, f"received {self.received_signal.name}"
        else:
            reason, what = "peer-signal", "another rank received a termination signal"
        logger.warning("runner (rank %d): %s; saving checkpoint and exiting", self.rank, what)
        self.set_status("saving", event=reason)
        if save is not None:
            save()
        self.set_status("stopping", event=reason)
        return True

    def restore_signal_handlers(self) -> None:
        """Put back the handlers found by ``init_signal_handlers`` (main thread only; idempotent)."""
        if self._handlers_restored or threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous_handlers.items():
            if signal.getsignal(signum) == self.request_shutdown:
                signal.signal(signum, _resolve_handler(previous, signum))
            # else another handler was installed on top of ours; it chains to ours, which from now
            # on forwards to the previous one (see ``_resolve_handler``)
        self._handlers_restored = True

    # ---------------------------------------------------------------- heartbeat

    def init_heartbeat(self) -> str | None:
        r"""
        Start the heartbeat thread when ``heartbeat.enabled``; returns the file's path (or ``None``).

        The first write (status ``starting``) happens before this returns.
        """
        if not self.heartbeat.enabled:
            return None
        if self._heartbeat is None:
            path = heartbeat_path(self.workspace_dir, self.heartbeat.dir_name, self.rank)
            fields = {**self.fields, "rank": self.rank, "local_rank": self.local_rank, "world_size": self.world_size}
            self._heartbeat = HeartbeatWriter(path, self.heartbeat.interval_seconds, fields=fields)
            self._heartbeat.start(thread_name=f"danling-heartbeat-rank{self.rank}")
        return self._heartbeat.path

    def mark_heartbeat_progress(self, status: str | None = None, **fields: Any) -> None:
        """Record progress (``global_step=``, ``epoch=``, ...) in memory; the thread writes it.  No I/O."""
        if self._heartbeat is not None:
            self._heartbeat.mark_progress(status, **fields)

    def set_status(self, status: str, event: str | None = None) -> None:
        """Report ``status`` (``training``, ``saving``, ...); written at once by the heartbeat thread."""
        if self._heartbeat is not None:
            self._heartbeat.set_status(status, event)

    @property
    def heartbeat_file(self) -> str | None:
        """This rank's heartbeat file, once ``init_heartbeat`` started it."""
        return None if self._heartbeat is None else self._heartbeat.path

    # ------------------------------------------------------- garbage collection

    def init_garbage_collection(self) -> bool:
        r"""
        Start paced collection when ``gc.interval`` is set; returns whether pacing is on.

        With ``gc.disable_automatic``, Python's automatic collector is switched off until
        ``close()``, so collections happen only between steps, at the same steps on every rank.
        """
        if self.gc.interval is None or self._gc_active:
            return self._gc_active
        if self.gc.disable_automatic and pygc.isenabled():
            pygc.disable()
            self._gc_disabled_here = True
        pygc.collect(self.gc.generation)
        self._gc_active = True
        return True

    def maybe_collect_garbage(self, step: int, *, scope: str = "train") -> bool:
        r"""
        Collect ``gc.generation`` when ``step`` is a positive multiple of ``gc.interval``.

        ``step`` is the global step after an optimizer step (``scope="train"``) or the batch
        count of an evaluation (``scope="evaluate:val"``); each (scope, step) collects once.
        """
        if not self._gc_active or step <= 0 or step % self.gc.interval:
            return False
        if self._collected_at.get(scope) == step:
            return False
        self._collected_at[scope] = step
        pygc.collect(self.gc.generation)
        return True

    def restore_garbage_collection(self) -> None:
        """Turn automatic collection back on if ``init_garbage_collection`` turned it off."""
        if self._gc_disabled_here:
            pygc.enable()
            self._gc_disabled_here = False
        self._gc_active = False

    # -------------------------------------------------------------------- close

    def close(self) -> None:
        """Stop the heartbeat (final status ``closed``), restore signal handlers and garbage collection."""
        if self.closed:
            return
        self.closed = True
        self.agreement.close()
        if self._heartbeat is not None:
            self._heartbeat.close()
        self.restore_signal_handlers()
        self.restore_garbage_collection()

    def __enter__(self) -> RunnerSupervisor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _resolve_handler(handler: Any, signum: int) -> Any:
    """Skip over handlers of supervisors that were closed while another handler sat on top of theirs."""
    while (owner := getattr(handler, "__self__", None)) is not None and isinstance(owner, RunnerSupervisor):
        if not owner._handlers_restored:
            break
        handler = owner._previous_handlers.get(signal.Signals(signum), signal.SIG_DFL)
    return handler
