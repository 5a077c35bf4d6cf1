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
import logging
import signal
import sys
import time
from pathlib import Path

import msgspec
from nats.js import JetStreamContext

from agent.attempt.filewatch import FileWatch
from agent.attempt.reporter import Reporter
from agent.attempt.state import Published, ResumePoints, RunState, StateFile
from agent.attempt.stop import ProcessTreeControl
from agent.attempt.tail import FileTail
from agent.attempt.watchdog import Watchdog
from agent.attempt.workdir import fetch_workdir
from agent.options import RunOptions
from agent.process import tree as process
from agent.process.spawner import Spawner
from agent.publisher import publish
from agent.trainers import LaunchContext, adapter_for
from agent.trainers.base import Launch, LaunchError, OutputParser
from shared import events as ev
from shared.aio import cancel_and_wait
from shared.clock import now_s
from shared.commands import StartJob
from shared.paths import PathNotAllowed, confine
from shared.watch import WatchPolicy

log = logging.getLogger("trainyard.agent.run")

# Reading the output files: while a trainer is quiet, when it writes (inotify), or where there is
# no inotify every 2 ms backing off to 5 ms. While it keeps printing, every 20 ms: output is
# then taken in chunks, one publish each, which keeps the agent under 10 % of a core at 10k
# lines/s (DESIGN §9); reading faster would mostly buy socket writes.
POLL_MIN_S = 0.002
POLL_MAX_S = 0.005
POLL_BUSY_S = 0.02
# A flood of plain lines (this many or more in one read, no metric points among them) is read
# every 50 ms instead. Each chunk has a fixed cost down the line (a publish, a NATS message, a
# DuckDB transaction of ~5 ms here) and a plain line almost none of its own, so the chunk size
# sets what a flood costs: 100k lines printed in 0.55 s cost the agent, NATS and the gateway
# 0.68 s of CPU read every 20 ms, 0.56 s every 50 ms (no less at 100 ms; bench.history (c),
# 2 cores). Reports are not read so: each costs a decode, and read in bigger chunks they left
# more to do after the trainer's exit (20k reports: ~10 % fewer points/s to queryable). The
# last lines, at the trainer's exit, are read at once either way.
FLOOD_LINES = 1000
POLL_FLOOD_S = 0.05
# With an inotify watch on the output files an idle trainer's files are read when written to;
# this is only the longest sleep between looks (agent/attempt/filewatch.py).
WATCHED_IDLE_S = 0.25
SNAPSHOT_EVERY_S = 1.0
OUTPUT_STREAMS = ("stdout", "stderr")
# Past this many unacknowledged log bytes (NATS down or slow) the agent stops reading the output
# files: they are the buffer on disk, and reading resumes where it stopped (DESIGN §10: bounded).
BACKLOG_MAX_BYTES = 64 << 20

