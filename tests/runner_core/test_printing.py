"""PrintRouter routes prints by rank and into the logger; ColorFormatter colours levels."""

from __future__ import annotations

import builtins
import io
import logging
import sys

import pytest

from danling.runners.printing import ColorFormatter, PrintRouter, supports_color


@pytest.fixture(autouse=True)
def restore_print():
    original = builtins.print
    yield
    builtins.print = original


def _logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.printing.{name}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s|%(message)s"))
    logger.addHandler(handler)
    return logger, stream


def test_other_ranks_are_silent_unless_forced(monkeypatch, capsys):
    router = PrintRouter(process=0).install()
    monkeypatch.setenv("RANK", "1")
    print("hidden")
    print("forced", force=True)
    monkeypatch.setenv("RANK", "0")
    print("shown", 1, sep="-")
    router.uninstall()
    assert capsys.readouterr().out == "forced\nshown-1\n"


def test_prints_go_to_the_logger_but_files_stay_files(capsys):
    logger, stream = _logger("route")
    router = PrintRouter(logger=logger).install()
    print("epoch", 1, "done", end="!\n")
    print("to stderr", file=sys.stderr)
    buffer = io.StringIO()
    print("to a file", file=buffer)
    router.uninstall()
    assert stream.getvalue() == "INFO|epoch 1 done!\n"
    assert buffer.getvalue() == "to a file\n"
    assert capsys.readouterr().err == "to stderr\n"


def test_install_is_idempotent_and_uninstall_restores():
    original = builtins.print
    router = PrintRouter()
    router.install().install()
    assert builtins.print is router and router.previous is original
    router.uninstall()
    assert builtins.print is original


@pytest.mark.parametrize("close_order", [("outer", "inner"), ("inner", "outer")])
def test_nested_routers_restore_the_original_in_any_order(close_order, capsys):
    original = builtins.print
    routers = {"outer": PrintRouter().install(), "inner": PrintRouter().install()}
    routers[close_order[0]].uninstall()
    print("still printing")
    routers[close_order[1]].uninstall()
    assert builtins.print is original
    assert capsys.readouterr().out == "still printing\n"


def test_uninstalled_router_held_by_reference_forwards(capsys):
    router = PrintRouter().install()
    held = builtins.print
    router.uninstall()
    held("late call")
    assert capsys.readouterr().out == "late call\n"


def test_color_formatter_and_terminal_detection(monkeypatch):
    record = logging.LogRecord("run", logging.ERROR, __file__, 1, "failed %s", ("twice",), None)
    line = ColorFormatter().format(record)
    assert "\033[31m[ERROR]\033[0m failed twice" in line

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert supports_color(Terminal()) and not supports_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not supports_color(Terminal())
