"""``RunnerServices``: what runs beside the training step: the supervisor, the EMA and the profiler.

``TorchRunner`` mixes this in and calls, in order:

- ``init_services()`` at the start of ``__post_init__``: the supervisor (``SIGTERM`` handling,
  heartbeat files, paced garbage collection; see ``danling.runners.supervisor``);
- ``init_ema()`` after the model is materialised: with ``config.ema`` set, an exponential moving
  average of the weights (``danling.runners.ema``);
- ``after_optimizer_step()`` after every applied optimizer step: EMA update, profiler step,
  garbage collection, heartbeat progress, TorchFT loader checkpoints.  None of them reads a tensor back to the host;
- ``stop_requested()`` from the loop after every optimizer step, at the same point on every rank:
  when any rank received a termination signal, the run writes a forced checkpoint, closes and
  exits with status 0 (``TrainingPreempted``, a ``SystemExit``);
- ``close_services()`` from ``close``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .ema import build_ema, update_ema
from .profiling import build_profiler, profiler_trace_dir
from .supervisor import RunnerSupervisor

__all__ = ["RunnerServices", "TrainingPreempted"]


class TrainingPreempted(SystemExit):
    """Raised after a termination signal, once the forced checkpoint is written: the process exits with 0."""

    def __init__(self, reason: str) -> None:
        super().__init__(0)
        self.reason = reason


class RunnerServices:
    r"""
    Supervisor, EMA and profiler of a runner (a mixin: it reads the runner's config, workspace,
    state and model).
    """

    supervisor: RunnerSupervisor | None = None
    profiler: Any = None
    #: Whether ``self.ema`` is the runner's own average (``config.ema``), updated after every step.
    owns_ema: bool = False

    def init_services(self) -> None:
        """Start the supervisor: signal handlers, this rank's heartbeat file and garbage-collection pacing."""
        signals = ("SIGTERM", "SIGINT") if self.config.get("graceful_sigint") else ("SIGTERM",)
        self.supervisor = RunnerSupervisor(
            self.workspace.dir,
            heartbeat=self.config.heartbeat,
            gc=self.config.gc,
            rank=self.rank,
            world_size=self.world_size,
            local_rank=self.local_rank,
            signals=signals,
            fields={"id": self.id, "name": self.name},
        )
        self.supervisor.init_signal_handlers()
        self.supervisor.init_heartbeat()
        self.supervisor.init_garbage_collection()

    def init_ema(self) -> None:
        """Build the average of ``config.ema`` from the (unwrapped) model, unless ``self.ema`` is already set."""
        settings = self.config.get("ema")
        if settings is None or self.ema is not None:
            return
        self.ema = build_ema(self.unwrap(self.model), settings)
        self.owns_ema = True

    @property
    def evaluation_model(self) -> Any:
        """The model evaluation and inference run: the EMA when there is one (and ``ema.evaluate``), else the model."""
        if self.ema is None:
            return self.model
        if self.owns_ema and not self.config.ema.evaluate:
            return self.model
        return self.ema

    def init_profiler(self) -> None:
        """A ``torch.profiler`` for ``config.profiling`` (``None`` unless enabled), aligned to the restored step."""
        directory = profiler_trace_dir(self.config.profiling, self.workspace.dir, self.timestamp, self.rank)
        self.profiler = build_profiler(
            self.config.profiling, directory, start_step=self.train_state.global_step, device=self.device
        )

    def profiling(self) -> contextlib.AbstractContextManager:
        """The profiler as a context around training (a no-op context without one)."""
        return self.profiler if self.profiler is not None else contextlib.nullcontext()

    def after_optimizer_step(self) -> None:
        """Everything that follows an applied optimizer step; ``global_step`` already counts it."""
        step = self.train_state.global_step
        if self.owns_ema:
            update_ema(self.ema, self.unwrap(self.model), step)
        if self.profiler is not None:
            self.profiler.step()
        supervisor = self.supervisor
        if supervisor is not None:
            supervisor.maybe_collect_garbage(step)
            supervisor.mark_heartbeat_progress(global_step=step, epoch=self.train_state.epoch)
        if self.ft is not None:
            self.ft.after_step(step)  # this replica's loader positions, on the checkpoint cadence

    def stop_requested(self) -> bool:
        """Whether any rank received a termination signal (one tiny collective when distributed)."""
        return self.supervisor is not None and self.supervisor.should_stop()

    def shut_down_on_signal(self) -> None:
        r"""
        Write a forced checkpoint of the step just finished, close the runner, and raise ``TrainingPreempted``.

        Every rank calls it (the loop does, when ``stop_requested()``): the save is collective for
        sharded formats, and the file format writes from the main process.
        """
        self.finish_step_log()  # the progress line of the step just finished, before the shutdown's own
        supervisor = self.supervisor

        def save() -> None:
            self.prepare_for_shutdown_checkpoint()
            self.save_checkpoint(force=True, save_best=False)

        supervisor.maybe_handle_termination_signal(save)
        reason = supervisor.received_signal.name if supervisor.received_signal is not None else "peer-signal"
        print(f"runner: stopped by {reason} at global_step={self.train_state.global_step}; checkpoint written")
        self.close()
        raise TrainingPreempted(reason)

    def close_services(self) -> None:
        if self.profiler is not None:
            with contextlib.suppress(Exception):
                self.profiler.stop()
            self.profiler = None
        if self.supervisor is not None:
            self.supervisor.close()
        if self.ft is not None:
            self.ft.close()
