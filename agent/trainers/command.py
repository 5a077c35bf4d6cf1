"""The `command` trainer: any argv. Progress and metrics come from structured lines.

A line `@trainyard {json}` is read as a report, never logged:

    @trainyard {"step": 10, "total_steps": 100, "epoch": 1, "metrics": {"loss": 0.42}}
    @trainyard {"checkpoint": "ckpt/step-10", "step": 10}

Every other line is a log line whose level is read from common forms.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import msgspec

from agent.output.lines import LevelClassifier, kinds
from agent.trainers.base import Launch, LaunchContext, LaunchError, OutputParser, Sink
from shared.jobspec import CommandJob

PREFIX = "@trainyard "


class Report(msgspec.Struct, forbid_unknown_fields=False):
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    total_epochs: int | None = None
    metrics: dict[str, float] = {}
    checkpoint: str | None = None
    message: str | None = None


_report_decoder = msgspec.json.Decoder(Report)


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
        # Reports among the lines: log the runs between them, in order.
        run_start = 0
        for index, line in enumerate(lines):
            if line.startswith(PREFIX) and self._report(line, sink):
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
        sink.metrics(report.step, report.epoch, report.metrics)
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
