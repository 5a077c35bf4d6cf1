"""The `command` trainer: any argv. Progress and metrics come from structured lines.

A line `@trainyard {json}` is read as a report, never logged:

    @trainyard {"step": 10, "total_steps": 100, "epoch": 1, "metrics": {"loss": 0.42}}
    @trainyard {"checkpoint": "ckpt/step-10", "step": 10}
    @trainyard {"gpu_util": 0}

Every other line is a log line whose level is read from common forms.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, is_not
from pathlib import Path

import msgspec

from agent.output.lines import LevelClassifier, kinds
from agent.trainers.base import Launch, LaunchContext, LaunchError, OutputParser, Sink
from shared.jobspec import CommandJob

PREFIX = "@trainyard "


class Report(msgspec.Struct, forbid_unknown_fields=False, gc=False):  # no cycles: 30 % faster to decode
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    total_epochs: int | None = None
    metrics: dict[str, float] = {}
    checkpoint: str | None = None
    message: str | None = None
    # The GPU utilisation (percent) the trainer reports of itself, e.g. `{"gpu_util": 0}`: a
    # metric like any other, and on simulated GPUs their utilisation (the idle-GPU watchdog).
    gpu_util: float | None = None

    def points(self) -> dict[str, float]:
        if self.gpu_util is None:
            return self.metrics
        return {**self.metrics, "gpu_util": self.gpu_util}


_report_decoder = msgspec.json.Decoder(Report)
_run_decoder = msgspec.json.Decoder(list[Report])
PROGRESS_FIELDS = ("step", "total_steps", "epoch", "total_epochs")
_is_set = partial(is_not, None)  # `value is not None`, callable from C


def decode_report(text: str) -> Report:
    """A report line's JSON. Python's `json` module writes a nan or inf float as `NaN` /
    `Infinity`, which strict JSON (msgspec) refuses: such a report is read again leniently, so
    that a diverged run's points (and its NaN watchdog) are not lost. Raises msgspec.DecodeError
    (or ValidationError) when it is no report."""
    try:
        return _report_decoder.decode(text)
    except msgspec.DecodeError:
        if "NaN" not in text and "Infinity" not in text:
            raise
        try:
            loaded = json.loads(text)
        except ValueError:
            raise msgspec.DecodeError("not JSON") from None
        return msgspec.convert(loaded, Report)


def resolve_executable(name: str, ctx: LaunchContext, path_env: str | None) -> str:
    """argv[0] as the host will run it; a bare `python` falls back to the agent's interpreter."""
    if os.sep in name:
        return name
    found = shutil.which(name, path=path_env)
    if found:
        return found
    if name in ("python", "python3"):
        return ctx.python
    raise LaunchError(f"{name} not found on host {ctx.host}")


