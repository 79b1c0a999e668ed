"""Crash-safe file replacement: ``atomic_write``, ``atomic_path``, ``atomic_link``, ``remove_stale_temporaries``.

A file written through ``atomic_write`` appears complete or not at all: the data goes to a
temporary file in the same directory, is flushed to disk, and is moved onto the target with
``os.replace``.  A process killed mid-write leaves the previous file intact plus a
``{name}.tmp-{pid}-{thread}`` file that ``remove_stale_temporaries`` cleans up later.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from .io import PathStr

_TEMPORARY_SUFFIX = re.compile(r"\.tmp-(\d+)-\d+$")


def _temporary_name(target: str) -> str:
    return f"{target}.tmp-{os.getpid()}-{threading.get_ident()}"


@contextmanager
def atomic_write(path: PathStr, *, fsync: bool = True) -> Iterator[BinaryIO]:
    r"""
    Yield a binary file to write ``path``'s new content to; on success it replaces ``path`` atomically.

    The data goes to a temporary file next to ``path``; when the block succeeds it is flushed to
    disk (``fsync``) and moved onto ``path`` with ``os.replace``, so readers (and a process
    restarted after a crash) see the old file or the new one, never a partial one.  On failure
    the temporary file is removed and ``path`` is untouched.  The directory itself is not synced:
    after a power cut ``path`` may still be the previous (complete) file.

    Examples:
        >>> import tempfile, torch
        >>> target = os.path.join(tempfile.mkdtemp(), "state.pth")
        >>> with atomic_write(target) as file:
        ...     torch.save({"step": 1}, file)
        >>> torch.load(target), os.listdir(os.path.dirname(target))
        ({'step': 1}, ['state.pth'])
    """
    target = os.fsdecode(path)
    temporary = _temporary_name(target)
    try:
        with open(temporary, "wb") as file:
            yield file
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(temporary)
        raise


@contextmanager
def atomic_path(path: PathStr, *, fsync: bool = True) -> Iterator[str]:
    r"""
    Like ``atomic_write``, for writers that need a file name: yield a temporary path to write.

    Examples:
        >>> import tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "state.txt")
        >>> with atomic_path(target) as temporary:
        ...     with open(temporary, "w") as file:
        ...         _ = file.write("step 1")
        >>> open(target).read(), os.listdir(os.path.dirname(target))
        ('step 1', ['state.txt'])
    """
    target = os.fsdecode(path)
    temporary = _temporary_name(target)
    try:
        yield temporary
        if fsync:
            with open(temporary, "rb+") as file:
                os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def atomic_link(source: PathStr, alias: PathStr) -> None:
    r"""
    Make ``alias`` a hard link to ``source`` (a copy where links are unsupported), replacing ``alias`` atomically.
    """
    source, alias = os.fsdecode(source), os.fsdecode(alias)
    temporary = _temporary_name(alias)
    try:
        try:
            os.link(source, temporary)
        except OSError:  # file systems without hard links, or across devices
            shutil.copy2(source, temporary)
        os.replace(temporary, alias)
    finally:
        # also covers a rename between two links to one file, which POSIX makes a no-op
        with suppress(FileNotFoundError):
            os.remove(temporary)


def remove_stale_temporaries(directory: PathStr) -> list[str]:
    r"""
    Delete ``*.tmp-{pid}-{thread}`` files in ``directory`` left by processes that no longer exist.

    Files of live processes (a save in progress) are kept.  Returns the removed paths.
    """
    removed = []
    directory = os.fsdecode(directory)
    for entry in os.listdir(directory):
        match = _TEMPORARY_SUFFIX.search(entry)
        if match is None or process_alive(int(match.group(1))):
            continue
        with suppress(FileNotFoundError):
            os.remove(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running; ``True`` whenever the platform cannot tell."""
    if pid == os.getpid() or os.name == "nt":  # ``os.kill`` terminates processes on Windows: never ask there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True
