"""Let every rank learn at the same step whether any rank was asked to stop.

A termination signal reaches one process (a preempted node) or all of them at slightly
different moments.  If each rank stopped on its own flag, one would leave the training loop
while the others wait for it in a collective.  ``StopAgreement`` turns the local flags into one
answer: at agreement points (every ``interval`` calls) the ranks ``all_reduce`` (MAX) a small
CPU tensor over gloo, and all of them read the result at the same call.

The collective costs a few tens of microseconds on an idle machine, more under load, which is
visible next to millisecond steps.  So by default the interval adapts: each agreement also
carries every rank's proposal for the next interval (about ``target_seconds`` worth of steps,
from its measured step time) and the smallest one wins, so ranks stay in step without talking
more than a few times a second.  With ``overlap`` the reduction runs while the next step
computes and is read one call later.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import distributed as dist


class StopAgreement:
    r"""
    Agree across ranks on "stop now"; call it on every rank at the same points (after each optimizer step).

    Args:
        process_group: Group to agree over; ``None``: the default group when it can reduce CPU
            tensors (gloo), otherwise a gloo group made on first use (a collective: every rank
            makes its first call at the same point).
        interval: Agree every ``interval`` calls; ``None`` adapts it to about ``target_seconds``.
        overlap: Read each reduction at the next call instead of waiting for it.
        target_seconds: Wall time between agreements the adaptive interval aims for.
        max_interval: Upper bound of the adaptive interval.

    Without a process group (or with one rank) a call just returns the local flag.

    Examples:
        >>> agreement = StopAgreement()  # no process group here
        >>> agreement(False), agreement(True), agreement(False)
        (False, True, True)
    """

    def __init__(
        self,
        process_group: Any = None,
        *,
        interval: int | None = None,
        overlap: bool = True,
        target_seconds: float = 0.2,
        max_interval: int = 1000,
    ) -> None:
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 1):
            raise ValueError(f"agreement interval must be an integer >= 1 or None (adaptive), got {interval!r}")
        if not target_seconds > 0:
            raise ValueError(f"agreement target_seconds must be positive, got {target_seconds!r}")
        self.interval, self.overlap = interval, overlap
        self.target_seconds, self.max_interval = target_seconds, max_interval
        self.agreed = False
        self.agreements = 0  # collectives started, for the curious and for tests
        self._group, self._group_ready = process_group, False
        self._buffer = torch.zeros(2, dtype=torch.int64)  # [stop flag, -proposed next interval]
        self._pending: Any = None
        self._calls = 0
        self._next_call = 1
        self._issued_call = 0
        self._issued_time: float | None = None

    def __call__(self, local: bool) -> bool:
        """Whether any rank passed ``local=True`` by the last agreement; the same answer on every rank."""
        if self.agreed:
            return True
        group = self.init_group()
        if group is False:
            self.agreed = bool(local)
            return self.agreed
        self._calls += 1
        if self._pending is not None:  # the reduction the previous call started
            self._pending.wait()
            self._pending = None
            if self._read():
                return True
        if self._calls < self._next_call:
            return False
        self._buffer[0], self._buffer[1] = int(bool(local)), -self._propose()
        self._issued_call = self._calls
        self.agreements += 1
        if self.overlap:
            self._pending = dist.all_reduce(self._buffer, op=dist.ReduceOp.MAX, group=group, async_op=True)
            return False
        dist.all_reduce(self._buffer, op=dist.ReduceOp.MAX, group=group)
        return self._read()

    def close(self) -> None:
        """Finish a reduction still in flight (every rank started it) before the process group goes away."""
        if self._pending is not None:
            self._pending.wait()
            self._pending = None

    def _read(self) -> bool:
        stop, negative_interval = self._buffer.tolist()
        self._next_call = self._issued_call + max(1, -negative_interval)
        self.agreed = bool(stop)
        return self.agreed

    def _propose(self) -> int:
        """This rank's choice of calls until the next agreement; MAX over negated proposals picks the smallest."""
        if self.interval is not None:
            return self.interval
        now = time.monotonic()
        proposal = 1
        if self._issued_time is not None:
            seconds_per_call = (now - self._issued_time) / max(1, self._calls - self._issued_call)
            if seconds_per_call > 0:
                proposal = int(self.target_seconds / seconds_per_call)
        self._issued_time = now
        return min(max(proposal, 1), self.max_interval)

    def init_group(self) -> Any:
        r"""
        The group to agree over: ``False`` when not distributed, else a group (``None``: the default one).

        Makes the gloo group when the default backend cannot reduce CPU tensors; a collective.
        """
        if self._group_ready and dist.is_initialized():  # every optimizer step asks: the short way
            return self._group
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return False
        if not self._group_ready:
            backend = str(dist.get_backend()).lower()
            if self._group is None and "gloo" not in backend and backend != "mpi":  # NCCL alone: no CPU tensors
                self._group = dist.new_group(backend="gloo")
            self._group_ready = True
        return self._group
