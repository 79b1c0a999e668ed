"""Checkpoint managers: decide when to save, write atomically, and find checkpoints again.

- ``CheckpointManager`` (``base``): cadence, payload collection, background writer, health.
- ``snapshot`` / ``StagingPool`` (``staging``): host copies of a payload for asynchronous writes;
  ``fresh_entries`` declares the entries of a ``state_dict`` that need no copy.
- ``FileCheckpointManager`` (``file``): ``torch.save`` files with ``latest``/``best``/history
  aliases, ``keep_latest_k`` retention; ``load_checkpoint``, ``resolve_checkpoint_path`` and
  ``read_config`` for loading without a manager.
- ``DCPCheckpointManager`` (``dcp``): ``torch.distributed.checkpoint`` directories written by every
  rank, named by ``latest``/``best``/history pointer files; ``load_dcp_checkpoint``,
  ``resolve_dcp_checkpoint`` and ``read_dcp_config`` for loading without a manager;
  ``dcp_structure`` keeps what DCP's flattening would lose (empty dicts, non-string keys).
- ``CheckpointLayout`` (``layout``): data files written once under new names, aliases flipped
  atomically (relative symbolic links, hard links where those are unavailable).
- ``save_model_state`` / ``load_model_state`` (``export``): model weights as safetensors.
- ``checkpoint_manager_class`` / ``register_checkpoint_manager`` / ``find_checkpoint_format``
  (``registry``): the manager of a ``checkpoint.backend`` name, or of a path on disk.
"""

from .base import (
    BackgroundWriter,
    CheckpointHealth,
    CheckpointManager,
    CheckpointNotFoundError,
    SaveRequest,
    collect_state,
    resolve_checkpoint_interval,
)
from .dcp import DCPCheckpointManager, load_dcp_checkpoint, read_dcp_config, resolve_dcp_checkpoint
from .export import load_model_state, save_model_state
from .file import FileCheckpointManager, load_checkpoint, read_config, resolve_checkpoint_path
from .layout import CheckpointLayout
from .registry import checkpoint_manager_class, find_checkpoint_format, register_checkpoint_manager
from .staging import StagingPool, declared_fresh_entries, fresh_entries, snapshot

__all__ = [
    "BackgroundWriter",
    "CheckpointHealth",
    "CheckpointLayout",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "DCPCheckpointManager",
    "FileCheckpointManager",
    "SaveRequest",
    "StagingPool",
    "checkpoint_manager_class",
    "collect_state",
    "declared_fresh_entries",
    "find_checkpoint_format",
    "fresh_entries",
    "load_checkpoint",
    "load_dcp_checkpoint",
    "load_model_state",
    "read_config",
    "read_dcp_config",
    "register_checkpoint_manager",
    "resolve_checkpoint_interval",
    "resolve_checkpoint_path",
    "resolve_dcp_checkpoint",
    "save_model_state",
    "snapshot",
]
