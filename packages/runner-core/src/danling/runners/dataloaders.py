"""Build the runner's ``StatefulDataLoader``\\ s from its datasets and ``config.dataloader``.

``StatefulDataLoader`` (torchdata) is a drop-in ``DataLoader`` whose ``state_dict()`` records
the position in the current pass, the sampler's random state and the workers' state, so a
resumed run continues with the very next batch.  Each loader gets its own sampler and random
generator, so building an iterator never draws from the global torch generator (which would
shift dropout and other random draws after a resume).

Training splits shuffle and drop the last partial batch by default, other splits do neither;
``config.dataloader`` overrides any keyword, and ``config.dataloader.<split>`` overrides it for
one split.  When the run is distributed, a ``DistributedSampler`` gives each rank its shard.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, SequentialSampler
from torch.utils.data.dataloader import default_collate
from torch.utils.data.distributed import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

from .distributed import broadcast_object

__all__ = [
    "RandomBatchSampler",
    "build_dataloader",
    "build_sampler",
    "loader_kwargs",
    "loader_length",
    "set_sampler_epoch",
]


def _draw_seed() -> int:
    """A seed from the global torch generator (reproducible once the run is seeded)."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def loader_kwargs(config: Mapping[str, Any] | None, split: str, *, is_train: bool, splits: set[str]) -> dict[str, Any]:
    r"""
    Keyword arguments of ``split``'s loader: runner defaults, then ``config``, then ``config[split]``.

    Keys whose value is ``None`` are left out, so the loader's own default applies, except
    ``batch_size=None``, which turns batching off (each dataset item is a batch).  Other splits'
    override sections (``config[other_split]``) are ignored.

    Examples:
        >>> loader_kwargs({"batch_size": 8, "val": {"batch_size": 32}}, "val", is_train=False, splits={"train", "val"})
        {'shuffle': False, 'drop_last': False, 'batch_size': 32}
        >>> loader_kwargs({"batch_size": 8, "shuffle": None}, "train", is_train=True, splits={"train"})
        {'shuffle': True, 'drop_last': True, 'batch_size': 8}
    """
    kwargs: dict[str, Any] = {"shuffle": is_train, "drop_last": is_train}
    config = config or {}
    override = config.get(split) if split in config else None
    if override is not None and not isinstance(override, Mapping):
        raise ValueError(f"dataloader.{split} must be a mapping of loader arguments, got {override!r}")
    for source in (config, override or {}):
        for key, value in source.items():
            if key not in splits and (value is not None or key == "batch_size"):
                kwargs[key] = value
    if "batch_size" in kwargs and kwargs["batch_size"] is None:
        kwargs["drop_last"] = False  # no batching: nothing to drop
    return kwargs


def build_sampler(
    dataset: Dataset, *, shuffle: bool, world_size: int = 1, rank: int = 0, seed: int | None = None
) -> Sampler | None:
    r"""
    The sampler of a map-style dataset: sharded across ranks when ``world_size > 1``, shuffled or in order.

    Returns ``None`` for an ``IterableDataset`` (it orders itself).  The shuffling sampler is
    torchdata's ``RandomSampler``, whose generator state is part of the loader's ``state_dict``.

    Examples:
        >>> type(build_sampler(list(range(4)), shuffle=True)).__name__
        'RandomSampler'
        >>> list(build_sampler(list(range(4)), shuffle=False))
        [0, 1, 2, 3]
    """
    if isinstance(dataset, IterableDataset):
        return None
    if seed is None:
        # every rank must shuffle with the same seed, or the shards overlap: rank 0 draws it for all
        seed = broadcast_object(_draw_seed()) if world_size > 1 else _draw_seed()
    if world_size > 1:
        return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    if shuffle:
        return RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return SequentialSampler(dataset)


