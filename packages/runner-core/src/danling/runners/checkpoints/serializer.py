"""``torch.save`` in a child process: ``SerializerProcess``.

A checkpoint written by a thread of the training process pickles its payload while holding the
GIL, and the training loop's tensor operations wait for it: on a 2-core machine an asynchronous
save of a small model slowed training as much as a synchronous one.  The file backend therefore
stages tensors in shared memory (``SharedBuffers``) and hands the write to a child process with
an interpreter of its own.  What crosses the socket is one ``pickle`` of the payload in which
each staged tensor is a view of its shared file (the child maps each file once, and lets it go
when the buffer is freed) and other tensors carry their bytes; ``encode_payload`` builds it on
the thread that staged the payload.  The child (``serializer_child.py``, started by file path,
so it imports ``torch`` and never the user's script) runs ``torch.save`` into the file the
manager names and replies.

One child serves every manager of a process; it starts with the first manager that uses it and
lives until the process exits.  If it dies, ``save`` raises ``SerializerLost`` and the caller
writes that checkpoint itself.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import torch

from .shared_buffers import SharedBuffers

_CHILD_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serializer_child.py")


class SerializerLost(RuntimeError):
    """The serializer process died or its socket broke; the checkpoint it was given was not written."""


class SerializerProcess:
    r"""
    A child process that writes payloads whose tensors sit in ``SharedBuffers`` with ``torch.save``.

    ``save`` blocks its caller (a manager's writer thread, which holds no GIL while it waits)
    until the file is written.  Use ``shared()`` for the process-wide instance.

    Examples:
        >>> import tempfile
        >>> buffers = SharedBuffers()
        >>> weight = buffers.empty((3,), torch.float32)
        >>> _ = weight.fill_(2.0)
        >>> serializer, path = SerializerProcess(), os.path.join(tempfile.mkdtemp(), "state.pth")
        >>> serializer.save({"weight": weight, "step": 7}, path, buffers)
        >>> torch.load(path)
        {'weight': tensor([2., 2., 2.]), 'step': 7}
        >>> serializer.close()
    """

    _shared: SerializerProcess | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self._connection: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> SerializerProcess:
        """The serializer of this process (one child for all managers), started on first use."""
        with cls._shared_lock:
            if cls._shared is None or cls._shared._process is None:
                cls._shared = cls()
                cls._shared.start()
            return cls._shared

    @staticmethod
    def supported() -> bool:
        """Whether this platform can run the serializer (shared memory files, ``fork``-free sockets)."""
        return SharedBuffers.supported() and hasattr(socket, "socketpair")

    def start(self) -> None:
        """Start the child now (it takes a few seconds to import ``torch``); ``save`` starts it otherwise."""
        with self._lock:
            self._connect()

    def save(self, payload: Any, path: str, buffers: SharedBuffers) -> None:
        """Write ``payload`` to ``path`` (not flushed to disk); raise ``SerializerLost`` if the child died."""
        self.send(encode_payload(payload, buffers), path, buffers)

    def send(self, encoded: bytes, path: str, buffers: SharedBuffers) -> None:
        """``save`` for a payload that ``encode_payload`` already serialised (on the thread that staged it)."""
        # absolute: the child kept the working directory of the moment it started.  Freed buffers are
        # named here, at sending time: an encoded request may be superseded before it is sent.
        message = pickle.dumps((os.path.abspath(path), buffers.take_freed(), encoded), pickle.HIGHEST_PROTOCOL)
        with self._lock:
            connection = self._connect()
            try:
                connection.send_bytes(message)
                error = connection.recv()
            except (EOFError, OSError) as lost:
                self._stop()
                raise SerializerLost(f"the checkpoint serializer process exited while writing {path}") from lost
        if error is not None:
            raise RuntimeError(f"checkpoint serializer process failed to write {path}: {error}")

    def close(self) -> None:
        """Close the socket (the child exits at end-of-file) and wait for the child."""
        with self._lock:
            self._stop()

    def _connect(self) -> Connection:
        if self._connection is None:
            ours, theirs = socket.socketpair()
            with theirs:
                self._process = subprocess.Popen(
                    [sys.executable, _CHILD_PROGRAM, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
            self._connection = Connection(ours.detach())
        return self._connection

    @classmethod
    def _forget_after_fork(cls) -> None:
        # A forked child (a DataLoader worker) must not talk to its parent's serializer.
        shared, cls._shared, cls._shared_lock = cls._shared, None, threading.Lock()
        if shared is not None and shared._connection is not None:
            shared._connection.close()

    def _stop(self) -> None:
        connection, process = self._connection, self._process
        self._connection, self._process = None, None
        if connection is not None:
            connection.close()
        if process is not None:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def rebuild_staged(file: str, elements: int, dtype: str, offset: int, shape: tuple, stride: tuple) -> torch.Tensor:
    """A staged tensor, from where it sits in a shared file (the serializer process has its own, mapping each file once)."""
    mapping = torch.from_file(file, shared=True, size=elements, dtype=getattr(torch, dtype))
    return mapping.as_strided(shape, stride, offset)


def rebuild_from_bytes(data: bytes, dtype: str, shape: tuple) -> torch.Tensor:
    """A tensor that travelled by value (see ``_SharingPickler``)."""
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(shape)


def _travels_by_value(tensor: torch.Tensor) -> bool:
    # A plain, dense, contiguous host tensor whose bytes are all it holds (no autograd, no lazy conjugation).
    return (
        type(tensor) is torch.Tensor
        and tensor.layout is torch.strided
        and tensor.device.type == "cpu"
        and not tensor.requires_grad
        and not tensor.is_quantized
        and not tensor.is_conj()
        and not tensor.is_neg()
        and tensor.is_contiguous()
        and tensor.dtype.itemsize > 0
    )


class _SharingPickler(pickle.Pickler):
    """Pickles tensors so that the message holds only Python built-ins, which ``pickle`` writes in C.

    A tensor staged in ``buffers`` becomes a call of ``rebuild_staged`` with its file, dtype name and
    geometry; any other plain host tensor (the random generators' states, built fresh for every
    save) a call of ``rebuild_from_bytes`` with its bytes.  ``torch``'s own pickling of a tensor
    runs a ``torch.save`` of its storage and Python for every argument: with the runner's payload
    of 30 tensors it took most of the writer thread's time, which it spends holding the GIL.
    """

    def __init__(self, file: io.BytesIO, buffers: SharedBuffers) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.buffers = buffers

    def reducer_override(self, obj: Any) -> Any:
        # Called only for objects outside pickle's fast paths (not for dicts, lists, numbers, strings).
        if not isinstance(obj, torch.Tensor):
            return NotImplemented
        reference = self.buffers.describe(obj)
        if reference is not None:
            elements = reference.nbytes // reference.dtype.itemsize
            geometry = (reference.offset, reference.shape, reference.stride)
            return rebuild_staged, (reference.file, elements, _dtype_name(reference.dtype), *geometry)
        if _travels_by_value(obj):
            data = obj.reshape(-1).view(torch.uint8).numpy().tobytes() if obj.numel() else b""
            return rebuild_from_bytes, (data, _dtype_name(obj.dtype), tuple(obj.shape))
        return NotImplemented


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # the name ``getattr(torch, name)`` finds it by


def encode_payload(payload: Any, buffers: SharedBuffers) -> bytes:
    r"""
    ``payload`` as the serializer process reads it: staged tensors by reference, other tensors by value.

    Examples:
        >>> buffers = SharedBuffers()
        >>> staged = buffers.empty((2,), torch.float32)
        >>> _ = staged.fill_(1.0)
        >>> encoded = encode_payload({"weight": staged, "rng": torch.tensor([7], dtype=torch.uint8)}, buffers)
        >>> pickle.loads(encoded)  # this process can read it too
        {'weight': tensor([1., 1.]), 'rng': tensor([7], dtype=torch.uint8)}
    """
    file = io.BytesIO()
    _SharingPickler(file, buffers).dump(payload)
    return file.getvalue()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=SerializerProcess._forget_after_fork)