class CommandParser:
    def __init__(self) -> None:
        self._classifiers: dict[str, LevelClassifier] = {}

    def poll(self, sink: Sink) -> None:
        """Reports arrive as lines; there are no files to look at."""

    def feed(self, stream: str, lines: list[str], transient: str | None, sink: Sink) -> None:
        if not lines:
            return
        text = "\n".join(lines)
        if not (text.startswith(PREFIX) or "\n" + PREFIX in text):
            self._log(stream, lines, text, sink)
            return
        if text.startswith(PREFIX) and text.count("\n" + PREFIX) == len(lines) - 1:
            self._reports(stream, lines, sink)  # reports only (counted in C)
            return
        # Runs of reports and runs of other lines, in order: the others are logged as they
        # are, a run of reports is read at once (a trainer reporting every step prints little
        # else, and one decode of the run costs a fraction of one per line).
        for reports, same in itertools.groupby(lines, key=lambda line: line.startswith(PREFIX)):
            run = list(same)
            if reports:
                self._reports(stream, run, sink)
            else:
                self._log(stream, run, "\n".join(run), sink)

    def _reports(self, stream: str, lines: list[str], sink: Sink) -> None:
        try:
            reports = _run_decoder.decode("[" + ",".join(line[len(PREFIX):] for line in lines) + "]")
        except msgspec.DecodeError:  # one of them is not a report (or holds a NaN): line by line
            self._each_report(stream, lines, sink)
            return
        # The points of all reports as columns, gathered in C (chain, repeat): a Python loop
        # over 20k reports took as long as decoding them.
        points = [report.points() for report in reports]
        counts = list(map(len, points))
        steps: list[int | None] = list(chain.from_iterable(map(repeat, (r.step for r in reports), counts)))
        epochs: list[float | None] = list(chain.from_iterable(map(repeat, (r.epoch for r in reports), counts)))
        names: list[str] = list(chain.from_iterable(points))
        values: list[float] = list(chain.from_iterable(p.values() for p in points))
        for report in reports:
            if report.checkpoint:
                sink.checkpoint(report.checkpoint, report.step)
            if report.message:
                sink.logs("stdout", [report.message], ["INFO"], ["train"])
        # The latest of each progress field, as reporting them one by one would leave it
        # (looked for in C: a field no report sets is otherwise a Python loop over them all).
        progress = {field: next(filter(_is_set, map(attrgetter(field), reversed(reports))), None)
                    for field in PROGRESS_FIELDS}
        if any(value is not None for value in progress.values()):
            sink.progress(**progress)  # type: ignore[arg-type]
        sink.metric_points(steps, epochs, names, values)

    def _each_report(self, stream: str, lines: list[str], sink: Sink) -> None:
        """Reports one by one; a line that is none is logged as a warning: the user sees what
        was wrong."""
        run_start = 0
        for index, line in enumerate(lines):
            if self._report(line, sink):
                if index > run_start:
                    run = lines[run_start:index]
                    self._log(stream, run, "\n".join(run), sink, undecoded=True)
                run_start = index + 1
        if run_start < len(lines):
            run = lines[run_start:]
            self._log(stream, run, "\n".join(run), sink, undecoded=True)

    def _log(self, stream: str, lines: list[str], text: str, sink: Sink, undecoded: bool = False) -> None:
        classifier = self._classifiers.get(stream)
        if classifier is None:
            classifier = self._classifiers[stream] = LevelClassifier()
        levels = classifier.levels(lines, text)
        if undecoded:  # a report line that did not decode is shown, as a warning
            for index, line in enumerate(lines):
                if line.startswith(PREFIX):
                    levels[index] = "WARNING"
        sink.logs(stream, lines, levels, kinds(lines, text))

    @staticmethod
    def _report(line: str, sink: Sink) -> bool:
        try:
            report = decode_report(line[len(PREFIX) :])
        except msgspec.DecodeError:
            return False  # logged as a warning line instead: the user sees what was wrong
        if report.step is not None or report.total_steps is not None or report.epoch is not None:
            sink.progress(
                step=report.step,
                total_steps=report.total_steps,
                epoch=report.epoch,
                total_epochs=report.total_epochs,
            )
        sink.metrics(report.step, report.epoch, report.points())
        if report.checkpoint:
            sink.checkpoint(report.checkpoint, report.step)
        if report.message:
            sink.logs("stdout", [report.message], ["INFO"], ["train"])
        return True


class CommandAdapter:
    name = "command"

    def build_launch(self, spec: CommandJob, ctx: LaunchContext) -> Launch:
        env = dict(spec.env)
        path_env = env.get("PATH", os.environ.get("PATH"))
        argv = [resolve_executable(spec.command[0], ctx, path_env), *spec.command[1:]]
        cwd = Path(spec.cwd) if spec.cwd else ctx.run_dir
        if not cwd.is_dir():
            raise LaunchError(f"working directory {cwd} does not exist on host {ctx.host}")
        return Launch(argv=argv, cwd=cwd, env=env)

    def new_parser(self, spec: CommandJob, ctx: LaunchContext) -> CommandParser:
        return CommandParser()

    def succeeded(self, exit_code: int | None, parser: OutputParser | None) -> tuple[bool, str]:
        if exit_code == 0:
            return True, ""
        return False, f"exited with code {exit_code}"
