"""One attempt of one job on this host: launch it, tail its output, report, stop it.

The trainer writes stdout/stderr to files in its run dir; this tails those files, parses them
through the trainer's adapter and publishes naturally batched logs and metrics, the latest
progress, checkpoints and the lifecycle.

Restarts (DESIGN §5): the run's state file records, per output file, an offset up to which the
file was turned into rows the server has acknowledged. A restarted agent re-adopts the trainer,
asks the stream how many rows of each output the attempt already has (the last log batch says),
re-reads from the recorded offsets and skips exactly those rows: no line lost or doubled.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from agent.process import tree as process
from agent.trainers import LaunchContext, adapter_for
from agent.trainers.base import Launch, LaunchError, OutputParser
from agent.attempt.filewatch import FileWatch
from agent.output.lines import LineSplitter
from agent.publisher import ColumnBatcher, LatestSlot, publish_retrying
from shared import events as ev
from shared import subjects
from shared.aio import cancel_and_wait
from shared.clock import now_s
from shared.commands import StartJob

log = logging.getLogger("trainyard.agent.run")

LAST_LINES = 30
READ_CHUNK = 1 << 20
READ_CHUNKS_AT_ONCE = 8
# Reading the output files: while a trainer is quiet, when it writes (inotify), or where there is
# no inotify every 2 ms backing off to 5 ms. While it keeps printing, every 20 ms: output is
# then taken in chunks, one publish each, which keeps the agent under 10 % of a core at 10k
# lines/s (DESIGN §9); reading faster would mostly buy socket writes.
POLL_MIN_S = 0.002
POLL_MAX_S = 0.005
POLL_BUSY_S = 0.02
# With an inotify watch on the output files an idle trainer's files are read when written to;
# this is only the longest sleep between looks (agent/attempt/filewatch.py).
WATCHED_IDLE_S = 0.25
SNAPSHOT_EVERY_S = 1.0
OUTPUT_STREAMS = ("stdout", "stderr")
# Past this many unacknowledged log bytes (NATS down or slow) the agent stops reading the output
# files: they are the buffer on disk, and reading resumes where it stopped (DESIGN §10: bounded).
BACKLOG_MAX_BYTES = 64 << 20
# After SIGKILL, how long the trainer's processes get to disappear before their GPUs are
# reported held (a process stuck in the kernel survives SIGKILL).
RELEASE_WAIT_S = 10.0


class ProgressReading(NamedTuple):
    """What a parser said about progress, kept until the slot ships it."""

    mono_s: float
    ts_s: float
    step: int | None
    total_steps: int | None
    epoch: float | None
    total_epochs: int | None
    estimated: bool
    rate_steps_s: float | None = None  # as the trainer said; else derived
    eta_s: float | None = None


class RunState(msgspec.Struct, kw_only=True):
    """The agent's state file for one attempt: what a restarted agent needs to re-adopt it.
    Written at spawn, about once a second while output flows, when the trainer ends and once its
    exit is reported."""

    job_id: str
    attempt: int
    pid: int  # the keeper (agent/process/keeper.py), which leads the trainer's process group
    create_time: float
    run_dir: str
    stdout_path: str
    stderr_path: str
    command: StartJob | None = None
    # Per output stream: bytes of the file fully turned into log rows, and how many rows they
    # made, at a point the server had acknowledged them all.
    offsets: dict[str, int] = {}
    rows: dict[str, int] = {}
    logged_bytes: int = 0
    checkpoints: list[str] = []  # reported (acknowledged) checkpoint paths
    returncode: int | None = None  # the trainer's, once reaped
    reported: bool = False  # its end is published: nothing left to adopt
    # A stop was asked for (its command is acknowledged, so never redelivered): a trainer that
    # dies of the signals while no agent watches was stopped, not failed.
    stop_requested: bool = False


class Published(msgspec.Struct, kw_only=True):
    """What the streams already hold of an attempt: where a re-adopting agent picks up."""

    log_end: int = 0  # seq of the next log row
    rows: dict[str, int] = {}  # log rows per output stream ("stdout", "stderr", "system")
    metric_end: int = 0


async def published_so_far(js: JetStreamContext, host: str, job_id: str, attempt: int) -> Published:
    """Ask the streams for the attempt's last log batch and metrics batch (retrying while NATS
    is unreachable: guessing would lose or double lines)."""
    async def last(stream: str, subject: str) -> ev.LogBatch | ev.MetricsRecorded | None:
        delay_s = 0.1
        while True:
            try:
                msg = await js.get_last_msg(stream, subject)
            except NotFoundError:
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading the last message on %s failed (%s); retrying", subject, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
                continue
            event = ev.decode_job_event(msg.data)
            ok = isinstance(event, (ev.LogBatch, ev.MetricsRecorded)) and event.attempt == attempt
            return event if ok else None  # type: ignore[return-value]

    logs = await last(subjects.LOG_STREAM, subjects.job_log(job_id, host))
    metrics = await last(subjects.JOB_STREAM, subjects.job_event(job_id, "metrics", host))
    out = Published()
    if isinstance(logs, ev.LogBatch):
        out.log_end, out.rows = logs.end_seq, dict(logs.stream_rows)
    if isinstance(metrics, ev.MetricsRecorded):
        out.metric_end = metrics.first_seq + len(metrics.name)
    return out


class ResumePoints:
    """Per output stream, points (rows made so far, file offset) where the file had been fully
    turned into rows. The newest point whose rows the server acknowledged is where a restarted
    agent resumes reading; older ones are dropped."""

    def __init__(self, start: dict[str, tuple[int, int]]) -> None:
        self._points = {stream: collections.deque([point]) for stream, point in start.items()}

    def note(self, stream: str, rows: int, offset: int) -> None:
        points = self._points[stream]
        if points[-1] != (rows, offset):
            points.append((rows, offset))

    def safe(self, acked_rows: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        out = {}
        for stream, points in self._points.items():
            limit = acked_rows.get(stream, 0)
            while len(points) > 1 and points[1][0] <= limit:
                points.popleft()
            out[stream] = points[0]
        return out


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
        prefix = f"{job_id}:{attempt}"
        self.log_batcher = ColumnBatcher(
            js,
            subjects.job_log(job_id, host),
            f"{prefix}:log",
            ("ts", "stream", "level", "kind", "text"),
            self._log_batch,
            max_bytes,
            first_seq=published.log_end,
            on_ack=self._log_acked,
        )
        self.metric_batcher = ColumnBatcher(
            js,
            subjects.job_event(job_id, "metrics", host),
            f"{prefix}:metrics",
            ("step", "epoch", "name", "value", "ts"),
            lambda first, c: ev.MetricsRecorded(
                job_id=job_id, attempt=attempt, ts_s=now_s(), first_seq=first,
                step=c["step"], epoch=c["epoch"], name=c["name"], value=c["value"],
                point_ts_s=c["ts"],
            ),
            max_bytes,
            first_seq=published.metric_end,
        )
        self.progress_slot: LatestSlot[ProgressReading] = LatestSlot(
            js, subjects.job_event(job_id, "progress", host), f"{prefix}:progress", self._progress_event
        )
        self._js = js
        self._checkpoints: list[ev.CheckpointSaved] = []
        self._checkpoint_wake = asyncio.Event()
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._rate_anchor: tuple[float, int] | None = None

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
        note = ev.AgentNote(job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), host=self.host,
                            what="log_truncated", detail=detail)
        task = asyncio.create_task(publish_retrying(
            self._js, subjects.job_event(self.job_id, "agent_note", self.host), ev.encode(note),
            f"{self.job_id}:{self.attempt}:log_truncated"))
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    def system(self, text: str, level: str = "INFO") -> None:
        # A message of several lines (an error's text) is several log lines, as a trainer's is.
        lines = f"trainyard: {text}".split("\n")
        self.logs("system", lines, [level] * len(lines), ["system"] * len(lines))

    def metrics(self, step: int | None, epoch: float | None, values: Mapping[str, float]) -> None:
        n = len(values)
        if n and not self.skip.get(self.feeding):
            names = list(values)
            self.metric_batcher.extend(
                map(len, names),
                ([step] * n, [epoch] * n, names, [float(v) for v in values.values()], [now_s()] * n),
            )

    def progress(
        self,
        *,
        step: int | None,
        total_steps: int | None,
        epoch: float | None = None,
        total_epochs: int | None = None,
        estimated: bool = False,
        rate_steps_s: float | None = None,
        eta_s: float | None = None,
    ) -> None:
        self.progress_slot.set(
            ProgressReading(time.monotonic(), now_s(), step, total_steps, epoch, total_epochs,
                            estimated, rate_steps_s, eta_s)
        )

    def _progress_event(self, r: ProgressReading) -> ev.JobProgress:
        """Rate and ETA as the trainer printed them, else from the first step seen (reset if the
        step goes back, e.g. a resume) and marked estimated."""
        rate = eta = percent = None
        estimated = r.estimated
        if r.step is not None and r.total_steps:
            percent = min(100.0, 100.0 * r.step / r.total_steps)
        if r.rate_steps_s is not None or r.eta_s is not None:
            rate, eta = r.rate_steps_s, r.eta_s
        elif r.step is not None:
            if self._rate_anchor is None or r.step < self._rate_anchor[1]:
                self._rate_anchor = (r.mono_s, r.step)
            t0, s0 = self._rate_anchor
            if r.mono_s > t0 and r.step > s0:
                rate = (r.step - s0) / (r.mono_s - t0)
            if r.total_steps and rate:
                eta = max(0.0, (r.total_steps - r.step) / rate)
                estimated = True
        return ev.JobProgress(
            job_id=self.job_id, attempt=self.attempt, ts_s=r.ts_s, step=r.step,
            total_steps=r.total_steps, epoch=r.epoch, total_epochs=r.total_epochs,
            percent=percent, rate_steps_s=rate, eta_s=eta, estimated=estimated,
        )

    def checkpoint(self, path: str, step: int | None) -> None:
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
                await publish_retrying(
                    self._js, subjects.job_event(self.job_id, "checkpoint", self.host), ev.encode(event),
                    f"{self.job_id}:{self.attempt}:checkpoint:{event.path}",
                )
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


class FileTail:
    """Reads what was appended to one output file since the last read."""

    def __init__(self, path: Path, stream: str, max_line_chars: int, offset: int = 0) -> None:
        self.path = path
        self.stream = stream
        self.offset = offset
        self._fd: int | None = None
        self.splitter = LineSplitter(max_line_chars)

    def read(self) -> bytes:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return b""
            os.lseek(self._fd, self.offset, os.SEEK_SET)
        chunks = []
        for _ in range(READ_CHUNKS_AT_ONCE):  # bounded, so that a backlog can stop the reading
            data = os.read(self._fd, READ_CHUNK)
            if not data:
                break
            chunks.append(data)
            if len(data) < READ_CHUNK:
                break
        out = b"".join(chunks)
        self.offset += len(out)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def child_env(launch_env: dict[str, str], ctx: LaunchContext) -> dict[str, str]:
    # The agent's own TRAINYARD_* settings (NATS URL, credentials) are not the trainer's business.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(
        PYTHONUNBUFFERED="1",
        CUDA_VISIBLE_DEVICES=",".join(str(i) for i in ctx.gpu_ids),
        TRAINYARD_JOB_ID=ctx.job_id,
        TRAINYARD_ATTEMPT=str(ctx.attempt),
        TRAINYARD_RUN_DIR=str(ctx.run_dir),
    )
    if ctx.resume_from:
        env["TRAINYARD_RESUME_FROM"] = ctx.resume_from  # for scripts that resume by themselves
    env.update(launch_env)
    return env


class TrainerRun:
    """One attempt: launched here, or re-adopted from its state file after an agent restart."""

    def __init__(
        self,
        js: JetStreamContext,
        host: str,
        command: StartJob,
        run_dir: Path,
        state_path: Path,
        *,
        max_line_bytes: int,
        batch_max_bytes: int,
        python: str = "",
        trainer_options: dict[str, str] | None = None,
        log_cap_bytes: int = 0,
        adopt: RunState | None = None,
        published: Published | None = None,
        spawner: process.Spawner | None = None,
    ) -> None:
        self.js = js
        self.spawner = spawner or process.Spawner()
        self.host = host
        self.job_id = command.job_id
        self.attempt = command.attempt
        self.command = command
        self.run_dir = run_dir
        self.state_path = state_path
        self.max_line_chars = max_line_bytes
        self.adapter = adapter_for(command.spec.trainer)
        self.ctx = LaunchContext(
            host=host, job_id=self.job_id, attempt=self.attempt, run_dir=run_dir,
            gpu_ids=list(command.gpu_ids), python=python or sys.executable, job_dir=run_dir.parent,
            options=dict(trainer_options or {}), resume_from=command.resume_from,
        )
        self.adopted = adopt
        self.reporter = Reporter(js, self.job_id, self.attempt, batch_max_bytes, host, log_cap_bytes,
                                 published=published, resumed=adopt)
        start = {stream: ((adopt.rows.get(stream, 0), adopt.offsets.get(stream, 0)) if adopt else (0, 0))
                 for stream in OUTPUT_STREAMS}
        self.resume_points = ResumePoints(start)
        self.launched = asyncio.Event()  # set once spawned (or adopted) or failed to spawn
        self.finished = asyncio.Event()
        # Set once the trainer and everything it left behind are gone, just before the exit is
        # reported: from then on its GPUs are free here, even while the report is in flight
        # (the scheduler may place the next attempt on them the moment it sees the exit).
        self.released = False
        self.root: process.ProcRef | None = None  # the keeper, leader of the trainer's group
        self.recorded: set[process.ProcRef] = set()
        self.stop_requested = adopt.stop_requested if adopt else False
        self.killed = False  # this agent sent SIGKILL (the keeper may have died before writing)
        self.returncode: int | None = adopt.returncode if adopt else None
        self._saved: RunState | None = adopt
        self._kill_deadline_task: asyncio.Task[None] | None = None
        self._term_task: asyncio.Task[None] | None = None

    def pids(self) -> set[int]:
        """Processes of this run known so far (the keeper, the trainer, recorded descendants)."""
        return {ref.pid for ref in self.recorded}

    def alive(self) -> bool:
        return self.root is not None and not self.finished.is_set() and self.root.is_alive()

    def _event_id(self, kind: str) -> str:
        return f"{self.job_id}:{self.attempt}:{kind}"

    async def _publish(self, event: ev.JobEvent, kind: str) -> int:
        return await publish_retrying(
            self.js, subjects.job_event(self.job_id, kind, self.host), ev.encode(event), self._event_id(kind)
        )

    # ---- the state file --------------------------------------------------------------------
    def _save_state(self, **changes: object) -> None:
        """Write the state file (atomically) if anything in it changed."""
        assert self.root is not None
        safe = self.resume_points.safe(self.reporter.acked_rows)
        state = RunState(
            job_id=self.job_id, attempt=self.attempt, pid=self.root.pid,
            create_time=self.root.create_time, run_dir=str(self.run_dir),
            stdout_path=str(self.run_dir / "stdout.log"), stderr_path=str(self.run_dir / "stderr.log"),
            command=self.command,
            offsets={stream: offset for stream, (_, offset) in safe.items()},
            rows={stream: rows for stream, (rows, _) in safe.items()},
            logged_bytes=self.reporter.logged_bytes,
            checkpoints=sorted(self.reporter.shipped_checkpoints),
            returncode=self.returncode,
            reported=self._saved.reported if self._saved else False,
            stop_requested=self.stop_requested,
        )
        if changes:
            state = msgspec.structs.replace(state, **changes)
        if state == self._saved:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(state))
        os.replace(tmp, self.state_path)
        self._saved = state

    # ---- the life of the attempt -------------------------------------------------------------
    async def run(self) -> None:
        """The whole life of the attempt. Never raises for trainer problems: it reports them."""
        shippers = [
            asyncio.create_task(self.reporter.log_batcher.run(), name=f"{self.job_id}-logs"),
            asyncio.create_task(self.reporter.metric_batcher.run(), name=f"{self.job_id}-metrics"),
            asyncio.create_task(self.reporter.progress_slot.run(), name=f"{self.job_id}-progress"),
            asyncio.create_task(self.reporter.ship_checkpoints(), name=f"{self.job_id}-ckpt"),
        ]
        try:
            await self._run()
        finally:
            await cancel_and_wait(shippers)
            self.launched.set()
            self.finished.set()

    async def _run(self) -> None:
        if self.adopted is not None:
            self._adopt(self.adopted)
            await self._watch()
            return
        try:
            spawned = await self._launch()
        except (LaunchError, OSError) as exc:
            reason = str(exc) if isinstance(exc, LaunchError) else f"could not start: {exc}"
            self.reporter.system(reason, "ERROR")
            await self.reporter.drained()
            await self._publish(
                ev.JobExited(
                    job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), outcome="failed",
                    reason=reason, last_lines=list(self.reporter.last_lines),
                    log_stream_seq=self.reporter.log_batcher.last_stream_seq,
                ),
                "exited",
            )
            return
        if not spawned:
            return
        await self._watch()

    def _adopt(self, state: RunState) -> None:
        self.root = process.ProcRef(state.pid, state.create_time)
        self.recorded = process.descendants(self.root) | {self.root}
        self.launched.set()
        if self.returncode is not None:
            how = "it had ended (its exit status was recorded)"
        elif self.root.is_alive():
            how = f"pid {state.pid} still runs; re-adopted"
        else:
            how = "it ended while no agent watched it"
        where = ", ".join(f"{stream}.log from byte {state.offsets.get(stream, 0):,}" for stream in OUTPUT_STREAMS)
        self.reporter.system(f"agent restarted on host {self.host}: {how}; reading {where}")

    async def _launch(self) -> bool:
        if self.stop_requested:
            await self._report_exit(None, None, "stopped before it started")
            return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ctx = self.ctx
        launch = self.adapter.build_launch(self.command.spec, ctx)
        for path, content in launch.files.items():
            path.write_bytes(content)
        stdout_path, stderr_path = self.run_dir / "stdout.log", self.run_dir / "stderr.log"
        for path in (stdout_path, stderr_path):
            path.touch()  # here before the trainer starts, for the watch on them
        spawning = asyncio.ensure_future(self._spawn_and_record(launch, child_env(launch.env, ctx), stdout_path, stderr_path))
        try:
            await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # The agent is stopping mid-spawn: the trainer may be running already. Its state
            # file is written first, or the next agent, finding none, would start it a second
            # time into the same run dir (the soak caught one, every line doubled).
            await spawning
            raise
        self.launched.set()
        await self._publish(
            ev.JobStarted(
                job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), host=self.host,
                pid=self.root.pid, run_dir=str(self.run_dir), stdout_path=str(stdout_path),
                stderr_path=str(stderr_path),
            ),
            "started",
        )
        self.reporter.system(f"started pid {self.root.pid} on host {self.host}: {' '.join(launch.argv)}")
        return True

    async def _spawn_and_record(self, launch: Launch, env: dict[str, str], stdout_path: Path, stderr_path: Path) -> None:
        self.root = await self.spawner.spawn(launch.argv, launch.cwd, env, stdout_path, stderr_path)
        self.recorded = {self.root}
        self._save_state()

    async def _watch(self) -> None:
        assert self.root is not None
        offsets = self.adopted.offsets if self.adopted else {}
        tails = [
            FileTail(self.run_dir / f"{stream}.log", stream, self.max_line_chars, offsets.get(stream, 0))
            for stream in OUTPUT_STREAMS
        ]
        parser = self.adapter.new_parser(self.command.spec, self.ctx)
        waiter = asyncio.create_task(process.wait_gone(self.root), name=f"{self.job_id}-wait")
        watch = FileWatch.open([tail.path for tail in tails])
        delay = POLL_MIN_S
        next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
        try:
            while True:
                exited = waiter.done()
                if watch is not None:
                    watch.clear()
                got = False
                backlogged = self.reporter.log_batcher.pending_bytes > BACKLOG_MAX_BYTES
                for tail in tails if not backlogged else ():
                    if self._read(tail, parser):
                        got = True
                if exited and not got and not backlogged:
                    for tail in tails:  # an unterminated last line
                        self._feed(tail, parser, *tail.splitter.feed(b"", final=True))
                    break
                if got:
                    delay = POLL_MIN_S
                    await asyncio.wait([waiter], timeout=POLL_BUSY_S)
                elif watch is not None and not backlogged:
                    await watch.wait(waiter, WATCHED_IDLE_S)
                else:
                    await asyncio.wait([waiter], timeout=delay if not backlogged else POLL_BUSY_S)
                    delay = min(delay * 2, POLL_MAX_S)
                if time.monotonic() >= next_snapshot:
                    parser.poll(self.reporter)
                    # Remember descendants now: once the leader dies they are reparented and
                    # can no longer be found from it.
                    self.recorded |= process.descendants(self.root)
                    self._save_state()
                    next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
        finally:
            waiter.cancel()
            if watch is not None:
                watch.close()
            for tail in tails:
                tail.close()
        parser.poll(self.reporter)
        if self.returncode is None:
            self.returncode = process.read_exit_status(self.run_dir)
        if self.returncode is None and self.killed:
            self.returncode = -signal.SIGKILL
        self._save_state()
        await self._release()
        if self.returncode is None:
            await self._report_lost()
            return
        exit_code, sig, words = process.describe_exit(self.returncode)
        await self._report_exit(exit_code, sig, words, parser)

    def _read(self, tail: FileTail, parser: OutputParser) -> bool:
        data = tail.read()
        if not data:
            return False
        self._feed(tail, parser, *tail.splitter.feed(data))
        if tail.splitter.clean:
            self.resume_points.note(tail.stream, self.reporter.rows.get(tail.stream, 0), tail.offset)
        return True

    def _feed(self, tail: FileTail, parser: OutputParser, lines: list[str], transient: str | None) -> None:
        if not lines and not transient:
            return
        self.reporter.feeding = tail.stream
        if self.reporter.skip.get(tail.stream):
            # Replaying what the old agent published: a line at a time, so that the metrics of
            # the first new line are not dropped with the skipped ones.
            for i, line in enumerate(lines):
                if not self.reporter.skip.get(tail.stream):
                    parser.feed(tail.stream, lines[i:], transient, self.reporter)
                    return
                parser.feed(tail.stream, [line], None, self.reporter)
            lines = []
        parser.feed(tail.stream, lines, transient, self.reporter)

    async def _release(self) -> None:
        """Kill whatever the trainer left behind (dataloader workers, ignored SIGTERMs) and
        free its GPUs only once none of its processes is alive (with NVML, the heartbeat also
        shows none of them on a GPU). One that survives SIGKILL (stuck in the kernel) keeps
        its GPUs marked busy here, and the job's history says why."""
        assert self.root is not None
        for task in (self._kill_deadline_task, self._term_task):
            if task is not None:
                task.cancel()
        self.recorded |= process.descendants(self.root)
        process.kill_all(self.root.pid, self.recorded)
        escaped = await asyncio.get_running_loop().run_in_executor(None, process.tagged, self.job_id, self.attempt)
        if escaped - self.recorded:
            self.reporter.system(f"killing processes that left the trainer's session: pids "
                                 f"{', '.join(str(r.pid) for r in sorted(escaped - self.recorded, key=lambda r: r.pid))}",
                                 "WARNING")
            self.recorded |= escaped
            process.kill_all(self.root.pid, escaped)
        deadline = time.monotonic() + RELEASE_WAIT_S
        while (alive := [ref for ref in self.recorded if ref.is_alive()]) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if alive:
            pids = ", ".join(str(ref.pid) for ref in sorted(alive, key=lambda r: r.pid))
            detail = (f"pids {pids} survived SIGKILL for {RELEASE_WAIT_S:g}s; GPUs "
                      f"{', '.join(map(str, self.command.gpu_ids)) or '(none)'} stay marked busy until they are gone")
            self.reporter.system(detail, "ERROR")
            await self._note("gpus_held", detail)
            asyncio.create_task(self._release_when_gone(alive), name=f"{self.job_id}-held")
            return
        self.released = True

    async def _release_when_gone(self, alive: list[process.ProcRef]) -> None:
        while any(ref.is_alive() for ref in alive):
            await asyncio.sleep(1.0)
        self.released = True
        await self._note("gpus_released", "the processes that survived SIGKILL are gone; GPUs free again")

    async def _note(self, what: str, detail: str) -> None:
        await publish_retrying(
            self.js, subjects.job_event(self.job_id, "agent_note", self.host),
            ev.encode(ev.AgentNote(job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), host=self.host,
                                   what=what, detail=detail)),
            f"{self.job_id}:{self.attempt}:{what}",
        )

    async def _report_lost(self) -> None:
        reason = ("its exit status is unknown: the trainer ended while no agent watched it and its "
                  "keeper did not record it")
        self.reporter.system(reason, "ERROR")
        await self.reporter.drained()
        await self._publish(ev.JobLost(job_id=self.job_id, attempt=self.attempt, ts_s=now_s(),
                                       host=self.host, reason=reason), "lost")
        self._save_state(reported=True)

    async def _report_exit(
        self, exit_code: int | None, sig: int | None, words: str, parser: object = None
    ) -> None:
        if self.stop_requested:
            outcome, reason = "stopped", f"stopped on request ({words})"
        else:
            ok, why = self.adapter.succeeded(exit_code, parser)
            outcome, reason = ("succeeded", "") if ok else ("failed", why or words)
            if sig is not None and not ok:
                reason = words
        self.reporter.system(f"{words}; {outcome}", "INFO" if outcome != "failed" else "ERROR")
        if self.root is None:
            self.released = True  # never started
        await self.reporter.drained()
        await self._publish(
            ev.JobExited(
                job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), outcome=outcome,  # type: ignore[arg-type]
                exit_code=exit_code, signal=sig, reason=reason,
                last_lines=list(self.reporter.last_lines) if outcome == "failed" else [],
                log_stream_seq=self.reporter.log_batcher.last_stream_seq,
            ),
            "exited",
        )
        if self.root is not None:
            self._save_state(reported=True)

    def stop(self, force: bool, grace_s: float) -> None:
        """Graceful: the trainer's own way if it has one (diffusion-pipe: a `save_quit` file),
        with SIGTERM to the group after half the grace period; else SIGTERM now. SIGKILL to
        everything recorded after `grace_s`. Force: SIGKILL now. Safe to call again (a force
        after a graceful stop escalates)."""
        self.stop_requested = True
        if not self.alive():
            return
        assert self.root is not None
        self._save_state()  # before any signal: an agent restarted after it knows why it died
        self.recorded |= process.descendants(self.root)
        if force:
            self.reporter.system("force stop: SIGKILL to the process tree", "WARNING")
            self.killed = True
            process.kill_all(self.root.pid, self.recorded)
            return
        own_way = getattr(self.adapter, "request_stop", None)
        done = own_way(self.command.spec, self.ctx) if own_way and self._kill_deadline_task is None else None
        if done:
            self.reporter.system(f"stop: {done}; SIGTERM after {grace_s / 2:g}s, SIGKILL after {grace_s:g}s",
                                 "WARNING")
            self._term_task = asyncio.create_task(self._term_after(grace_s / 2), name=f"{self.job_id}-term")
        else:
            self.reporter.system(f"stop: SIGTERM to the process group, SIGKILL after {grace_s:g}s", "WARNING")
            process.signal_group(self.root.pid, signal.SIGTERM)
        if self._kill_deadline_task is None:
            self._kill_deadline_task = asyncio.create_task(
                self._kill_after(grace_s), name=f"{self.job_id}-kill-deadline"
            )

    async def _term_after(self, delay_s: float) -> None:
        if await self._still_running_after(delay_s, f"still running {delay_s:g}s after its own stop: SIGTERM"):
            process.signal_group(self.root.pid, signal.SIGTERM)  # type: ignore[union-attr]

    async def _kill_after(self, grace_s: float) -> None:
        if await self._still_running_after(grace_s, f"grace period of {grace_s:g}s over: SIGKILL"):
            self.killed = True
            process.kill_all(self.root.pid, self.recorded)  # type: ignore[union-attr]

    async def _still_running_after(self, delay_s: float, say: str) -> bool:
        """After `delay_s`: if the trainer still runs, record its descendants (they can no
        longer be found once it dies), say what happens next, and answer True."""
        await asyncio.sleep(delay_s)
        if not self.alive():
            return False
        assert self.root is not None
        self.recorded |= process.descendants(self.root)
        self.reporter.system(say, "WARNING")
        return True
