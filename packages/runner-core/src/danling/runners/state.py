"""``RunnerState``: the counters and RNG states a checkpoint needs for an exact resume.

``RunnerState`` groups three small dataclasses, each with ``state_dict``/``load_state_dict``:

- ``RunnerTrainState``: ``global_step``, ``micro_step``, ``epoch``;
- ``RunnerElasticState``: ``restart_count`` (from torchelastic);
- ``RunnerRNGState``: snapshots of the Python, NumPy and torch (CPU, CUDA) generators.

``LoopState`` (kept beside the runner state, saved as the checkpoint's ``loop`` entry) records
where training is inside an epoch or a round, so a resume trains on exactly the batches an
uninterrupted run would.

``RunnerRNGState.capture()`` reads the process's generators and ``restore()`` writes them back,
so a run stopped and resumed draws the same random numbers as one that never stopped.  Every
state dict holds only plain Python values and tensors, so checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .config import RunnerConfig

try:
    import numpy
except ImportError:  # pragma: no cover - numpy is optional
    numpy = None  # type: ignore[assignment]


def _load_fields(target: Any, state_dict: Mapping[str, Any]) -> None:
    """Set each dataclass field found in ``state_dict``; unknown keys are ignored, missing ones kept."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{type(target).__name__}.load_state_dict expects a mapping, got {type(state_dict).__name__}")
    for item in fields(target):
        if item.name in state_dict:
            setattr(target, item.name, state_dict[item.name])


@dataclass
class RunnerTrainState:
    r"""
    Training progress.

    Attributes:
        global_step: Optimizer updates completed.
        micro_step: Micro-batches consumed, including those of an unfinished accumulation window.
        epoch: Epochs completed in epoch mode; rounds over the training splits in step mode.

    Examples:
        >>> state = RunnerTrainState(global_step=3, micro_step=7, epoch=2)
        >>> state.state_dict()
        {'global_step': 3, 'micro_step': 7, 'epoch': 2}
        >>> state.load_state_dict({"global_step": 5, "tokens_seen": 1024})
        >>> state
        RunnerTrainState(global_step=5, micro_step=7, epoch=2)
    """

    global_step: int = 0
    micro_step: int = 0
    epoch: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        _load_fields(self, state_dict)


@dataclass
class RunnerElasticState:
    r"""
    Restart bookkeeping of elastic (torchrun) jobs.

    Attributes:
        restart_count: How many times torchelastic restarted the job (informational).
    """

    restart_count: int = 0

    @classmethod
    def from_env(cls) -> RunnerElasticState:
        """Read ``TORCHELASTIC_RESTART_COUNT`` (0 when unset)."""
        return cls(restart_count=int(os.getenv("TORCHELASTIC_RESTART_COUNT", "0")))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        _load_fields(self, state_dict)


@dataclass
class RunnerRNGState:
    r"""
    Snapshots of the process's random generators; ``None`` where nothing was captured.

    Attributes:
        python: ``random.getstate()`` with its 625 words as an int64 tensor: a tuple of 625 Python
            ints costs a checkpoint 625 pickled objects (most of a small model's save time).
        numpy: NumPy's legacy global generator, as ``{"bit_generator", "state": {"key", "pos"},
            "has_gauss", "gauss"}`` with ``key`` an int64 tensor (so it loads with ``weights_only``).
        torch_cpu: ``torch.get_rng_state()``.
        torch_cuda: ``torch.cuda.get_rng_state_all()``; captured only once CUDA is initialised.

    Examples:
        >>> rng = RunnerRNGState().capture()
        >>> first = [random.random(), torch.rand(1).item()]
        >>> rng.restore()
        >>> [random.random(), torch.rand(1).item()] == first
        True
    """

    python: Any = None
    numpy: Any = None
    torch_cpu: Any = None
    torch_cuda: Any = None

    def capture(self) -> RunnerRNGState:
        """Read every available generator into this object and return it."""
        self.python = capture_python_rng_state()
        self.numpy = capture_numpy_rng_state()
        self.torch_cpu = torch.get_rng_state()
        # Reading CUDA states would initialise CUDA on every device; skip until the run uses it.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.torch_cuda = torch.cuda.get_rng_state_all()
        return self

    def restore(self) -> None:
        """Write the captured states back into the generators (entries that are ``None`` are skipped)."""
        if self.python is not None:
            random.setstate(_as_python_state(self.python))
        if self.numpy is not None:
            restore_numpy_rng_state(self.numpy)
        if self.torch_cpu is not None:
            torch.set_rng_state(_as_byte_tensor(self.torch_cpu))
        if self.torch_cuda is not None and torch.cuda.is_available():
            states = [_as_byte_tensor(state) for state in self.torch_cuda]
            for device, state in enumerate(states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, device)

    def state_dict(self) -> dict[str, Any]:
        return {"python": self.python, "numpy": self.numpy, "torch_cpu": self.torch_cpu, "torch_cuda": self.torch_cuda}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        _load_fields(self, state_dict)


_STATE_SECTIONS = ("train", "elastic", "rng")


