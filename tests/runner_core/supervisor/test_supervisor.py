"""``RunnerSupervisor`` in this process: handler chaining and restoring, escalation, gc pacing, errors."""

from __future__ import annotations

import gc
import os
import signal
import time

import pytest

from danling.runners.supervisor import RunnerSupervisor


@pytest.fixture
def restore_sigterm():
    """Whatever a test does to the SIGTERM/SIGINT handlers, put the originals back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # the handler runs in the main thread at its next check; give it one


def test_sigterm_sets_a_flag_chains_to_the_previous_handler_and_is_restored(tmp_path, restore_sigterm):
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    signal.signal(signal.SIGTERM, previous)
    supervisor = RunnerSupervisor(tmp_path)
    assert supervisor.init_signal_handlers() is True
    assert supervisor.init_signal_handlers() is False  # installing twice is a no-op
    assert not supervisor.should_stop()
    _deliver(signal.SIGTERM)
    assert supervisor.received_signal == signal.SIGTERM and calls == [signal.SIGTERM]
    assert supervisor.should_stop() and supervisor.should_stop()
    _deliver(signal.SIGTERM)  # schedulers repeat SIGTERM: no escalation, the save carries on
    assert supervisor.signal_count == 2
    supervisor.close()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigint_only_when_configured_and_a_second_one_exits_at_once(tmp_path, restore_sigterm):
    # Python's own handler, whatever the launcher left (a shell's background job starts with SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    plain = RunnerSupervisor(tmp_path)
    plain.init_signal_handlers()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    plain.close()

    supervisor = RunnerSupervisor(tmp_path, signals=("SIGTERM", "int"))
    supervisor.init_signal_handlers()
    _deliver(signal.SIGINT)  # no KeyboardInterrupt: the default handler is not chained
    assert supervisor.maybe_handle_termination_signal() is True
    with pytest.raises(SystemExit) as exit_info:
        _deliver(signal.SIGINT)
    assert exit_info.value.code == 128 + signal.SIGINT
    supervisor.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("order", ["first-in-first-out", "last-in-first-out"])
def test_nested_supervisors_closed_in_any_order_restore_the_original_handler(tmp_path, restore_sigterm, order):
    original = signal.getsignal(signal.SIGTERM)
    outer, inner = RunnerSupervisor(tmp_path), RunnerSupervisor(tmp_path)
    outer.init_signal_handlers()
    inner.init_signal_handlers()
    _deliver(signal.SIGTERM)
    assert outer.received_signal == inner.received_signal == signal.SIGTERM  # inner chains to outer
    for supervisor in (outer, inner) if order == "first-in-first-out" else (inner, outer):
        supervisor.close()
    assert signal.getsignal(signal.SIGTERM) == original


def test_maybe_handle_termination_signal_saves_once_and_reports_through_the_heartbeat(tmp_path, restore_sigterm):
    saves = []
    supervisor = RunnerSupervisor(tmp_path, heartbeat={"enabled": True, "interval_seconds": 60})
    supervisor.init_signal_handlers()
    supervisor.init_heartbeat()
    assert supervisor.maybe_handle_termination_signal(lambda: saves.append("save")) is False
    _deliver(signal.SIGTERM)
    statuses = []
    assert supervisor.maybe_handle_termination_signal(lambda: statuses.append(supervisor._heartbeat.status)) is True
    assert statuses == ["saving"] and supervisor._heartbeat.status == "stopping"
    supervisor.close()
    assert saves == []


def test_gc_pacing_collects_only_at_the_configured_steps(tmp_path):
    assert gc.isenabled()
    collections = []
    step = 0

    def record(phase, info):
        if phase == "start":
            collections.append((step, info["generation"]))

    gc.callbacks.append(record)
    try:
        supervisor = RunnerSupervisor(tmp_path, gc={"interval": 3, "generation": 1})
        assert supervisor.init_garbage_collection()
        assert not gc.isenabled()
        for step in range(1, 11):
            for _ in range(3000):  # cyclic garbage: enough to trigger Python's automatic collector many times
                cycle = []
                cycle.append(cycle)
            collected = supervisor.maybe_collect_garbage(step)
            assert collected == (step % 3 == 0)
            assert not supervisor.maybe_collect_garbage(step)  # a step collects once
        assert supervisor.maybe_collect_garbage(3, scope="evaluate:val")  # scopes count separately
        supervisor.close()
    finally:
        gc.callbacks.remove(record)
    assert collections == [(0, 1), (3, 1), (6, 1), (9, 1), (10, 1)]
    assert gc.isenabled()


def test_gc_left_alone_without_an_interval_or_when_automatic_collection_stays_on(tmp_path):
    supervisor = RunnerSupervisor(tmp_path)
    assert not supervisor.init_garbage_collection() and gc.isenabled()
    assert not supervisor.maybe_collect_garbage(5)
    keep_on = RunnerSupervisor(tmp_path, gc={"interval": 2, "disable_automatic": False})
    assert keep_on.init_garbage_collection() and gc.isenabled()
    assert keep_on.maybe_collect_garbage(2)
    keep_on.close()
    gc.disable()  # a user who turned automatic collection off keeps it off
    try:
        paced = RunnerSupervisor(tmp_path, gc={"interval": 2})
        paced.init_garbage_collection()
        paced.close()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_bad_settings_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="unknown signal 'SIGNOPE'"):
        RunnerSupervisor(tmp_path, signals=("SIGNOPE",))
    with pytest.raises(ValueError, match="unknown signal 12345"):
        RunnerSupervisor(tmp_path, signals=(12345,))
    with pytest.raises(ValueError, match=r"gc\.interval must be >= 1, got 0"):
        RunnerSupervisor(tmp_path, gc={"interval": 0})
    with pytest.raises(ValueError, match=r"heartbeat\.interval_seconds must be a positive number, got 0"):
        RunnerSupervisor(tmp_path, heartbeat={"enabled": True, "interval_seconds": 0})
    with pytest.raises(ValueError, match=r"agreement interval must be an integer >= 1 or None \(adaptive\), got 0"):
        RunnerSupervisor(tmp_path, agreement_interval=0)
    with pytest.raises(TypeError, match="gc must be a GcConfig or a mapping, got int"):
        RunnerSupervisor(tmp_path, gc=4)
