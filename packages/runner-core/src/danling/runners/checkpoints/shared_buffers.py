"""Host tensors in shared memory that a serializer process maps by file name: ``SharedBuffers``.

An asynchronous save copies the payload's tensors into staging buffers (``StagingPool``).  When
those buffers live in files under ``/dev/shm``, a child process can map the same pages and run
``torch.save`` itself, so the training process spends no interpreter time on pickling (a writer
thread would hold the GIL for most of a small checkpoint's write, stalling the training loop as
long as a synchronous save would).  A buffer's file is removed when the buffer is dropped (the
pages stay while another process still maps them).  Files a killed process left behind carry
its pid and are removed by the next ``SharedBuffers`` on the machine.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import weakref
from contextlib import suppress
from typing import NamedTuple

import torch

from ...utils.atomic import process_alive

#: Where shared buffers live: a RAM file system on Linux.
SHARED_MEMORY_DIRECTORY = "/dev/shm"
_PREFIX = "danling-stage-"
_LEFTOVER = re.compile(rf"^{_PREFIX}(\d+)-")


class SharedTensor(NamedTuple):
    """Where a tensor's data sits in a shared buffer: enough for another process to rebuild it."""

    file: str
    nbytes: int
    dtype: torch.dtype
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.remove(path)


class SharedBuffers:
    r"""
    Allocates host tensors backed by files in shared memory and describes them for another process.

    ``empty`` returns ``None`` when the shared file system has no room (a container's small
    ``/dev/shm``): the caller then stages in private memory, and those tensors travel by value.

    Examples:
        >>> buffers = SharedBuffers()
        >>> staged = buffers.empty((2, 3), torch.float32)
        >>> _ = staged.fill_(1.5)
        >>> reference = buffers.describe(staged[1:])  # what another process needs to map a view
        >>> reference.file.startswith(buffers.directory), reference.offset, reference.shape
        (True, 3, (1, 3))
        >>> buffers.describe(torch.ones(2)) is None  # private memory
        True
    """

    def __init__(self, directory: str = SHARED_MEMORY_DIRECTORY) -> None:
        self.directory = directory
        self._files: dict[int, str] = {}  # storage address -> backing file, while the buffer lives
        self._freed: list[str] = []  # files of buffers dropped since ``take_freed``
        remove_leftover_buffers(directory)

    @staticmethod
    def supported(directory: str = SHARED_MEMORY_DIRECTORY) -> bool:
        """Whether this machine has a shared-memory file system to stage in."""
        return os.name == "posix" and os.path.isdir(directory) and os.access(directory, os.W_OK)

    def empty(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """An uninitialised shared tensor, or ``None`` when the shared file system is full."""
        nbytes = max(math.prod(shape) * dtype.itemsize, 1)
        descriptor, path = tempfile.mkstemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=self.directory)
        try:
            # Reserve the pages now: writing into a file a full tmpfs cannot back would raise SIGBUS.
            os.posix_fallocate(descriptor, 0, nbytes)
        except OSError:
            _unlink(path)
            return None
        finally:
            os.close(descriptor)
        storage = torch.UntypedStorage.from_file(path, shared=True, nbytes=nbytes)
        tensor = torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))
        address = storage.data_ptr()
        self._files[address] = path
        weakref.finalize(tensor, _release, self._files, self._freed, address, path)
        return tensor

    def describe(self, tensor: torch.Tensor) -> SharedTensor | None:
        """How another process finds ``tensor``'s data, if it is one of these buffers (or a view of one)."""
        storage = tensor.untyped_storage()
        path = self._files.get(storage.data_ptr())
        if path is None:
            return None
        return SharedTensor(
            path, storage.nbytes(), tensor.dtype, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride())
        )

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s data sits in one of these buffers whose file still exists."""
        return tensor.untyped_storage().data_ptr() in self._files

    def take_freed(self) -> list[str]:
        """Files of buffers dropped since the last call: a process that mapped them may let them go."""
        freed = []
        while self._freed:  # pops are atomic: a buffer freed meanwhile is kept for the next call
            freed.append(self._freed.pop())
        return freed


def _release(files: dict[int, str], freed: list[str], address: int, path: str) -> None:
    if files.get(address) == path:
        del files[address]
    freed.append(path)
    _unlink(path)


def remove_leftover_buffers(directory: str = SHARED_MEMORY_DIRECTORY) -> list[str]:
    """Delete staging files of processes that no longer exist (killed before they could unlink them)."""
    removed = []
    with suppress(OSError):
        for entry in os.listdir(directory):
            match = _LEFTOVER.match(entry)
            if match is not None and not process_alive(int(match.group(1))):
                _unlink(os.path.join(directory, entry))
                removed.append(os.path.join(directory, entry))
    return removed
