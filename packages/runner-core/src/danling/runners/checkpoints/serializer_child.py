"""The program of the checkpoint serializer process (see ``serializer.py``).

Run by file path with the number of a connected socket; it imports ``torch`` and nothing of the
training program.  It reads pickled ``(path, freed, encoded payload)`` messages, whose staged tensors
unpickle as views of shared-memory files (each file mapped once, until ``freed`` names it) and
whose other tensors carry their bytes, writes each payload to ``path`` with ``torch.save`` and
replies ``None`` or the error as text.
It ignores ``SIGINT`` and ``SIGTERM`` (the training process decides when saving stops) and exits
at end-of-file: when the training process closes the socket or dies.

Importing this module (as doctest collection does) runs nothing and imports no ``torch``.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection

#: Shared files mapped so far, by name: a buffer is reused by many saves.
MAPPED: dict[str, torch.Tensor] = {}
#: Checkpoints up to this size are serialised in memory and written with one call: ``torch.save``
#: into a file object writes record by record through Python, which took 1.7x as long.
IN_MEMORY_BYTES = 64 * 2**20


def mapped(file: str, elements: int, dtype: torch.dtype) -> torch.Tensor:
    """The whole shared ``file`` as a flat tensor, mapped on first use."""
    tensor = MAPPED.get(file)
    if tensor is None:
        tensor = MAPPED[file] = torch.from_file(file, shared=True, size=elements, dtype=dtype)
    return tensor


def rebuild_staged(file: str, elements: int, dtype: str, offset: int, shape: tuple, stride: tuple) -> torch.Tensor:
    """A staged tensor: a view of its shared file (unpickling calls this for every staged tensor)."""
    return mapped(file, elements, getattr(torch, dtype)).as_strided(shape, stride, offset)


def rebuild_from_bytes(data: bytes, dtype: str, shape: tuple) -> torch.Tensor:
    """A tensor sent by value."""
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(shape)


#: The training process's rebuilding functions, by name: this process resolves them to its own.
REBUILDERS = {"rebuild_staged": rebuild_staged, "rebuild_from_bytes": rebuild_from_bytes}


class Unpickler(pickle.Unpickler):
    """Resolves the training process's rebuilding functions to this module's (without importing its package)."""

    def find_class(self, module: str, name: str) -> object:
        if module == "danling.runners.checkpoints.serializer" and name in REBUILDERS:
            return REBUILDERS[name]
        return super().find_class(module, name)


def write(payload: object, path: str) -> None:
    nbytes = sum(tensor.nbytes for tensor in MAPPED.values())
    with open(path, "wb") as output:
        if nbytes > IN_MEMORY_BYTES:
            torch.save(payload, output)
            return
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        output.write(buffer.getbuffer())


def serve(connection: Connection) -> None:
    while True:
        try:
            message = connection.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            path, freed, encoded = pickle.loads(message)
            for file in freed:
                MAPPED.pop(file, None)
            payload = Unpickler(io.BytesIO(encoded)).load()
            write(payload, path)
            del payload
            reply = None
        except Exception as error:  # reported to the training process, which records the failure
            reply = f"{type(error).__name__}: {error}"
        try:
            connection.send(reply)
        except (EOFError, OSError):
            return


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # this file's folder: the modules next to it belong to the training process
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    serve(Connection(int(sys.argv[1])))
