"""The adapters' Sink for one attempt: parsed output becomes naturally batched log and metric
events, the latest progress and checkpoints; a replay after a restart is skipped, and the log
is capped per attempt."""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec
from nats.js import JetStreamContext

from agent.attempt.state import Published, RunState
from agent.attempt.watchdog import Watchdog
from agent.metrics import COUNTS
from agent.publisher import ColumnBatcher, LatestSlot, publish
from shared import events as ev
from shared.clock import now_s

LAST_LINES = 30
# What a progress report without them keeps from the earlier ones.
KEPT_PROGRESS = ("step", "total_steps", "epoch", "total_epochs")


class ProgressReading(NamedTuple):
    """What a parser said about progress (rate and ETA only if the trainer printed them), and
    when: kept until the slot ships it."""

    mono_s: float
    ts_s: float
    progress: ev.Progress


class Reporter:
    """The adapters' Sink: turns parsed output into batched events for this attempt."""

    def __init__(self, js: JetStreamContext, job_id: str, attempt: int, max_bytes: int,
                 host: str, log_cap_bytes: int = 0, *, published: Published | None = None,
                 resumed: RunState | None = None) -> None:
        self.job_id, self.attempt = job_id, attempt
        self.host = host
        self.log_cap_bytes = log_cap_bytes  # 0: no cap
        published = published or Published()
        # Rows handed to the log batcher per stream, counting those a replay skips.
        self.rows: dict[str, int] = dict(resumed.rows) if resumed else {}
        # A re-adopting agent re-reads output the old one had published: so many rows to skip.
        self.skip = {stream: n - self.rows.get(stream, 0) for stream, n in published.rows.items()
                     if stream != "system" and n > self.rows.get(stream, 0)}
        self.acked_rows: dict[str, int] = dict(published.rows)
        self._built_rows: dict[str, int] = dict(published.rows)
        self.feeding = ""  # the stream being parsed: its metrics are dropped while it replays
        self.logged_bytes = resumed.logged_bytes if resumed else 0
        self.truncated = bool(log_cap_bytes) and self.logged_bytes >= log_cap_bytes
        self.shipped_checkpoints: set[str] = set(resumed.checkpoints) if resumed else set()
        self._notes: set[asyncio.Task[int]] = set()
        self.log_batcher = ColumnBatcher(
            js,
            host,
            ("ts", "stream", "level", "kind", "text"),
            self._log_batch,
            max_bytes,
            first_seq=published.log_end,
            on_ack=self._log_acked,
        )
        self.metric_batcher = ColumnBatcher(
            js,
            host,
            ("step", "epoch", "name", "value", "ts"),
            lambda first, c: ev.MetricsRecorded.of_points(
                job_id=job_id, attempt=attempt, ts_s=now_s(), first_seq=first,
                step=c["step"], epoch=c["epoch"], name=c["name"], value=c["value"],
                point_ts_s=c["ts"],
            ),
            max_bytes,
            first_seq=published.metric_end,
        )
        self.progress_slot: LatestSlot[ProgressReading] = LatestSlot(js, host, self._progress_event)
        self._js = js
        self._checkpoints: list[ev.CheckpointSaved] = []
        self.last_checkpoint: str | None = None
        self._checkpoint_wake = asyncio.Event()
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._rate_anchor: tuple[float, int] | None = None
        self._known = ev.Progress()  # everything reported so far, merged (progress())
        self.watch: Watchdog | None = None  # sees every line, step and metric point (not replays)

    def _log_batch(self, first: int, c: dict[str, list]) -> ev.LogBatch:
        batch = ev.LogBatch.of_lines(
            job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), first_seq=first,
            line_ts_s=c["ts"], stream=c["stream"], level=c["level"], kind=c["kind"], text=c["text"])
        # Rows per stream up to the end of this batch, counted from its runs: it carries them,
        # so that a restarted agent learns from the last batch what each stream holds.
        for stream, n in batch.stream:
            self._built_rows[stream] = self._built_rows.get(stream, 0) + n
        batch.stream_rows = dict(self._built_rows)
        return batch

    def _log_acked(self, batch: ev.LogBatch) -> None:
        self.acked_rows = batch.stream_rows

    # ---- Sink ------------------------------------------------------------------------------
    def logs(self, stream: str, texts: list[str], levels: list[str], kinds: list[str]) -> None:
        self.last_lines.extend(texts[-LAST_LINES:])
        if skip := self.skip.get(stream, 0):
            skipped = min(skip, len(texts))
            self.skip[stream] = skip - skipped
            self.rows[stream] = self.rows.get(stream, 0) + skipped
            if skipped == len(texts):
                return
            texts, levels, kinds = texts[skipped:], levels[skipped:], kinds[skipped:]
        if stream != "system" and self.watch is not None:
            self.watch.output()
        if self.truncated and stream != "system":
            return
        cut = False
        if self.log_cap_bytes and stream != "system":
            room = self.log_cap_bytes - self.logged_bytes
            self.logged_bytes += sum(map(len, texts))
            if self.logged_bytes > self.log_cap_bytes:  # keep the lines that still fit
                fits = bisect.bisect_right(list(itertools.accumulate(map(len, texts))), room)
                texts, levels, kinds, cut = texts[:fits], levels[:fits], kinds[:fits], True
        n = len(texts)
        if stream != "system":
            COUNTS.lines_read += n
        self.rows[stream] = self.rows.get(stream, 0) + n
        ts = now_s()
        self.log_batcher.extend(map(len, texts), ([ts] * n, [stream] * n, levels, kinds, texts))
        if cut:
            self._truncate()

    def _truncate(self) -> None:
        """Past the per-attempt log cap: say so once (a log line and an event), keep only the
        output files on the host; metrics and progress keep flowing."""
        self.truncated = True
        detail = (f"log cut at {self.log_cap_bytes:,} bytes (agent setting max_log_bytes_per_attempt); "
                  "the rest is only in stdout.log / stderr.log in the run dir")
        self.system(detail, "WARNING")
        self.note(ev.AgentNote(job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), host=self.host,
                               what="log_truncated", detail=detail), unique="log_truncated")

    def note(self, event: ev.JobEvent, unique: str) -> None:
        """Publish an event of this attempt from synchronous code; its end waits for it
        (`drained`), so it comes before the attempt's exit in the stream."""
        task = asyncio.create_task(publish(self._js, event, host=self.host, unique=unique))
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    def system(self, text: str, level: str = "INFO") -> None:
        # A message of several lines (an error's text) is several log lines, as a trainer's is.
        lines = f"trainyard: {text}".split("\n")
        self.logs("system", lines, [level] * len(lines), ["system"] * len(lines))

    def metrics(self, step: int | None, epoch: float | None, values: Mapping[str, float]) -> None:
        if n := len(values):
            self.metric_points([step] * n, [epoch] * n, list(values), [float(v) for v in values.values()])

    def metric_points(self, steps: list[int | None], epochs: list[float | None], names: list[str],
                      values: list[float]) -> None:
        n = len(names)
        if n and not self.skip.get(self.feeding):
            COUNTS.metric_points += n
            if self.watch is not None:
                self.watch.metric_points(steps, epochs, names, values)
            self.metric_batcher.extend(map(len, names), (steps, epochs, names, values, [now_s()] * n))

    def progress(self, **reading: Any) -> None:
        """Sink.progress: its keywords are ev.Progress's fields (percent is derived here). A
        report with fewer fields (a checkpoint line's step, an epoch-only or a metrics-only
        line) keeps what earlier ones said: totals, step and epoch are never wiped."""
        fresh = ev.Progress(**reading)
        if self.watch is not None:
            self.watch.progress(fresh.step)
        missing = {name: getattr(self._known, name) for name in KEPT_PROGRESS if getattr(fresh, name) is None}
        self._known = msgspec.structs.replace(fresh, **missing) if missing else fresh
        self.progress_slot.set(ProgressReading(time.monotonic(), now_s(), self._known))

    def progress_complete(self) -> None:
        """The run succeeded: 100 %, at the total where one is known, no time left."""
        known = self._known
        if known.step is None and known.epoch is None:
            return  # it never reported progress
        done = msgspec.structs.replace(known, step=known.total_steps or known.step, percent=100.0,
                                       epoch=float(known.total_epochs) if known.total_epochs else known.epoch,
                                       eta_s=0.0, rate_steps_s=None)
        self.progress_slot.set(ProgressReading(time.monotonic(), now_s(), done))

    def _progress_event(self, r: ProgressReading) -> ev.JobProgress:
        """Rate and ETA as the trainer printed them, else from the first step seen (reset if the
        step goes back, e.g. a resume) and marked estimated."""
        p = r.progress
        rate = eta = None
        percent = p.percent  # set only for a completed run
        estimated = p.estimated
        if percent is None and p.step is not None and p.total_steps:
            percent = min(100.0, 100.0 * p.step / p.total_steps)
        if p.rate_steps_s is not None or p.eta_s is not None or p.percent is not None:
            rate, eta = p.rate_steps_s, p.eta_s
        elif p.step is not None:
            if self._rate_anchor is None or p.step < self._rate_anchor[1]:
                self._rate_anchor = (r.mono_s, p.step)
            t0, s0 = self._rate_anchor
            if r.mono_s > t0 and p.step > s0:
                rate = (p.step - s0) / (r.mono_s - t0)
            if p.total_steps and rate:
                eta = max(0.0, (p.total_steps - p.step) / rate)
                estimated = True
        shipped = msgspec.structs.replace(p, percent=percent, rate_steps_s=rate, eta_s=eta, estimated=estimated)
        return ev.JobProgress.of(self.job_id, self.attempt, r.ts_s, shipped)

    def checkpoint(self, path: str, step: int | None) -> None:
        self.last_checkpoint = path  # the exit carries it: a preempted job resumes from it
        if path in self.shipped_checkpoints or any(c.path == path for c in self._checkpoints):
            return  # a re-adopting agent finds the same directories again
        self._checkpoints.append(
            ev.CheckpointSaved(job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), path=path, step=step)
        )
        self._checkpoint_wake.set()

    # ---- shipping ----------------------------------------------------------------------------
    async def ship_checkpoints(self) -> None:
        while True:
            await self._checkpoint_wake.wait()
            self._checkpoint_wake.clear()
            while self._checkpoints:
                event = self._checkpoints[0]
                await publish(self._js, event, host=self.host, unique=event.path)
                self.shipped_checkpoints.add(event.path)
                self._checkpoints.pop(0)

    async def drained(self) -> None:
        if self._notes:
            await asyncio.gather(*self._notes)
        await self.log_batcher.drained()
        await self.metric_batcher.drained()
        await self.progress_slot.drained()
        while self._checkpoints:
            await asyncio.sleep(0.01)