@dataclass
class RunnerState:
    r"""
    Everything about a run's progress that a checkpoint stores besides model and optimizer.

    ``state_dict()`` is ``{"train": ..., "elastic": ..., "rng": ...}``; the config is stored
    separately by the runner.  ``load_state_dict`` restores the sections it finds and ignores
    entries that are missing or not mappings.  Loading does not touch the generators: call
    ``state.rng.restore()`` for that.

    Examples:
        >>> state = RunnerState(config={"epochs": 2})
        >>> state.train.global_step = 4
        >>> saved = state.state_dict()
        >>> sorted(saved), saved["train"]["global_step"]
        (['elastic', 'rng', 'train'], 4)
        >>> fresh = RunnerState(config=state.config)
        >>> fresh.load_state_dict(saved)
        >>> fresh.train.global_step
        4
    """

    config: RunnerConfig
    train: RunnerTrainState = field(default_factory=RunnerTrainState)
    elastic: RunnerElasticState = field(default_factory=RunnerElasticState)
    rng: RunnerRNGState = field(default_factory=RunnerRNGState)

    def __post_init__(self) -> None:
        self.config = self.config if isinstance(self.config, RunnerConfig) else RunnerConfig(self.config)

    def state_dict(self) -> dict[str, Any]:
        return {section: getattr(self, section).state_dict() for section in _STATE_SECTIONS}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        for section in _STATE_SECTIONS:
            saved = state_dict.get(section)
            if isinstance(saved, Mapping):  # absent or malformed sections keep their current values
                getattr(self, section).load_state_dict(saved)


def seed_everything(seed: int) -> None:
    r"""
    Seed Python's ``random``, NumPy's global generator (when installed) and torch (CPU and CUDA).

    The runner adds the process rank to its base seed before calling this, so ranks draw
    different numbers.

    Examples:
        >>> seed_everything(7); a = torch.rand(2)
        >>> seed_everything(7); torch.equal(a, torch.rand(2))
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    random.seed(seed)
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily when CUDA starts)


def capture_numpy_rng_state() -> dict[str, Any] | None:
    """NumPy's global generator state in a ``weights_only``-loadable form, or ``None`` without NumPy."""
    if numpy is None:
        return None
    state = numpy.random.get_state(legacy=False)
    return {
        "bit_generator": state["bit_generator"],
        "state": {
            "key": torch.from_numpy(state["state"]["key"].astype(numpy.int64)),
            "pos": int(state["state"]["pos"]),
        },
        "has_gauss": int(state["has_gauss"]),
        "gauss": float(state["gauss"]),
    }


def restore_numpy_rng_state(state: Any) -> None:
    """Set NumPy's global generator from ``capture_numpy_rng_state()`` output or ``numpy.random.get_state()``."""
    if numpy is None:
        raise ImportError(
            "cannot restore the NumPy random state: numpy is not installed. Install it with: pip install numpy"
        )
    if isinstance(state, Mapping):
        key = state["state"]["key"]
        key = key.numpy() if isinstance(key, torch.Tensor) else numpy.asarray(key)
        state = {
            "bit_generator": state["bit_generator"],
            "state": {"key": key.astype(numpy.uint32), "pos": int(state["state"]["pos"])},
            "has_gauss": int(state["has_gauss"]),
            "gauss": float(state["gauss"]),
        }
    numpy.random.set_state(state)


def capture_python_rng_state() -> tuple[int, torch.Tensor, float | None]:
    """``random.getstate()`` with the generator's words packed into one int64 tensor (cheap to save)."""
    version, internal, gauss = random.getstate()
    return (version, torch.frombuffer(array("q", internal), dtype=torch.int64), gauss)


def _as_python_state(state: Any) -> tuple:
    # ``random.setstate`` needs a tuple of ints: from the packed tensor, from ``random.getstate()`` itself,
    # from lists (a state that went through JSON or YAML), or from 0-d tensors (torch 2.6's DCP loads a
    # tensor inside a tuple as a sequence of them)
    version, internal, gauss = state
    words = internal.tolist() if isinstance(internal, torch.Tensor) else [int(word) for word in internal]
    return (version, tuple(words), gauss)


def _as_byte_tensor(state: Any) -> torch.Tensor:
    if isinstance(state, torch.Tensor):
        return state.to(device="cpu", dtype=torch.uint8)
    return torch.tensor(state, dtype=torch.uint8)


@dataclass
class LoopState:
    r"""
    Where training is inside the current epoch (epoch mode) or round (step mode).

    Attributes:
        split: Training split in progress, ``None`` between splits.
        target: Step mode: the global step at which ``split``'s turn in the round ends.
        done: Training splits already finished in this epoch (their pass) or round (their turn).
        batches: Batches of each training split's current pass already trained on.
        passes: Completed passes over each training split (the sampler epoch in step mode).

    Examples:
        >>> state = LoopState(split="train", done=["extra"], batches={"train": 3}, passes={"train": 1})
        >>> restored = LoopState(); restored.load_state_dict(state.state_dict()); restored == state
        True
    """

    split: str | None = None
    target: int | None = None
    done: list[str] = field(default_factory=list)
    batches: dict[str, int] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)

    def remaining(self, splits: Sequence[str]) -> list[str]:
        """The ``splits`` this epoch or round still has to train (all but ``done``)."""
        return [split for split in splits if split not in self.done]

    def begin(self, split: str, target: int | None = None) -> bool:
        """Start ``split`` (or continue it after a resume); return whether it was continued."""
        if self.split == split:
            return True
        self.split, self.target = split, target
        return False

    def end_pass(self, split: str) -> None:
        """Record a completed pass over ``split``."""
        self.passes[split] = self.passes.get(split, 0) + 1
        self.batches[split] = 0

    def finish(self, split: str) -> None:
        """Record that ``split`` is done for this epoch or round."""
        self.split, self.target = None, None
        if split not in self.done:
            self.done.append(split)

    def state_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "target": self.target,
            "done": list(self.done),
            "batches": dict(self.batches),
            "passes": dict(self.passes),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.split = state_dict.get("split")
        self.target = state_dict.get("target")
        self.done = [str(split) for split in state_dict.get("done") or []]
        self.batches = {str(split): int(count) for split, count in dict(state_dict.get("batches") or {}).items()}
        self.passes = {str(split): int(count) for split, count in dict(state_dict.get("passes") or {}).items()}
