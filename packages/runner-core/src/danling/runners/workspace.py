"""``RunnerWorkspace``: where a run writes, what it is called, and its log and metadata files.

Layout of a run (``code_id`` is the git hash, absent outside a git checkout)::

    {workspace_root}/{lineage}[-{code_id}]/{id}/      # id = [{code_id}-]{config_id}
        runner.yaml                                    # the full config, reloadable
        metadata/config.full.yaml, config.canonical.yaml, config.diff.yaml, git.yaml[, git.diff]
        logs/{timestamp}.log
        checkpoints/latest.pth, best.pth, ckpt-e000003.pth, model.safetensors ...

``config.dir``, ``config.log_file`` and ``config.checkpoint_dir`` override those paths.  Paths,
ids and names are computed once, at first use, so editing the config later does not move a
running experiment.  Reading a directory property creates the directory.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from functools import cached_property
from typing import Any

import chanfig
import yaml

from ..utils import cached_ensure_dir, cached_ensure_parent_dir, save
from .config import RunnerConfig, config_id
from .printing import LOG_FORMAT, ColorFormatter, PrintRouter, supports_color
from .utils import get_git_diff, get_git_hash, get_time_str, is_main_process


class RunnerWorkspace:
    r"""
    The run's directory layout, identity, logger and metadata, computed from its config.

    Args:
        config: The run's config (a mapping is wrapped in ``RunnerConfig``).
        timestamp: This attempt's time string (default ``get_time_str()``); distributed runners
            pass rank 0's value so all ranks agree.

    Examples:
        >>> import tempfile
        >>> workspace = RunnerWorkspace({"workspace_root": tempfile.mkdtemp(), "lineage": "mnist", "epochs": 2})
        >>> workspace.name
        'mnist-exp'
        >>> workspace.id == (f"{workspace.code_id}-{workspace.config_id}" if workspace.code_id else workspace.config_id)
        True
        >>> os.path.relpath(workspace.checkpoint_dir, workspace.dir)
        'checkpoints'
    """

    def __init__(self, config: RunnerConfig | dict[str, Any], *, timestamp: str | None = None) -> None:
        self.config = config if isinstance(config, RunnerConfig) else RunnerConfig(config)
        self.timestamp = timestamp or get_time_str()
        self.logger: logging.Logger | None = None
        self.print_router: PrintRouter | None = None

    # identity

    @cached_property
    def code_id(self) -> str | None:
        """Short git hash of the code (with a diff suffix when the tree is dirty); ``None`` outside git."""
        return get_git_hash()

    @cached_property
    def config_id(self) -> str:
        """12 hex digits identifying the config's semantic settings (see ``RunnerConfig.canonical``)."""
        return config_id(self.config)

    @property
    def id(self) -> str:
        """``{code_id}-{config_id}``, or ``config_id`` outside git."""
        return self.config_id if self.code_id is None else f"{self.code_id}-{self.config_id}"

    @cached_property
    def lineage(self) -> str:
        """``config.lineage`` or ``"lin"``."""
        return str(self.config.get("lineage") or "lin")

    @cached_property
    def experiment(self) -> str:
        """``config.experiment`` or ``"exp"``."""
        return str(self.config.get("experiment") or "exp")

    @cached_property
    def name(self) -> str:
        """``config.name``, or ``"{lineage}-{experiment}"`` when unset or ``None``."""
        name = self.config.get("name")
        return f"{self.lineage}-{self.experiment}" if name is None else str(name)

    # paths

    @cached_ensure_dir
    def workspace_root(self) -> str:
        """``config.workspace_root`` (default ``"experiments"``)."""
        return str(self.config.get("workspace_root") or "experiments")

    @cached_ensure_dir
    def dir(self) -> str:
        """The run directory: ``config.dir`` or ``{workspace_root}/{lineage}[-{code_id}]/{id}``."""
        if self.config.get("dir"):
            return str(self.config.get("dir"))
        lineage = self.lineage if self.code_id is None else f"{self.lineage}-{self.code_id}"
        return os.path.join(self.workspace_root, lineage, self.id)

    @cached_ensure_parent_dir
    def log_file(self) -> str:
        """``config.log_file`` or ``{dir}/logs/{timestamp}.log``."""
        if self.config.get("log_file"):
            return str(self.config.get("log_file"))
        return os.path.join(self.dir, "logs", f"{self.timestamp}.log")

    @cached_ensure_dir
    def checkpoint_dir(self) -> str:
        """``config.checkpoint_dir`` or ``{dir}/{config.checkpoint.dir_name}``."""
        if self.config.get("checkpoint_dir"):
            return str(self.config.get("checkpoint_dir"))
        return os.path.join(self.dir, self.config.checkpoint.dir_name)

    @cached_ensure_dir
    def metadata_dir(self) -> str:
        """``{dir}/metadata``."""
        return os.path.join(self.dir, "metadata")

    # logging and printing

    def init_logging(self) -> logging.Logger | None:
        """
        Create the run's logger on the main process: INFO to the console and to ``log_file``.

        The console handler colours levels on a terminal; the file never gets colour codes.
        Other processes get ``None``.  Calling it again returns the same logger.
        """
        if not is_main_process():
            return None
        logger = logging.getLogger(f"danling.runner.{self.id}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if not logger.handlers:
            console = logging.StreamHandler(sys.stdout)
            console.setFormatter(ColorFormatter() if supports_color(sys.stdout) else logging.Formatter(LOG_FORMAT))
            logger.addHandler(console)
            log_file = logging.FileHandler(self.log_file)
            log_file.setFormatter(logging.Formatter(LOG_FORMAT))
            logger.addHandler(log_file)
        self.logger = logger
        if self.print_router is not None:
            self.print_router.logger = logger
        return logger

    def init_print(self, process: int = 0) -> PrintRouter:
        """Route ``print`` through ``PrintRouter``: only rank ``process`` prints, into the logger if any."""
        if self.print_router is None or self.print_router.process != process:
            if self.print_router is not None:
                self.print_router.uninstall()
            self.print_router = PrintRouter(process=process, logger=self.logger)
        return self.print_router.install()

    # metadata

    def save_metadata(self) -> list[str]:
        """
        Write the config and code version next to the run's outputs (main process only).

        Files: ``{dir}/runner.yaml`` (the full config; ``RunnerConfig.from_yaml`` reads it back)
        and, in ``{dir}/metadata/``, ``config.full.yaml``, ``config.canonical.yaml`` (the
        semantic settings), ``config.diff.yaml`` (semantic settings that differ from the
        defaults), ``git.yaml`` (commit, run id, timestamp) and ``git.diff`` (uncommitted
        changes, inside git only).  Returns the paths written; an ``OSError`` is reported as a
        warning and the files written so far are returned.
        """
        if not is_main_process():
            return []
        written: list[str] = []
        canonical = self.config.canonical()
        defaults = chanfig.NestedDict(RunnerConfig().canonical())
        files: list[tuple[str, Any]] = [
            (os.path.join(self.dir, "runner.yaml"), self.config.dict()),
            (os.path.join(self.metadata_dir, "config.full.yaml"), self.config.dict()),
            (os.path.join(self.metadata_dir, "config.canonical.yaml"), canonical.dict()),
            (os.path.join(self.metadata_dir, "config.diff.yaml"), defaults.diff(canonical).dict()),
            (
                os.path.join(self.metadata_dir, "git.yaml"),
                {"commit": self.code_id, "id": self.id, "timestamp": self.timestamp},
            ),
        ]
        try:
            for path, content in files:
                written.append(save(content, path))
            diff = get_git_diff()
            if diff is not None:
                path = os.path.join(self.metadata_dir, "git.diff")
                with open(path, "w") as file:
                    file.write(diff)
                written.append(path)
        except (OSError, yaml.YAMLError) as error:
            warnings.warn(f"failed to write run metadata in {self.dir!r}: {error}", RuntimeWarning, stacklevel=2)
        return written

    def close(self) -> None:
        """Flush and detach the log handlers and give ``print`` back; safe to call more than once."""
        if self.logger is not None:
            for handler in list(self.logger.handlers):
                handler.flush()
                handler.close()
                self.logger.removeHandler(handler)
            self.logger = None
        if self.print_router is not None:
            self.print_router.uninstall()
            self.print_router = None
