"""The agent's supervisor: turns start/stop commands into trainer runs and keeps track of them.

It only refuses what it cannot honour (a GPU already in use here); it never places jobs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from pathlib import Path

import msgspec
from nats.js import JetStreamContext

from agent.attempt.run import TrainerRun
from agent.attempt.state import RunState, published_so_far
from agent.export import export_context, run_export
from agent.gpus import GpuInventory
from agent.options import RunOptions
from agent.process import tree as process
from agent.process.spawner import Spawner
from agent.publisher import publish
from shared import events as ev
from shared.aio import cancel_and_wait
from shared.clock import now_s
from shared.commands import AnyCommand, ExportJob, StartJob, StopJob

log = logging.getLogger("trainyard.agent.supervisor")


class Supervisor:
    def __init__(
        self,
        js: JetStreamContext,
        host: str,
        work_dir: Path,
        gpus: GpuInventory,
        options: RunOptions,
    ) -> None:
        self.js = js
        self.options = options
        self.host = host
        self.gpus = gpus
        self.work_dir = work_dir
        self.state_dir = work_dir / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.runs: dict[tuple[str, int], TrainerRun] = {}
        self._exports: set[asyncio.Task[None]] = set()
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._lingering: set[asyncio.Task[None]] = set()  # of runs already forgotten (stop.py)
        self.spawner = Spawner(after_send=functools.partial(options.crash_point, "spawn_sent"))

    @property
    def runs_dir(self) -> Path:
        """A job's attempts run in runs_dir/<job>/<attempt>/ (what GET /jobs/{id}/files lists)."""
        return self.work_dir / "runs"

    def run_dir(self, job_id: str, attempt: int) -> Path:
        return self.runs_dir / job_id / str(attempt)

    def state_path(self, job_id: str, attempt: int) -> Path:
        return self.state_dir / f"{job_id}.{attempt}.json"

    def active_runs(self) -> list[TrainerRun]:
        """Runs whose trainer may still be alive (not yet killed and released)."""
        return [run for run in self.runs.values() if not run.finished.is_set() and not run.released]

    def busy_gpus(self) -> dict[int, str]:
        return {gpu: run.job_id for run in self.active_runs() for gpu in run.command.gpu_ids}

    def running_jobs(self) -> list[str]:
        return sorted(run.job_id for run in self.active_runs())

    async def handle(self, command: AnyCommand) -> None:
        match command:
            case StartJob():
                await self._start(command)
            case StopJob():
                await self._stop(command)
            case ExportJob():
                ctx = export_context(self.host, command, self.work_dir / "runs" / command.job_id,
                                     self.options.python or sys.executable, self.options.trainer_options)
                task = asyncio.create_task(run_export(self.js, command, ctx), name=f"export-{command.export_id}")
                self._exports.add(task)
                task.add_done_callback(self._exports.discard)

    async def _start(self, command: StartJob) -> None:
        key = (command.job_id, command.attempt)
        # Idempotent: a redelivered or duplicated start never spawns a second trainer.
        if key in self.runs or self.state_path(*key).exists():
            log.info("start %s/%s already handled; ignored", *key)
            return
        reason = self._why_refuse(command)
        if reason:
            refused = ev.JobRefused(job_id=command.job_id, attempt=command.attempt, ts_s=now_s(),
                                    host=self.host, reason=f"host {self.host} refused it: {reason}")
            await publish(self.js, refused, host=self.host)
            return
        await self._begin(TrainerRun(self.js, self.host, command, self.run_dir(*key), self.state_path(*key),
                                     self.options, spawner=self.spawner))

    async def _begin(self, run: TrainerRun) -> None:
        key = (run.job_id, run.attempt)
        self.runs[key] = run
        task = asyncio.create_task(run.run(), name=f"run-{run.job_id}-{run.attempt}")
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._forget, key))
        await run.launched.wait()

    async def readopt(self) -> None:
        """After a restart: take every attempt back whose end was not reported yet. Live
        trainers are watched on; ended ones are reported with the exit status their keeper
        recorded (or as lost when none was)."""
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                state = msgspec.json.decode(path.read_bytes(), type=RunState)
            except (OSError, msgspec.DecodeError) as exc:
                log.error("state file %s unreadable (%s); not re-adopted", path, exc)
                continue
            command = state.command
            if state.reported or command is None:
                continue
            key = (state.job_id, state.attempt)
            if state.pid == 0:  # the previous agent died mid-spawn (its intent record)
                keeper = process.recorded_keeper(Path(state.run_dir))
                if keeper is None:
                    # No keeper claimed the run dir: start it now, as its start command (never
                    # acknowledged, so it comes again, then ignored) would. Should a late keeper
                    # of the old agent's spawner claim the run dir first, ours defers to it.
                    log.info("%s/%s was being started when the agent stopped; starting it", *key)
                    path.unlink()
                    await self._start(command)
                    continue
                state = msgspec.structs.replace(state, pid=keeper.pid, create_time=keeper.create_time)
            published = await published_so_far(self.js, self.host, state.job_id, state.attempt)
            log.info("re-adopting %s/%s (pid %s); the streams hold %s log rows", state.job_id,
                     state.attempt, state.pid, published.rows)
            await self._begin(TrainerRun(self.js, self.host, command, Path(state.run_dir), path,
                                         self.options, adopt=state, published=published, spawner=self.spawner))

    def _why_refuse(self, command: StartJob) -> str:
        """Double-check the scheduler's placement against this host's own view (DESIGN §4):
        the command must be fresh, the GPU must exist, not be used by another run here, and,
        with NVML, carry no process that is not ours."""
        age = now_s() - command.ts_s
        if command.valid_for_s and age > command.valid_for_s:
            return (f"the start command is {age:.0f}s old (valid for {command.valid_for_s:.0f}s); "
                    "the job may have been placed elsewhere meanwhile")
        present = {g.index: g for g in self.gpus.snapshot()}
        missing = [g for g in command.gpu_ids if g not in present]
        if missing:
            return f"no GPU {', '.join(map(str, missing))} on this host (it has {len(present)})"
        ours = self.busy_gpus()
        clash = [f"GPU {g} is busy with {ours[g]}" for g in command.gpu_ids if g in ours]
        own_pids = {pid for run in self.runs.values() for pid in run.pids()}
        for g in command.gpu_ids:
            foreign = [p for p in present[g].pids if p not in own_pids]
            if foreign and g not in ours:
                clash.append(f"GPU {g} has processes not started by trainyard (pids {', '.join(map(str, foreign))})")
        return "; ".join(clash)

    def host_jobs(self) -> list[ev.HostJob]:
        return [
            ev.HostJob(job_id=run.job_id, attempt=run.attempt, gpu_ids=list(run.command.gpu_ids),
                       pid=run.root.pid if run.root else None)
            for run in self.active_runs()
        ]

    def _forget(self, key: tuple[str, int], task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        run = self.runs.pop(key, None)
        if run is not None and self.gpus.simulated:  # what its trainer set is no longer measured
            for gpu in run.command.gpu_ids:
                self.gpus.simulate_utilisation(gpu, None)
        for lingering in run.lingering if run is not None else ():
            self._lingering.add(lingering)
            lingering.add_done_callback(self._lingering.discard)
        if not task.cancelled() and task.exception() is not None:
            log.error("run %s/%s crashed", *key, exc_info=task.exception())

    async def _stop(self, command: StopJob) -> None:
        run = self.runs.get((command.job_id, command.attempt))
        if run is None or run.released:
            # A stop for an attempt this host does not run (never started, finished, or a
            # duplicate) is a no-op, said as an event so the job's history shows it.
            why = "it has already ended here" if run is not None or self.state_path(
                command.job_id, command.attempt).exists() else "it is not running on this host"
            log.info("stop for %s/%s ignored: %s", command.job_id, command.attempt, why)
            note = ev.AgentNote(job_id=command.job_id, attempt=command.attempt, ts_s=now_s(), host=self.host,
                                what="stop_ignored", detail=f"stop of attempt {command.attempt} ignored: {why}")
            await publish(self.js, note, host=self.host, unique=f"stop_ignored:{int(command.ts_s * 1000)}")
            return
        if command.reason and not run.stop_requested:
            run.reporter.system(command.reason, "WARNING")
        run.stop(command.force, command.grace_s)

    async def shutdown(self, stop_trainers: bool) -> None:
        """Stop watching. Trainers keep running in their own sessions unless asked otherwise."""
        if stop_trainers:
            for run in list(self.runs.values()):
                run.stop(force=False, grace_s=10.0)
            waits = [run.finished.wait() for run in self.runs.values()]
            if waits:
                async with asyncio.timeout(15.0):  # not wait_for: see shared/aio.py
                    await asyncio.gather(*waits)
        await cancel_and_wait([*self._tasks.values(), *self._lingering])
        await self.spawner.close()
