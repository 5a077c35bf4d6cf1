"""One attempt of one job on this host: launch it, tail its output, report, stop it.

The trainer writes stdout/stderr to files in its run dir; this tails those files (so a restarted
agent could resume from offsets), parses them through the trainer's adapter and publishes
naturally batched logs and metrics, the latest progress, checkpoints and the lifecycle.
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

from agent import process
from agent.adapters import LaunchContext, adapter_for
from agent.adapters.base import LaunchError
from agent.lines import LineSplitter
from agent.publisher import ColumnBatcher, LatestSlot, publish_retrying
from shared import events as ev
from shared import subjects
from shared.clock import now_s
from shared.commands import StartJob

log = logging.getLogger("trainyard.agent.run")

LAST_LINES = 30
READ_CHUNK = 1 << 20
# Reading the output files: while a trainer is quiet, every 2 ms backing off to 5 ms, so the
# first line after a pause is read within 5 ms. While it keeps printing, every 20 ms: output is
# then taken in chunks, one publish each, which keeps the agent under 10 % of a core at 10k
# lines/s (DESIGN §9); polling faster would mostly buy socket writes.
POLL_MIN_S = 0.002
POLL_MAX_S = 0.005
POLL_BUSY_S = 0.02
SNAPSHOT_EVERY_S = 1.0


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
    """Written to the agent's state dir at spawn; what a restarted agent needs to re-adopt."""

    job_id: str
    attempt: int
    pid: int
    create_time: float
    run_dir: str
    stdout_path: str
    stderr_path: str


