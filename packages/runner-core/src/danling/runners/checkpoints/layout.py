"""Where a file checkpoint's bytes live and how names point at them: ``CheckpointLayout``.

A checkpoint directory holds data files, each written once under a name no other save uses, and
aliases, the names users ask for::

    ckpt-e000003.pth                           # data: history entries (ckpt-s000000001000.pth in step mode)
    ckpt-e000004.pth
    latest-e000005-4711-2.pth                  # data: a save without a history entry
    best.pth -> ckpt-e000003.pth               # aliases: relative symbolic links
    latest.pth -> latest-e000005-4711-2.pth
    model.safetensors

A data file without a history entry is named ``{name}-{progress}-{pid}-{serial}.pth``.

A save writes a temporary file next to its data file and renames it to that new name, then points
each alias at it by making a temporary link and renaming it over the alias.  A rename within a
directory is atomic, so a crash, ``SIGKILL`` or ``SIGTERM`` at any moment leaves every alias
naming a complete checkpoint, the previous one or the new one.  Renaming onto a name that does
not exist yet also spares ext4 the write-back it forces before a rename replaces a file
(``auto_da_alloc``), so a save costs what ``torch.save`` to one path costs.  Links are relative,
so a copied directory (``cp -r``, ``shutil.copytree``) still loads.

Power cuts are ``fsync``'s business: with it each data file is flushed before its rename and the
directory after the renames; without it a power cut may leave the newest files empty (a crash of
the process never does).

Where symbolic links cannot be made (Windows without the privilege, some file systems), aliases
are hard links (copies where those fail too) and a save without a history entry writes
``{name}.pth`` itself, through a temporary file and a rename that replaces it.

A data file is removed once nothing needs it: no alias points at it and it is not a history
entry that retention keeps.  The data file of a process that died before pointing an alias at
it is found by its name (the dead process id) and removed on the next start.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import threading
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

from ...utils.atomic import atomic_link, atomic_path, atomic_write, process_alive

SUFFIX = ".pth"
#: History entries: ``ckpt-e000003.pth`` (epochs) or ``ckpt-s000000001000.pth`` (steps).
HISTORY = re.compile(r"^ckpt-[es]\d+\.pth$")
#: Data files without a history entry: ``{name}-{progress}-{pid}-{serial}.pth``.
_UNNAMED = re.compile(r"^.+-[es]\d+-(?P<pid>\d+)-\d+\.pth$")
#: Serial numbers of this process's data files, so that no two saves share a name.
_SERIALS = itertools.count()
#: Errors of file systems that cannot sync a directory (the rename is then as durable as it gets).
_NO_DIRECTORY_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def is_data_file(name: str) -> bool:
    r"""
    Whether ``name`` is a data file a save wrote (a history entry or an unnamed data file), not an alias.

    Examples:
        >>> is_data_file("ckpt-e000003.pth"), is_data_file("latest-e000005-4711-2.pth"), is_data_file("best.pth")
        (True, True, False)
    """
    return bool(HISTORY.match(name) or _UNNAMED.match(name))


class CheckpointLayout:
    r"""
    Data files and aliases of one checkpoint directory (see the module docstring).

    Args:
        directory: The checkpoint directory (it must exist).
        fsync: Flush each data file before its rename and the directory after renames.

    Examples:
        >>> import tempfile
        >>> layout = CheckpointLayout(tempfile.mkdtemp())
        >>> data = layout.data_name("latest", "e000002", history="ckpt-e000002")
        >>> with layout.write(data) as file:
        ...     _ = file.write(b"weights")
        >>> layout.point("latest.pth", data) is None, os.readlink(layout.path("latest.pth"))
        (True, 'ckpt-e000002.pth')
        >>> with layout.write("ckpt-e000004.pth") as file:
        ...     _ = file.write(b"newer weights")
        >>> layout.point("latest.pth", "ckpt-e000004.pth")  # the file it named before
        'ckpt-e000002.pth'
        >>> layout.remove_unreferenced(["ckpt-e000002.pth"]), sorted(os.listdir(layout.directory))
        (['ckpt-e000002.pth'], ['ckpt-e000004.pth', 'latest.pth'])
    """

    def __init__(self, directory: str, *, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        self._symlinks: bool | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @property
    def symlinks(self) -> bool:
        """Whether aliases are symbolic links here; found out once, by making one."""
        if self._symlinks is None:
            self._symlinks = _can_symlink(self.directory)
        return self._symlinks

    def data_name(self, name: str, progress_tag: str, history: str | None = None) -> str:
        """The file a save of checkpoint ``name`` writes: its history entry, else a name of its own."""
        if history is not None:
            return history + SUFFIX
        if not self.symlinks:
            return name + SUFFIX
        return f"{name}-{progress_tag}-{os.getpid()}-{next(_SERIALS)}{SUFFIX}"

    @contextmanager
    def write(self, data: str) -> Iterator[BinaryIO]:
        """Yield a file to write data file ``data`` to; it appears under its name, complete, when the block ends."""
        with atomic_write(self.path(data), fsync=self.fsync) as file:
            yield file
        self.sync()

    @contextmanager
    def write_path(self, data: str) -> Iterator[str]:
        """Like ``write``, for writers that need a file name (another process): yield a temporary path."""
        with atomic_path(self.path(data), fsync=self.fsync) as temporary:
            yield temporary
        self.sync()

    def point(self, alias: str, data: str) -> str | None:
        """Make ``alias`` name data file ``data``, atomically; return the data file it named before, if any."""
        if alias == data:  # written in place (no symbolic links)
            return None
        target = self.path(alias)
        previous = _link_target(target)
        if self.symlinks:
            temporary = f"{target}.tmp-{os.getpid()}-{threading.get_ident()}"
            os.symlink(data, temporary)
            try:
                os.replace(temporary, target)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.remove(temporary)
                raise
        else:
            atomic_link(self.path(data), target)
        return None if previous == data else previous

    def sync(self) -> None:
        """Make the renames so far durable (with ``fsync``)."""
        if self.fsync:
            _sync_directory(self.directory)

    def referenced(self) -> set[str]:
        """Names of the files that the directory's symbolic links point at."""
        names = set()
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.is_symlink() and (target := _link_target(entry.path)) is not None:
                    names.add(target)
        return names

    def remove_unreferenced(self, candidates: Iterable[str | None], keep: Collection[str] = ()) -> list[str]:
        """Delete those of ``candidates`` that are data files, not in ``keep``, and named by no alias."""
        doomed = {name for name in candidates if name is not None and name not in keep and is_data_file(name)}
        if not doomed:
            return []
        removed = []
        for name in sorted(doomed - self.referenced()):
            if os.path.islink(self.path(name)):  # an alias that happens to look like a data file
                continue
            with suppress(FileNotFoundError):
                os.remove(self.path(name))
                removed.append(name)
        return removed

    def remove_orphans(self) -> list[str]:
        """Delete data files without a history entry that no alias names, written by processes that are gone."""
        orphans = []
        for entry in os.listdir(self.directory):
            match = _UNNAMED.match(entry)
            if match is not None and not process_alive(int(match["pid"])):
                orphans.append(entry)
        return self.remove_unreferenced(orphans)


def _link_target(path: str) -> str | None:
    # The file a relative link in the same directory points at; ``None`` for anything else.
    try:
        target = os.readlink(path)
    except OSError:  # not a link, or gone
        return None
    separators = (os.sep, os.altsep) if os.altsep else (os.sep,)
    if not target or target in (os.curdir, os.pardir) or any(sep in target for sep in separators):
        return None
    return target


def _can_symlink(directory: str) -> bool:
    probe = os.path.join(directory, f".symlink-probe.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        os.symlink("absent" + SUFFIX, probe)
    except (OSError, NotImplementedError):
        return False
    with suppress(OSError):
        os.remove(probe)
    return True


def _sync_directory(directory: str) -> None:
    if os.name == "nt":  # directories cannot be opened to sync; NTFS journals renames itself
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in _NO_DIRECTORY_SYNC:
            raise
    finally:
        os.close(descriptor)
    return True
