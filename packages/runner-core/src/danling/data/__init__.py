"""danling.data: moving batches between devices and checkpointing dataloaders.

- ``to_device(data, device)``: move every tensor in a (nested) batch (``danling.data.utils``).
- ``DataLoaderDict``: ``{split: loader}`` with ``state_dict`` / ``load_state_dict``
  (``danling.data.dataloader_dict``).
- ``StepProxyLoader``: ``None`` once per batch of another loader, for ranks that read no data
  (middle pipeline stages) (``danling.data.step_proxy``).
"""

from .dataloader_dict import DataLoaderDict
from .step_proxy import StepProxyLoader
from .utils import to_device

__all__ = ["DataLoaderDict", "StepProxyLoader", "to_device"]
