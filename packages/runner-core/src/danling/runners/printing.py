"""Print and log from one process of a distributed job.

``PrintRouter`` replaces ``builtins.print`` while a runner lives: other ranks' prints are
dropped (unless ``print(..., force=True)``), and the main process's prints go to the run's
logger, so they reach both the console and the log file.  ``ColorFormatter`` colours console
log lines by level on terminals that support it.
"""

from __future__ import annotations

import builtins
import logging
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from .utils import get_rank

#: ANSI colour of each level's name on the console.
_LEVEL_COLORS = {
    logging.DEBUG: "\033[36m",  # cyan
    logging.INFO: "\033[32m",  # green
    logging.WARNING: "\033[33m",  # yellow
    logging.ERROR: "\033[31m",  # red
    logging.CRITICAL: "\033[1;31m",  # bold red
}
_DIM = "\033[2m"
_RESET = "\033[0m"
LOG_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"


def supports_color(stream: IO) -> bool:
    """Whether ``stream`` is a terminal that shows colours (honours ``NO_COLOR`` and ``TERM=dumb``)."""
    if os.getenv("NO_COLOR") is not None or os.getenv("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ColorFormatter(logging.Formatter):
    r"""
    ``LOG_FORMAT`` with a dim timestamp and a coloured ``[LEVEL]``.

    Examples:
        >>> record = logging.LogRecord("run", logging.WARNING, __file__, 1, "disk almost full", None, None)
        >>> "\033[33m[WARNING]" in ColorFormatter().format(record)
        True
    """

    def format(self, record: logging.LogRecord) -> str:
        color = _LEVEL_COLORS.get(record.levelno, "")
        timestamp = self.formatTime(record, self.datefmt)
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        return f"{_DIM}{timestamp}{_RESET} {color}[{record.levelname}]{_RESET} {message}"


def log_info(logger: logging.Logger, message: str) -> None:
    """``logger.info(message)`` without looking up the caller's source line, which ``LOG_FORMAT`` does not show.

    ``Logger.info`` walks the stack to fill in file, line and function for every record: a third
    of the time a progress line spends in ``logging``.
    """
    if logger.isEnabledFor(logging.INFO):
        logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None))


class PrintRouter:
    r"""
    A replacement for ``builtins.print`` that speaks for one process only.

    Calls keep ``print``'s signature plus ``force``:

    - on a rank other than ``process``, nothing is printed unless ``force=True``;
    - with a logger, text bound for standard output becomes one ``logger.info`` record;
      prints to any other file (``file=sys.stderr``, an open file) are written as usual;
    - after ``uninstall()`` the router only forwards to the print it replaced.

    Routers nest: each remembers the print it replaced, and ``uninstall()`` puts back the
    nearest one still installed, whatever order nested runners close in.

    Examples:
        >>> router = PrintRouter(process=0).install()
        >>> print("only rank 0 sees this")
        only rank 0 sees this
        >>> router.uninstall()
        >>> print is router
        False
    """

    def __init__(self, process: int = 0, logger: logging.Logger | None = None) -> None:
        self.process = process
        self.logger = logger
        self.active = False
        self.previous: Callable[..., Any] = builtins.print

    def install(self) -> PrintRouter:
        """Make this router ``builtins.print``; installing twice is a no-op."""
        if self.active:
            return self
        self.previous = builtins.print
        self.active = True
        builtins.print = self  # type: ignore[assignment]
        return self

    def uninstall(self) -> None:
        """Stop routing; if this router is ``builtins.print``, restore the nearest active predecessor."""
        self.active = False
        if builtins.print is self:
            previous = self.previous
            while isinstance(previous, PrintRouter) and not previous.active:
                previous = previous.previous
            builtins.print = previous  # type: ignore[assignment]

    def __call__(
        self,
        *args: Any,
        sep: str | None = " ",
        end: str | None = "\n",
        file: IO | None = None,
        flush: bool = False,
        force: bool = False,
    ) -> None:
        if not self.active:
            self._forward(*args, sep=sep, end=end, file=file, flush=flush, force=force)
            return
        if not force and get_rank() != self.process:
            return
        if self.logger is not None and (file is None or file is sys.stdout):
            text = (" " if sep is None else sep).join(str(arg) for arg in args)
            if end and end != "\n":
                text += end.rstrip("\n")
            log_info(self.logger, text)
            return
        self._forward(*args, sep=sep, end=end, file=file, flush=flush, force=force)

    def _forward(self, *args: Any, force: bool, **kwargs: Any) -> None:
        if isinstance(self.previous, PrintRouter):
            self.previous(*args, force=force, **kwargs)
        else:
            self.previous(*args, **kwargs)
