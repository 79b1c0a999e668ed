"""danling.data: moving batches between devices and checkpointing dataloaders.

- ``to_device(data, device)``: move every tensor in a (nested) batch (``danling.data.utils``).
- ``DataLoaderDict``: ``{split: loader}`` with ``state_dict`` / ``load_state_dict``
  (``danling.data.dataloader_dict``).
"""

from .dataloader_dict import DataLoaderDict
from .utils import to_device

__all__ = ["DataLoaderDict", "to_device"]
