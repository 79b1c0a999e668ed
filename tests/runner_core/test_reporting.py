"""Progress lines, progress bars and scalar writers."""

from __future__ import annotations

import io
import logging

import torch

from danling.runners.reporting import LoopProgress, format_result, format_step_line, log_to_files, log_to_wandb


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_handles_tensors_ints_and_nested_results():
    text = format_result(
        {"loss": torch.tensor(0.5), "count": 3, "val": {"acc": 1.0}, "vector": torch.tensor([1.0, 2.0])}
    )
    assert text == "loss: 0.5000\tcount: 3\tvector: [1.0, 2.0]\nval: acc: 1.0000"
    assert format_step_line("evaluate", "val", 1, 4, {"loss": 1.0}) == "evaluating on val [1/4]\tloss: 1.0000"
    assert format_step_line("other", "val", 1, 4, {}).startswith("running in other on val [1/4]")


def test_progress_bar_shows_postfix_and_sends_lines_to_files_only():
    stream, lines = Terminal(), []
    progress = LoopProgress(
        "train", total=4, interval=2, emit=lambda line, console: lines.append((line, console)), stream=stream, start=1
    )
    progress.advance()
    progress.report("line at 2", {"loss": 0.123456})
    progress.bar.refresh()
    progress.close()
    assert lines == [("line at 2", False)]
    assert "loss: 0.1235" in stream.getvalue() and "2/4" in stream.getvalue()


def test_log_to_files_skips_console_handlers(tmp_path):
    logger = logging.getLogger("danling.test.reporting")
    console, path = io.StringIO(), tmp_path / "run.log"
    logger.addHandler(logging.StreamHandler(console))
    file_handler = logging.FileHandler(path)
    logger.addHandler(file_handler)
    try:
        log_to_files(logger, "only in the file")
        file_handler.flush()
        assert console.getvalue() == "" and "only in the file" in path.read_text()
    finally:
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)


def test_wandb_logs_each_split_against_its_own_axis():
    class Recorder:
        def __init__(self):
            self.calls = []

        def define_metric(self, name, **options):
            self.calls.append(("define", name, options))

        def log(self, values):
            self.calls.append(("log", values))

    run, known = Recorder(), set()
    log_to_wandb(run, "train", {"loss": 1.0}, 7, known)
    log_to_wandb(run, "val", {"loss": 2.0}, 1, known)  # an epoch number, below the step already logged
    log_to_wandb(run, "train", {"loss": 0.5}, 8, known)
    assert run.calls == [
        ("define", "train/step", {}),
        ("define", "train/*", {"step_metric": "train/step"}),
        ("log", {"train/step": 7, "train/loss": 1.0}),
        ("define", "val/step", {}),
        ("define", "val/*", {"step_metric": "val/step"}),
        ("log", {"val/step": 1, "val/loss": 2.0}),
        ("log", {"train/step": 8, "train/loss": 0.5}),
    ]