class TrainerRun(ProcessTreeControl):
    """One attempt: launched here, or re-adopted from its state file after an agent restart."""

    def __init__(
        self,
        js: JetStreamContext,
        host: str,
        command: StartJob,
        run_dir: Path,
        state_path: Path,
        options: RunOptions,
        *,
        adopt: RunState | None = None,
        published: Published | None = None,
        spawner: Spawner,
    ) -> None:
        self.js = js
        self.spawner = spawner
        self.host = host
        self.job_id = command.job_id
        self.attempt = command.attempt
        self.command = command
        self.run_dir = run_dir
        self.state_path = state_path
        self.state_file = StateFile(state_path, f"{command.job_id}/{command.attempt}")
        self.max_line_bytes = options.max_line_bytes
        self.crash_point = options.crash_point
        self.allowed_roots = options.allowed_roots
        self.adapter = adapter_for(command.spec.trainer)
        self.ctx = LaunchContext(
            host=host, job_id=self.job_id, attempt=self.attempt, run_dir=run_dir,
            gpu_ids=list(command.gpu_ids), python=options.python or sys.executable, job_dir=run_dir.parent,
            options=dict(options.trainer_options), resume_from=command.resume_from,
        )
        self.adopted = adopt
        self.reporter = Reporter(js, self.job_id, self.attempt, options.batch_max_bytes, host,
                                 options.log_cap_bytes, published=published, resumed=adopt)
        start = {stream: ((adopt.rows.get(stream, 0), adopt.offsets.get(stream, 0)) if adopt else (0, 0))
                 for stream in OUTPUT_STREAMS}
        self.resume_points = ResumePoints(start)
        self.lingering = set()
        self.launched = asyncio.Event()  # set once spawned (or adopted) or failed to spawn
        self.finished = asyncio.Event()
        # Set once the trainer and everything it left behind are gone, just before the exit is
        # reported: from then on its GPUs are free here, even while the report is in flight
        # (the scheduler may place the next attempt on them the moment it sees the exit).
        self.released = False
        self.root: process.ProcRef | None = None  # the keeper, leader of the trainer's group
        self.recorded: set[process.ProcRef] = set()
        self.stop_requested = adopt.stop_requested if adopt else False
        self.announced = adopt.announced if adopt else False
        self.killed = False  # this agent sent SIGKILL (the keeper may have died before writing)
        self.fail_reason = adopt.fail_reason if adopt else ""  # its stop makes it fail: this is why
        self.watchdog = Watchdog(WatchPolicy().for_job(command.spec), list(command.gpu_ids), self.anomaly,
                                 simulate_util=options.simulate_gpu_util)
        self.reporter.watch = self.watchdog
        self.returncode: int | None = adopt.returncode if adopt else None
        self._saved: RunState | None = adopt
        self._kill_deadline_task: asyncio.Task[None] | None = None
        self._term_task: asyncio.Task[None] | None = None
        self.stop_asked: tuple[bool, float] | None = None  # (force, grace_s) of the latest stop

    def pids(self) -> set[int]:
        """Processes of this run known so far (the keeper, the trainer, recorded descendants)."""
        return {ref.pid for ref in self.recorded}

    def alive(self) -> bool:
        return self.root is not None and not self.finished.is_set() and self.root.is_alive()

    async def _publish(self, event: ev.JobEvent) -> int:
        return await publish(self.js, event, host=self.host)

    # ---- the state file --------------------------------------------------------------------
    def _save_state(self, *, must: bool = False, **changes: object) -> None:
        """Write the state file (atomically) if anything in it changed. Before the keeper is
        forked it is the intent record (pid 0): a restarted agent then looks for the keeper in
        the run dir instead of starting a second one blindly."""
        root = self.root or process.ProcRef(0, 0.0)
        safe = self.resume_points.safe(self.reporter.acked_rows)
        state = RunState(
            job_id=self.job_id, attempt=self.attempt, pid=root.pid,
            create_time=root.create_time, run_dir=str(self.run_dir),
            stdout_path=str(self.run_dir / "stdout.log"), stderr_path=str(self.run_dir / "stderr.log"),
            command=self.command,
            offsets={stream: offset for stream, (_, offset) in safe.items()},
            rows={stream: rows for stream, (rows, _) in safe.items()},
            logged_bytes=self.reporter.logged_bytes,
            checkpoints=sorted(self.reporter.shipped_checkpoints),
            returncode=self.returncode,
            reported=self._saved.reported if self._saved else False,
            stop_requested=self.stop_requested,
            announced=self.announced,
            fail_reason=self.fail_reason,
        )
        if changes:
            state = msgspec.structs.replace(state, **changes)
        if state == self._saved:
            return
        if self.state_file.write(state, must=must, on_first_failure=self._say_unsaved):
            self._saved = state

    def _say_unsaved(self, exc: OSError) -> None:
        self.reporter.system(f"the agent could not save this attempt's state file ({exc}); watching on", "WARNING")

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
            if not self.announced:  # the previous agent died between forking and saying so
                await self._announce("(its keeper, found in the run dir by the restarted agent)")
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
            )
            if self.state_path.exists():
                self._save_state(reported=True)  # the intent record: nothing left to adopt
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
        self._confine_paths()
        if self.command.spec.workdir:
            count = await fetch_workdir(self.js, self.command.spec.workdir, self.run_dir)
            self.reporter.system(f"unpacked {count} files of {self.command.spec.workdir} into {self.run_dir}")
        launch = self.adapter.build_launch(self.command.spec, ctx)
        for path, content in launch.files.items():
            path.write_bytes(content)
        stdout_path, stderr_path = self.run_dir / "stdout.log", self.run_dir / "stderr.log"
        for path in (stdout_path, stderr_path):
            path.touch()  # here before the trainer starts, for the watch on them
        self._save_state(must=True)  # the intent record: no keeper is forked without it
        self.crash_point("intent_saved")
        spawning = asyncio.ensure_future(
            self._spawn_and_record(launch, process.child_env(launch.env, ctx), stdout_path, stderr_path))
        try:
            await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # The agent is stopping mid-spawn: the trainer may be running already. Its state
            # file is written first, or the next agent, finding none, would start it a second
            # time into the same run dir (the soak caught one, every line doubled).
            await spawning
            raise
        self.launched.set()
        await self._announce(" ".join(launch.argv))
        self.crash_point("started")
        if self.stop_asked is not None:  # a stop arrived while it was being spawned: carry it out now
            self.stop(*self.stop_asked)
        return True

    async def _announce(self, what: str) -> None:
        """Publish `started` (the job is running) and remember it was; `what` ran."""
        assert self.root is not None
        await self._publish(
            ev.JobStarted(
                job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), host=self.host,
                pid=self.root.pid, run_dir=str(self.run_dir), stdout_path=str(self.run_dir / "stdout.log"),
                stderr_path=str(self.run_dir / "stderr.log"),
            ),
        )
        self.reporter.system(f"started pid {self.root.pid} on host {self.host}: {what}")
        self.announced = True
        self._save_state()

    def _confine_paths(self) -> None:
        """The request's paths again, on this host, with its roots, right before launch: a
        symlink made after submit, or this host's filesystem, cannot lead outside them."""
        for field, path in self.command.spec.local_paths():
            try:
                confine(path, list(self.allowed_roots), field)
            except PathNotAllowed as exc:
                raise LaunchError(f"{exc} on host {self.host}") from None

    async def _spawn_and_record(
        self, launch: Launch, env: dict[str, str], stdout_path: Path, stderr_path: Path
    ) -> None:
        spawned = await self.spawner.spawn(launch.argv, launch.cwd, env, self.run_dir, stdout_path, stderr_path)
        self.crash_point("spawned")
        self.root = spawned.keeper
        self.recorded = {self.root}
        if not spawned.started_here:
            self.reporter.system(f"an earlier start of this attempt holds the run dir (keeper pid {self.root.pid}): "
                                 "watching that one, not starting a second trainer", "WARNING")
        self._save_state()
        self.crash_point("recorded")

    async def _watch(self) -> None:
        assert self.root is not None
        offsets = self.adopted.offsets if self.adopted else {}
        tails = [
            FileTail(self.run_dir / f"{stream}.log", stream, self.max_line_bytes, offsets.get(stream, 0))
            for stream in OUTPUT_STREAMS
        ]
        parser = self.adapter.new_parser(self.command.spec, self.ctx)
        waiter = asyncio.create_task(process.wait_gone(self.root), name=f"{self.job_id}-wait")
        limit = self._time_limit()
        watch = FileWatch.open([tail.path for tail in tails])
        delay = POLL_MIN_S
        next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
        leftovers_killed = False
        try:
            while True:
                exited = waiter.done()
                if watch is not None:
                    watch.clear()
                got = False
                backlogged = self.reporter.log_batcher.pending_bytes > BACKLOG_MAX_BYTES
                lines_before, points_before = self.reporter.log_batcher.added, self.reporter.metric_batcher.added
                for tail in tails if not backlogged else ():
                    if self._read(tail, parser):
                        got = True
                if exited and not got and not backlogged:
                    if not self.released and not leftovers_killed:
                        # The keeper is gone, but what it left (a trainer whose keeper was
                        # killed, workers) may print on: kill it all, then read once more.
                        await self._release()
                        leftovers_killed = True
                        continue
                    for tail in tails:  # an unterminated last line
                        self._feed(tail, parser, *tail.splitter.feed(b"", final=True))
                    break
                if got:
                    delay = POLL_MIN_S
                    flood = (self.reporter.log_batcher.added - lines_before >= FLOOD_LINES
                             and self.reporter.metric_batcher.added == points_before)
                    await asyncio.wait([waiter], timeout=POLL_FLOOD_S if flood else POLL_BUSY_S)
                elif watch is not None and not backlogged:
                    await watch.wait(waiter, WATCHED_IDLE_S)
                else:
                    await asyncio.wait([waiter], timeout=delay if not backlogged else POLL_BUSY_S)
                    delay = min(delay * 2, POLL_MAX_S)
                if time.monotonic() >= next_snapshot:
                    if not exited:
                        self.watchdog.check()
                    parser.poll(self.reporter)
                    # Remember descendants now: once the leader dies they are reparented and
                    # can no longer be found from it.
                    self.recorded |= process.descendants(self.root)
                    self._save_state()
                    next_snapshot = time.monotonic() + SNAPSHOT_EVERY_S
        finally:
            waiter.cancel()
            if limit is not None:
                limit.cancel()
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
        if not leftovers_killed:
            await self._release()  # (the watch ended early: cancelled)
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
