"""``StepProxyLoader``: a loader that yields ``None`` as many times as another loader has batches.

A rank that runs a middle pipeline stage receives its inputs from the previous stage and sends
its outputs to the next; it reads no data.  It must still take the same number of steps as the
ranks that do read data, and a resumed run must start where they start.  The proxy keeps the
loop's shape (``len``, epochs, checkpointed position) without ever loading a sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["StepProxyLoader"]


class StepProxyLoader:
    r"""
    Yield ``None`` once per batch of ``loader``, without iterating ``loader``.

    The position within a pass is checkpointed (``state_dict``), so a pass resumed from a
    checkpoint yields only the steps that were left, as a ``StatefulDataLoader`` does.  The
    wrapped loader's ``sampler`` and ``batch_sampler`` stay reachable, so setting the sampler's
    epoch works on the proxy as on the loader.

    Args:
        loader: A sized loader (anything with ``len``).

    Examples:
        >>> proxy = StepProxyLoader(range(0, 30, 10))
        >>> len(proxy), list(proxy)
        (3, [None, None, None])
        >>> steps = iter(proxy); _ = next(steps)
        >>> state = proxy.state_dict(); state
        {'position': 1}
        >>> resumed = StepProxyLoader(range(0, 30, 10)); resumed.load_state_dict(state)
        >>> list(resumed), list(resumed)  # the rest of the pass, then whole passes
        ([None, None], [None, None, None])
        >>> StepProxyLoader(iter([]))
        Traceback (most recent call last):
        TypeError: StepProxyLoader needs a sized loader (one with len()), got list_iterator
    """

    def __init__(self, loader: Any) -> None:
        try:
            len(loader)
        except TypeError:
            raise TypeError(
                f"StepProxyLoader needs a sized loader (one with len()), got {type(loader).__name__}"
            ) from None
        self.loader = loader
        self.position = 0

    @property
    def sampler(self) -> Any:
        return getattr(self.loader, "sampler", None)

    @property
    def batch_sampler(self) -> Any:
        return getattr(self.loader, "batch_sampler", None)

    @property
    def batch_size(self) -> Any:
        return getattr(self.loader, "batch_size", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[None]:
        start, length = self.position, len(self.loader)
        for index in range(start, length):
            self.position = index + 1
            yield None
        self.position = 0  # the pass is over: the next one starts from the beginning

    def state_dict(self) -> dict[str, int]:
        """The number of steps taken in the current pass."""
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a pass ``state_dict`` recorded."""
        position = state.get("position") if isinstance(state, Mapping) else None
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= len(self.loader):
            raise ValueError(
                f"invalid StepProxyLoader state: expected {{'position': 0..{len(self.loader)}}}, got {state!r}"
            )
        self.position = position

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loader!r}, position={self.position})"