class RandomBatchSampler(Sampler[list[int]]):
    r"""
    Shuffled batches of indices, resumable mid-pass, each a slice of one permutation per pass.

    Each pass draws a permutation from ``generator`` (never from the global generator), turns it
    into a Python list once, and hands it out ``batch_size`` indices at a time (a list slice: no
    tensor operation per batch).  ``state_dict`` records the generator state at the
    start of the pass and how many batches were handed out; ``load_state_dict`` redraws that
    permutation and continues after them, so the rest of the pass and every later pass match an
    uninterrupted run.  torchdata's per-index samplers do the same one Python call per index;
    this one makes a training step measurably cheaper for small models.  The position counts
    batches handed to the loader, which equals batches delivered when data loads in-process
    (``num_workers=0``), the case the runner uses it for.

    Examples:
        >>> sampler = RandomBatchSampler(10, 4, drop_last=False, generator=torch.Generator().manual_seed(0))
        >>> batches = iter(sampler); first = next(batches)
        >>> state = sampler.state_dict()
        >>> rest = list(batches)
        >>> resumed = RandomBatchSampler(10, 4, drop_last=False, generator=torch.Generator())
        >>> resumed.load_state_dict(state)
        >>> list(resumed) == rest, sorted(first + sum(rest, [])) == list(range(10)), len(sampler)
        (True, True, 3)
    """

    def __init__(self, size: int, batch_size: int, *, drop_last: bool, generator: torch.Generator) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.size, self.batch_size, self.drop_last, self.generator = size, batch_size, drop_last, generator
        self._start: torch.Tensor | None = None  # generator state when the current pass began
        self._order: list[int] | None = None  # permutation of the current pass
        self._yielded = 0  # batches of it handed out
        self._resume = False  # the next ``iter()`` continues a loaded pass instead of starting one

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        # Decided when ``iter()`` is called, not at the first batch: a loader may create an
        # iterator it never uses (torchdata does, when resuming a finished pass).
        if not self._resume:
            self._start = self.generator.get_state()
            self._order, self._yielded = torch.randperm(self.size, generator=self.generator).tolist(), 0
        self._resume = False
        return self._batches(self._order, self._yielded)

    def _batches(self, order: list[int], first: int) -> Iterator[list[int]]:
        size = self.batch_size
        for index in range(first, len(self)):
            self._yielded = index + 1
            yield order[index * size : (index + 1) * size]

    def state_dict(self) -> dict[str, Any]:
        if self._start is None:
            return {"generator": self.generator.get_state(), "yielded": 0}
        return {"generator": self._start, "yielded": self._yielded}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        self._start, self._order, self._yielded, self._resume = None, None, 0, False
        if state_dict["yielded"]:  # a pass was under way (or just done): redraw it and continue after its batches
            self._start = self.generator.get_state()
            self._order = torch.randperm(self.size, generator=self.generator).tolist()
            self._yielded, self._resume = int(state_dict["yielded"]), True


def build_dataloader(
    dataset: Dataset,
    kwargs: Mapping[str, Any],
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    world_size: int = 1,
    rank: int = 0,
    sampler: Sampler | None = None,
) -> StatefulDataLoader:
    r"""
    A ``StatefulDataLoader`` over ``dataset`` with its own sampler and generator.

    ``kwargs`` are ``StatefulDataLoader`` arguments; ``shuffle`` goes to the sampler.  A given
    ``sampler`` is used as it is (``shuffle`` is then its business); otherwise one is chosen here.

    Examples:
        >>> loader = build_dataloader(list(range(6)), {"batch_size": 2, "shuffle": False})
        >>> iterator = iter(loader); next(iterator)
        tensor([0, 1])
        >>> resumed = build_dataloader(list(range(6)), {"batch_size": 2, "shuffle": False})
        >>> resumed.load_state_dict(loader.state_dict())
        >>> next(iter(resumed))
        tensor([2, 3])
    """
    kwargs = dict(kwargs)
    if kwargs.get("batch_size", 1) is None and collate_fn is default_collate:
        collate_fn = None  # no batching: items pass through as they are (``default_convert``)
    shuffle = bool(kwargs.pop("shuffle", False))
    if sampler is not None:
        return _stateful_loader(dataset, collate_fn, sampler=sampler, **kwargs)
    batched = kwargs.get("batch_size", 1) is not None
    if (
        shuffle
        and batched
        and world_size == 1
        and not kwargs.get("num_workers")
        and not isinstance(dataset, IterableDataset)
    ):
        generator = torch.Generator().manual_seed(_draw_seed())
        sampler = RandomBatchSampler(
            len(dataset),
            kwargs.pop("batch_size", 1),
            drop_last=bool(kwargs.pop("drop_last", False)),
            generator=generator,
        )
        return _stateful_loader(dataset, collate_fn, batch_sampler=sampler, **kwargs)
    sampler = build_sampler(dataset, shuffle=shuffle, world_size=world_size, rank=rank)
    return _stateful_loader(dataset, collate_fn, sampler=sampler, **kwargs)


def _stateful_loader(dataset: Dataset, collate_fn: Callable | None, **kwargs: Any) -> StatefulDataLoader:
    generator = torch.Generator().manual_seed(_draw_seed())
    with warnings.catch_warnings():
        # torchdata calls a torch API that newer torch deprecates on every construction.
        warnings.filterwarnings("ignore", message=".*set_vital.*is deprecated", category=UserWarning)
        return StatefulDataLoader(dataset, collate_fn=collate_fn, generator=generator, **kwargs)


def loader_length(loader: Any) -> int | None:
    r"""
    ``len(loader)``, or ``None`` for loaders without a length (iterable datasets, generators).

    Examples:
        >>> loader_length([1, 2, 3]), loader_length(iter([1, 2, 3])) is None
        (3, True)
    """
    try:
        return len(loader)
    except (TypeError, NotImplementedError):
        return None


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Tell the loader's samplers which pass comes next (``DistributedSampler`` shuffles by epoch)."""
    for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
