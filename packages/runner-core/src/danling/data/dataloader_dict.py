"""``DataLoaderDict``: the runner's ``{split: loader}`` mapping, checkpointable as one object."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from chanfig import FlatDict


class DataLoaderDict(FlatDict):
    r"""
    A ``{split: dataloader}`` mapping with ``state_dict`` / ``load_state_dict``.

    ``state_dict()`` collects the state of every loader that has one (``StatefulDataLoader``
    from torchdata does; a plain ``DataLoader`` does not and is left out).
    ``load_state_dict`` restores the splits present in both the state and this mapping, and
    ignores the rest, so a checkpoint of a run with more or fewer splits still loads.

    Examples:
        >>> from torchdata.stateful_dataloader import StatefulDataLoader
        >>> loaders = DataLoaderDict(train=StatefulDataLoader(list(range(6)), batch_size=2))
        >>> iterator = iter(loaders.train)
        >>> next(iterator)
        tensor([0, 1])
        >>> state = loaders.state_dict()
        >>> list(state), loaders.state_dict(["val"])  # only the splits asked for (and present)
        (['train'], {})
        >>> resumed = DataLoaderDict(train=StatefulDataLoader(list(range(6)), batch_size=2))
        >>> resumed.load_state_dict(state)
        >>> next(iter(resumed.train))
        tensor([2, 3])
    """

    def state_dict(self, splits: Iterable[str] | None = None) -> dict[str, Any]:
        """Return ``{split: loader.state_dict()}`` for every loader (of ``splits``, if given) that can save its position."""
        states: dict[str, Any] = {}
        chosen = self.items() if splits is None else ((split, self[split]) for split in splits if split in self)
        for split, loader in chosen:
            state_dict = getattr(loader, "state_dict", None)
            if callable(state_dict):
                state = state_dict()
                if state is not None:
                    states[split] = state
        return states

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore each split found both here and in ``state_dict``; other entries are ignored."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"DataLoaderDict.load_state_dict expects a mapping of split -> state, got {type(state_dict).__name__}"
            )
        for split, state in state_dict.items():
            loader = self.get(split)
            load_state_dict = getattr(loader, "load_state_dict", None)
            if state is not None and callable(load_state_dict):
                load_state_dict(state)
