"""Progress lines, progress bars and scalar writers."""

from __future__ import annotations

import io
import logging

import torch

from danling.runners.reporting import LoopProgress, format_result, format_step_line, log_to_files, write_scalars


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


def test_write_scalars_to_a_writer_and_wandb():
    class Recorder:
        def __init__(self):
            self.calls = []

        def add_scalar(self, *args):
            self.calls.append(args)

        def log(self, values, step):
            self.calls.append((values, step))

    writer, run = Recorder(), Recorder()
    write_scalars(writer, run, {"loss": 1.0, "metrics": {"acc": 0.5}}, "train", 7)
    assert writer.calls == [("train/loss", 1.0, 7), ("train/metrics/acc", 0.5, 7)]
    assert run.calls == [({"train/loss": 1.0, "train/metrics/acc": 0.5}, 7)]
