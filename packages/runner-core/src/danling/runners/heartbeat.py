"""Per-rank heartbeat files: a background thread rewrites a small JSON file a watchdog can poll.

The training loop only updates fields in memory (``mark_progress``); a daemon thread writes them
every ``interval_seconds``, atomically (temporary file, then ``os.replace``), so a reader never
sees a half-written file and the step path never touches the disk.  Two clocks tell a watchdog
what is wrong with a rank:

- ``updated_at_unix`` stops advancing when the whole process is stuck (paused with ``SIGSTOP``,
  swapped out, killed without a chance to write ``closed``);
- ``seconds_since_progress`` grows while the process lives but the loop makes no progress
  (a hung collective, a deadlocked data loader).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

from danling.utils.atomic import atomic_write

#: Statuses the runner reports; any string is accepted, these are the documented ones.
HEARTBEAT_STATUSES = ("starting", "training", "evaluating", "saving", "stopping", "closed")


def heartbeat_path(workspace_dir: str | os.PathLike, dir_name: str, rank: int) -> str:
    r"""
    Where rank ``rank`` writes its heartbeat: ``{workspace_dir}/{dir_name}/rank-{rank:05d}.json``.

    Examples:
        >>> heartbeat_path("runs/exp", "heartbeats", 3)
        'runs/exp/heartbeats/rank-00003.json'
    """
    return os.path.join(os.fsdecode(workspace_dir), dir_name, f"rank-{rank:05d}.json")


class HeartbeatWriter:
    r"""
    Rewrite ``path`` with the current status and progress every ``interval_seconds`` on a daemon thread.

    Args:
        path: The JSON file to write (its folder is created).
        interval_seconds: Seconds between writes; must be positive.
        fields: Constant payload entries (rank, world size, run id, ...).

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "heartbeats", "rank-00000.json")
        >>> writer = HeartbeatWriter(path, 60.0, fields={"rank": 0})
        >>> writer.start()
        >>> writer.mark_progress(global_step=5)
        >>> writer.close()
        >>> payload = json.load(open(path))
        >>> payload["status"], payload["event"], payload["global_step"], payload["rank"]
        ('closed', 'shutdown', 5, 0)
    """

    def __init__(self, path: str | os.PathLike, interval_seconds: float, *, fields: Mapping[str, Any] | None = None):
        if (
            isinstance(interval_seconds, bool)
            or not isinstance(interval_seconds, (int, float))
            or interval_seconds <= 0
        ):
            raise ValueError(f"heartbeat.interval_seconds must be a positive number, got {interval_seconds!r}")
        self.path = os.fsdecode(path)
        self.interval_seconds = float(interval_seconds)
        self._static = {"hostname": socket.gethostname(), "pid": os.getpid(), **dict(fields or {})}
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}
        self._status, self._event = "starting", "startup"
        self._last_progress = time.time()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._warned = False
        self.writes = 0

    @property
    def status(self) -> str:
        """The status the next write reports."""
        return self._status

    def start(self, thread_name: str = "danling-heartbeat") -> None:
        """Write the ``starting`` heartbeat now and start the background thread (a second call does nothing)."""
        if self._thread is not None:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.write()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    def mark_progress(self, status: str | None = None, **fields: Any) -> None:
        r"""
        Record progress in memory: the time now plus any ``fields`` (``global_step=...``, ``epoch=...``).

        No I/O: the background thread writes the values at its next tick.
        """
        with self._lock:
            self._progress.update(fields)
            self._last_progress = time.time()
            if status is not None:
                self._status = status

    def set_status(self, status: str, event: str | None = None) -> None:
        """Change the reported status (``"saving"``, ``"stopping"``, ...) and wake the thread to write it promptly."""
        with self._lock:
            self._status, self._event = status, event
        self._wake.set()

    def payload(self) -> dict[str, Any]:
        """The JSON object the next write produces."""
        now = time.time()
        with self._lock:
            payload = {**self._static, **self._progress}
            payload.update(
                status=self._status,
                event=self._event,
                updated_at_unix=now,
                last_progress_at_unix=self._last_progress,
                seconds_since_progress=max(0.0, now - self._last_progress),
            )
        return payload

    def write(self) -> bool:
        """Write the heartbeat file now (atomically); an ``OSError`` is warned about once and returns ``False``."""
        text = json.dumps(self.payload(), indent=2, sort_keys=True, default=str)
        try:
            with atomic_write(self.path, fsync=False) as file:
                file.write(text.encode())
        except OSError as error:
            if not self._warned:
                self._warned = True
                warnings.warn(f"heartbeat write failed: {error}", RuntimeWarning, stacklevel=2)
            return False
        self.writes += 1
        return True

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread and write the final ``closed`` heartbeat (a second call does nothing)."""
        if self._stopping:
            return
        self._stopping = True
        if self._thread is None:  # never started: nothing to report
            return
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            self._status, self._event = "closed", "shutdown"
        self.write()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_seconds)
            self._wake.clear()
            if self._stopping:
                return
            self.write()
