"""The output parser for Trainer-based jobs (`hf` and `swift`).

Per-step dicts become metric points (their lines stay in the log as well), the training bar
becomes progress (never log lines), `checkpoint-N` directories become checkpoint events.

Which step a metric belongs to: for an `hf` job the Trainer says it itself, through the hook the
agent puts on the trainer's PYTHONPATH (agent/trainers/hf_hook): `@trainyard-hf` lines carry
`state.global_step`, however `logging_steps` was set. ms-swift says it too (`global_step/
max_steps`). Without either (a script that bypasses the hook), a dict is the next multiple of
`--logging_steps` (or the bar's step rounded up, after a resume), else the bar's current step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.output.lines import LevelClassifier, kinds
from agent.trainers.base import Sink
from agent.trainers.parsing.trainer_output import (
    Bar,
    global_step_of,
    is_eval,
    is_eval_bar,
    metrics_of,
    number,
    parse_bar,
    parse_log_dict,
)

HOOK_PREFIX = "@trainyard-hf "
_CHECKPOINT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
_SAVING_RE = re.compile(r"Saving model checkpoint to (\S+)")


class TrainerParser:
    def __init__(self, checkpoint_roots: list[Path], logging_steps: int | None = None) -> None:
        self.checkpoint_roots = checkpoint_roots
        self.logging_steps = logging_steps
        self.step: int | None = None
        self.total: int | None = None
        self.epoch: float | None = None
        self._last_dict_step: int | None = None
        self._bar_total: int | None = None
        self._seen_checkpoints: set[str] = set()
        self._classifiers: dict[str, LevelClassifier] = {}
        # The hook in the trainer's interpreter reports each log with the Trainer's own step
        # (agent/trainers/hf_hook/sitecustomize.py); once one report came, printed dicts are
        # log lines only.
        self.hooked = False

    # ---- lines ------------------------------------------------------------------------------
    def feed(self, stream: str, lines: list[str], transient: str | None, sink: Sink) -> None:
        keep: list[str] = []
        for line in lines:
            if not line.strip():
                continue  # tqdm clears its bar with a line of spaces
            if line.startswith(HOOK_PREFIX) and self._hooked(line, sink):
                continue  # the Trainer's own report (agent/trainers/hf_hook): not a log line
            bar = parse_bar(line) if "%|" in line else None
            if bar is not None:
                self._bar(bar, sink)
                continue  # a finished bar: progress, not a log line
            if line.startswith("{'"):
                logged = parse_log_dict(line)
                if logged is not None and not self.hooked:  # hooked: the report said it already
                    self._logged(logged, sink)
            elif "Saving model checkpoint to" in line:
                m = _SAVING_RE.search(line)
                if m:
                    self._checkpoint(Path(m.group(1)), sink)
            keep.append(line)
        if transient and "%|" in transient:
            bar = parse_bar(transient)
            if bar is not None:
                self._bar(bar, sink)
        if keep:
            classifier = self._classifiers.setdefault(stream, LevelClassifier())
            text = "\n".join(keep)
            sink.logs(stream, keep, classifier.levels(keep, text), kinds(keep, text))

    def _bar(self, bar: Bar, sink: Sink) -> None:
        if is_eval_bar(bar):
            return
        if self._bar_total is None:
            self._bar_total = bar.total
        elif bar.total != self._bar_total:
            return  # plain transformers' eval bar has no description: told apart by its total
        self.step, self.total = bar.n, bar.total
        eta = bar.remaining_s
        sink.progress(step=bar.n, total_steps=bar.total, epoch=self.epoch,
                      rate_steps_s=bar.rate_steps_s, eta_s=eta)

    def _logged(self, logged: dict[str, object], sink: Sink) -> None:
        epoch = number(logged.get("epoch"))
        if epoch is not None:
            self.epoch = epoch
        exact = global_step_of(logged)
        step: int | None
        if exact is not None:
            step, self.total = exact
            self.step = step
        else:
            step = self._step_of_plain_dict(logged)
        metrics = metrics_of(logged)
        if metrics:
            sink.metrics(step, epoch, metrics)
        if exact is not None:
            sink.progress(step=exact[0], total_steps=exact[1], epoch=epoch)

    def _hooked(self, line: str, sink: Sink) -> bool:
        """A report of the hook in the trainer's interpreter: the Trainer's own step for its
        logged metrics, or a checkpoint it saved. False if it does not decode (then logged)."""
        try:
            report = json.loads(line[len(HOOK_PREFIX):])
        except ValueError:
            return False
        if not isinstance(report, dict):
            return False
        self.hooked = True
        step, total, epoch = report.get("step"), report.get("total_steps"), number(report.get("epoch"))
        if isinstance(report.get("checkpoint"), str):
            self._checkpoint(Path(report["checkpoint"]), sink)
            return True
        if epoch is not None:
            self.epoch = epoch
        logged = report.get("metrics")
        metrics = metrics_of(logged) if isinstance(logged, dict) else {}  # as for a printed dict
        if metrics:
            sink.metrics(step if isinstance(step, int) else None, epoch, metrics)
        if isinstance(step, int):
            self.step = step
            self.total = total if isinstance(total, int) else self.total
            sink.progress(step=step, total_steps=self.total, epoch=self.epoch)
        return True

    def _step_of_plain_dict(self, logged: dict[str, object]) -> int | None:
        """The step of a plain Trainer's dict. The dict is printed when a multiple of
        `logging_steps` completes; the bar (redrawn at most every 0.1 s, on another stream) is
        never ahead of it but may lag. So: the next multiple after the last dict's step, or the
        bar's step rounded up to a multiple when that is further (a resumed run)."""
        if is_eval(logged) or "train_runtime" in logged:
            return self.step if self._last_dict_step is None else max(self.step or 0, self._last_dict_step)
        every = self.logging_steps
        if not every:
            return self.step
        bar = self.step or 0
        rounded_bar = bar + (every - bar % every) % every
        step = max((self._last_dict_step or 0) + every, rounded_bar)
        if self.total:
            step = min(step, self.total)
        self._last_dict_step = step
        return step

    # ---- checkpoints -------------------------------------------------------------------------
    def poll(self, sink: Sink) -> None:
        """Called about once a second and at exit: report new `checkpoint-N` directories."""
        for root in self.checkpoint_roots:
            try:
                entries = list(root.iterdir())
            except OSError:
                continue
            for entry in sorted(entries):
                if _CHECKPOINT_DIR_RE.match(entry.name) and entry.is_dir():
                    self._checkpoint(entry.absolute(), sink)

    def _checkpoint(self, path: Path, sink: Sink) -> None:
        if not path.is_absolute():
            return  # relative to the trainer's cwd: `poll` finds it
        key = str(path)
        if key in self._seen_checkpoints:
            return
        m = _CHECKPOINT_DIR_RE.match(path.name)
        if m is None:
            return
        self._seen_checkpoints.add(key)
        sink.checkpoint(key, int(m.group(1)))

