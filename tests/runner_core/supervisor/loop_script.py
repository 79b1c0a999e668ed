"""A small training loop driven by ``RunnerSupervisor``; the tests run it as a subprocess and signal it.

Each step has two halves with a sleep between them, so a signal can land mid-step: the saved
state shows whether the step in flight was finished (both halves equal) before the process left.

Usage: ``python loop_script.py WORKSPACE [--steps N] [--step-seconds S] [--heartbeat-interval S]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from danling.runners.supervisor import RunnerSupervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--step-seconds", type=float, default=0.02)
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    args = parser.parse_args(argv)

    heartbeat = None
    if args.heartbeat_interval is not None:
        heartbeat = {"enabled": True, "interval_seconds": args.heartbeat_interval}
    supervisor = RunnerSupervisor(args.workspace, heartbeat=heartbeat, fields={"id": "loop-script"})
    supervisor.init_signal_handlers()
    supervisor.init_heartbeat()
    state = {"step": 0, "first_half": 0, "second_half": 0}

    def save() -> None:
        path = os.path.join(args.workspace, "saved.json")
        with open(path + ".tmp", "w") as file:
            json.dump(state, file)
        os.replace(path + ".tmp", path)

    supervisor.set_status("training")
    print("ready", flush=True)
    while state["step"] < args.steps:
        state["first_half"] += 1
        time.sleep(args.step_seconds)  # a signal landing here must not cut the step short
        state["second_half"] += 1
        state["step"] += 1
        print(f"step {state['step']}", flush=True)
        supervisor.mark_heartbeat_progress(global_step=state["step"])
        if supervisor.maybe_handle_termination_signal(save):
            break
    supervisor.close()
    print(f"exit {state['step']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
