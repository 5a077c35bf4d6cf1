"""The `command` trainer's `@trainyard` reports, read a run at a time (issue 17)."""

from __future__ import annotations

import math

from agent.trainers.command import CommandParser


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.points: list[tuple[int | None, float | None, str, float]] = []
        self.progress_calls: list[dict] = []
        self.checkpoints: list[tuple[str, int | None]] = []

    def logs(self, stream, texts, levels, kinds) -> None:
        self.lines += list(zip(texts, levels, strict=True))

    def metrics(self, step, epoch, values) -> None:
        self.points += [(step, epoch, name, value) for name, value in values.items()]

    def metric_points(self, steps, epochs, names, values) -> None:
        self.points += list(zip(steps, epochs, names, values, strict=True))

    def progress(self, **kw) -> None:
        self.progress_calls.append(kw)

    def checkpoint(self, path, step) -> None:
        self.checkpoints.append((path, step))


def test_a_run_of_reports_gives_every_point_the_latest_progress_and_its_checkpoints() -> None:
    sink = Sink()
    CommandParser().feed("stdout", [
        "loading",
        '@trainyard {"step": 1, "total_steps": 3, "metrics": {"loss": 0.5, "lr": 0.1}}',
        '@trainyard {"step": 2, "epoch": 0.5, "metrics": {"loss": 0.25}, "checkpoint": "ckpt/2"}',
        '@trainyard {"step": 3, "message": "halfway"}',
        "done",
    ], None, sink)
    assert sink.points == [(1, None, "loss", 0.5), (1, None, "lr", 0.1), (2, 0.5, "loss", 0.25)]
    assert sink.progress_calls == [{"step": 3, "total_steps": 3, "epoch": 0.5, "total_epochs": None}]
    assert sink.checkpoints == [("ckpt/2", 2)]
    assert sink.lines == [("loading", "INFO"), ("halfway", "INFO"), ("done", "INFO")]  # in order; reports unlogged


def test_a_run_holding_a_bad_report_is_read_line_by_line_and_the_bad_one_shown() -> None:
    sink = Sink()
    CommandParser().feed("stdout", [
        '@trainyard {"step": 1, "metrics": {"loss": 0.5}}',
        '@trainyard {"step": oops}',
        '@trainyard {"step": 2, "metrics": {"loss": NaN}}',
    ], None, sink)
    assert [(s, n) for s, _, n, _ in sink.points] == [(1, "loss"), (2, "loss")]
    assert math.isnan(sink.points[1][3])  # Python json's NaN is read, not lost
    assert sink.lines == [('@trainyard {"step": oops}', "WARNING")]
    assert [c["step"] for c in sink.progress_calls] == [1, 2]


def test_a_top_level_gpu_util_is_a_point_too() -> None:
    sink = Sink()
    CommandParser().feed("stdout", ['@trainyard {"gpu_util": 3}', '@trainyard {"step": 1, "gpu_util": 80}'], None, sink)
    assert sink.points == [(None, None, "gpu_util", 3.0), (1, None, "gpu_util", 80.0)]