class Reporter:
    """The adapters' Sink: turns parsed output into batched events for this attempt."""

    def __init__(self, js: JetStreamContext, job_id: str, attempt: int, max_bytes: int,
                 host: str = "", log_cap_bytes: int = 0) -> None:
        self.job_id, self.attempt = job_id, attempt
        self.host = host
        self.log_cap_bytes = log_cap_bytes  # 0: no cap
        self.logged_bytes = 0
        self.truncated = False
        self._notes: set[asyncio.Task[int]] = set()
        prefix = f"{job_id}:{attempt}"
        self.log_batcher = ColumnBatcher(
            js,
            subjects.job_log(job_id),
            f"{prefix}:log",
            ("ts", "stream", "level", "kind", "text"),
            lambda first, c: ev.LogBatch(
                job_id=job_id, attempt=attempt, ts_s=now_s(), first_seq=first,
                line_ts_s=c["ts"], stream=c["stream"], level=c["level"], kind=c["kind"],
                text=c["text"],
            ),
            max_bytes,
        )
        self.metric_batcher = ColumnBatcher(
            js,
            subjects.job_event(job_id, "metrics"),
            f"{prefix}:metrics",
            ("step", "epoch", "name", "value", "ts"),
            lambda first, c: ev.MetricsRecorded(
                job_id=job_id, attempt=attempt, ts_s=now_s(), first_seq=first,
                step=c["step"], epoch=c["epoch"], name=c["name"], value=c["value"],
                point_ts_s=c["ts"],
            ),
            max_bytes,
        )
        self.progress_slot: LatestSlot[ProgressReading] = LatestSlot(
            js, subjects.job_event(job_id, "progress"), f"{prefix}:progress", self._progress_event
        )
        self._js = js
        self._checkpoints: list[ev.CheckpointSaved] = []
        self._checkpoint_wake = asyncio.Event()
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._rate_anchor: tuple[float, int] | None = None

    # ---- Sink ------------------------------------------------------------------------------
    def logs(self, stream: str, texts: list[str], levels: list[str], kinds: list[str]) -> None:
        self.last_lines.extend(texts[-LAST_LINES:])
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
            self._js, subjects.job_event(self.job_id, "agent_note"), ev.encode(note),
            f"{self.job_id}:{self.attempt}:log_truncated"))
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    def system(self, text: str, level: str = "INFO") -> None:
        self.logs("system", [f"trainyard: {text}"], [level], ["system"])

    def metrics(self, step: int | None, epoch: float | None, values: Mapping[str, float]) -> None:
        n = len(values)
        if n:
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
                    self._js, subjects.job_event(self.job_id, "checkpoint"), ev.encode(event),
                    f"{self.job_id}:{self.attempt}:checkpoint:{event.path}",
                )
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
        while True:
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
    ) -> None:
        self.js = js
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
        self.reporter = Reporter(js, self.job_id, self.attempt, batch_max_bytes, host, log_cap_bytes)
        self.launched = asyncio.Event()  # set once spawned or failed to spawn
        self.finished = asyncio.Event()
        # Set once the trainer and everything it left behind were killed, just before the exit is
        # reported: from then on its GPUs are free here, even while the report is in flight
        # (the scheduler may place the next attempt on them the moment it sees the exit).
        self.released = False
        self.proc: asyncio.subprocess.Process | None = None
        self.root: process.ProcRef | None = None
        self.recorded: set[process.ProcRef] = set()
        self.stop_requested = False
        self._exited = asyncio.Event()
        self._kill_deadline_task: asyncio.Task[None] | None = None
        self._term_task: asyncio.Task[None] | None = None

    def pids(self) -> set[int]:
        """Processes of this run known so far (the leader and recorded descendants)."""
        return {ref.pid for ref in self.recorded}

    def _event_id(self, kind: str) -> str:
        return f"{self.job_id}:{self.attempt}:{kind}"

    async def _publish(self, event: ev.JobEvent, kind: str) -> int:
        return await publish_retrying(
            self.js, subjects.job_event(self.job_id, kind), ev.encode(event), self._event_id(kind)
        )

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
            for task in shippers:
                task.cancel()
            await asyncio.gather(*shippers, return_exceptions=True)
            self.launched.set()
            self.finished.set()

    async def _run(self) -> None:
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
        self.proc = await process.spawn(
            launch.argv, launch.cwd, child_env(launch.env, ctx), stdout_path, stderr_path
        )
        self.root = process.ProcRef.of(self.proc.pid) or process.ProcRef(self.proc.pid, 0.0)
        self.recorded = {self.root}
        self.state_path.write_bytes(
            msgspec.json.encode(
                RunState(
                    job_id=self.job_id, attempt=self.attempt, pid=self.root.pid,
                    create_time=self.root.create_time, run_dir=str(self.run_dir),
                    stdout_path=str(stdout_path), stderr_path=str(stderr_path),
                )
            )
        )
        self.launched.set()
        await self._publish(
            ev.JobStarted(
                job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), host=self.host,
                pid=self.proc.pid, run_dir=str(self.run_dir), stdout_path=str(stdout_path),
                stderr_path=str(stderr_path),
            ),
            "started",
        )
        self.reporter.system(f"started pid {self.proc.pid} on host {self.host}: {' '.join(launch.argv)}")
        return True

    async def _watch(self) -> None:
        assert self.proc is not None and self.root is not None
        tails = [
            FileTail(self.run_dir / "stdout.log", "stdout", self.max_line_chars),
            FileTail(self.run_dir / "stderr.log", "stderr", self.max_line_chars),
        ]
        parser = self.adapter.new_parser(self.command.spec, self.ctx)
        waiter = asyncio.create_task(self.proc.wait(), name=f"{self.job_id}-wait")
        delay = POLL_MIN_S
        next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
        try:
            while True:
                exited = waiter.done()
                got = False
                for tail in tails:
                    data = tail.read()
                    if data or exited:
                        lines, transient = tail.splitter.feed(data, final=exited)
                        if lines or transient:
                            got = True
                            parser.feed(tail.stream, lines, transient, self.reporter)
                if exited:
                    break
                if got:
                    delay = POLL_MIN_S
                    await asyncio.wait([waiter], timeout=POLL_BUSY_S)
                else:
                    await asyncio.wait([waiter], timeout=delay)
                    delay = min(delay * 2, POLL_MAX_S)
                if time.monotonic() >= next_snapshot:
                    parser.poll(self.reporter)
                    # Remember descendants now: once the leader dies they are reparented and
                    # can no longer be found from it.
                    self.recorded |= process.descendants(self.root)
                    next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
        finally:
            for tail in tails:
                tail.close()
        returncode = waiter.result()
        parser.poll(self.reporter)
        # Whatever the trainer left behind dies with it (dataloader workers, ignored SIGTERMs).
        process.kill_all(self.root.pid, self.recorded)
        for task in (self._kill_deadline_task, self._term_task):
            if task is not None:
                task.cancel()
        exit_code, sig, words = process.describe_exit(returncode)
        await self._report_exit(exit_code, sig, words, parser)

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
        self.released = True
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

    def stop(self, force: bool, grace_s: float) -> None:
        """Graceful: the trainer's own way if it has one (diffusion-pipe: a `save_quit` file),
        with SIGTERM to the group after half the grace period; else SIGTERM now. SIGKILL to
        everything recorded after `grace_s`. Force: SIGKILL now. Safe to call again (a force
        after a graceful stop escalates)."""
        self.stop_requested = True
        if self.proc is None or self.root is None or self.proc.returncode is not None:
            return
        self.recorded |= process.descendants(self.root)
        if force:
            self.reporter.system("force stop: SIGKILL to the process tree", "WARNING")
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
            process.kill_all(self.root.pid, self.recorded)  # type: ignore[union-attr]

    async def _still_running_after(self, delay_s: float, say: str) -> bool:
        """After `delay_s`: if the trainer still runs, record its descendants (they can no
        longer be found once it dies), say what happens next, and answer True."""
        await asyncio.sleep(delay_s)
        if self.root is None or self.proc is None or self.proc.returncode is not None:
            return False
        self.recorded |= process.descendants(self.root)
        self.reporter.system(say, "WARNING")
        return True
