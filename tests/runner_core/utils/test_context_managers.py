"""debug: post-mortem on errors, swallowing them afterwards."""

from __future__ import annotations

import pytest

from danling.utils import context_managers, debug


@pytest.fixture
def post_mortems(monkeypatch):
    tracebacks = []
    monkeypatch.setattr(context_managers.pdb, "post_mortem", tracebacks.append)
    return tracebacks


def test_debug_opens_debugger_and_swallows(post_mortems, capsys):
    with debug():
        raise ValueError("boom")
    assert len(post_mortems) == 1 and post_mortems[0] is not None
    assert "ValueError('boom')" in capsys.readouterr().err


def test_debug_disabled_propagates(post_mortems):
    with pytest.raises(ValueError), debug(enable=False):
        raise ValueError("boom")
    assert post_mortems == []


def test_debug_respects_error_and_exclude(post_mortems):
    with pytest.raises(KeyError), debug(error=ValueError):
        raise KeyError("k")
    with pytest.raises(FileNotFoundError), debug(error=OSError, exclude=FileNotFoundError):
        raise FileNotFoundError
    with debug(error=OSError, exclude=FileNotFoundError):
        raise PermissionError
    assert len(post_mortems) == 1


def test_debug_without_error_runs_block(post_mortems):
    results = []
    with debug():
        results.append(1)
    assert results == [1] and post_mortems == []
