"""danling.utils: small helpers shared by the runners and useful on their own.

- ``catch``, ``flexible_decorator``, ``method_cache``: decorators (``danling.utils.decorators``).
- ``debug``: post-mortem debugging context manager (``danling.utils.context_managers``).
- ``load``, ``save``, ``load_pandas``, ``is_json_serializable``: files by extension
  (``danling.utils.io``).
- ``atomic_write``, ``atomic_path``, ``atomic_link``, ``remove_stale_temporaries``: crash-safe file replacement
  (``danling.utils.atomic``).
- ``ensure_dir`` and friends: properties that create the directory they return
  (``danling.utils.descriptors``).
"""

from .atomic import atomic_link, atomic_path, atomic_write, remove_stale_temporaries
from .context_managers import debug
from .decorators import Exceptions, catch, flexible_decorator, method_cache, print_exc
from .descriptors import cached_ensure_dir, cached_ensure_parent_dir, ensure_dir, ensure_parent_dir
from .io import File, PathStr, is_json_serializable, load, load_pandas, save

__all__ = [
    "Exceptions",
    "File",
    "PathStr",
    "atomic_link",
    "atomic_path",
    "atomic_write",
    "cached_ensure_dir",
    "cached_ensure_parent_dir",
    "catch",
    "debug",
    "ensure_dir",
    "ensure_parent_dir",
    "flexible_decorator",
    "is_json_serializable",
    "load",
    "load_pandas",
    "method_cache",
    "print_exc",
    "remove_stale_temporaries",
    "save",
]
