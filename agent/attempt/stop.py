"""Stopping an attempt and releasing its GPUs: the trainer's own way first if it has one,
SIGTERM to the process group, SIGKILL to everything recorded after the grace period, and the
GPUs freed only once every process of the attempt is verifiably gone. Then how it ended:
succeeded, failed (a time limit or the watchdog's stop fails it), stopped, or lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from nats.js import JetStreamContext

from agent.attempt.reporter import Reporter
from agent.attempt.watchdog import Anomaly
from agent.process import tree as process
from agent.publisher import publish
from agent.trainers import LaunchContext, StopsGracefully
from agent.trainers.base import AnyAdapter, OutputParser
from shared import events as ev
from shared.clock import now_s
from shared.commands import StartJob

# After SIGKILL, how long the trainer's processes get to disappear before their GPUs are
# reported held (a process stuck in the kernel survives SIGKILL).
RELEASE_WAIT_S = 10.0


class ProcessTreeControl:
    """The stop, release and end of a TrainerRun (run.py): what it needs of the run is declared here."""

    js: JetStreamContext
    host: str
    job_id: str
    attempt: int
    command: StartJob
    ctx: LaunchContext
    adapter: AnyAdapter
    reporter: Reporter
    finished: asyncio.Event
    root: process.ProcRef | None
    recorded: set[process.ProcRef]
    stop_requested: bool
    killed: bool
    fail_reason: str  # set when this stop makes the attempt fail (a time limit, the watchdog)
    released: bool
    returncode: int | None
    # Tasks that outlive the run (the watch on processes that survived SIGKILL): held here so
    # that they are neither garbage-collected nor missed at shutdown (Supervisor.shutdown).
    lingering: set[asyncio.Task[None]]
    _kill_deadline_task: asyncio.Task[None] | None
    stop_asked: tuple[bool, float] | None
    _term_task: asyncio.Task[None] | None

    def _save_state(self, *, must: bool = False, **changes: object) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        return self.root is not None and not self.finished.is_set() and self.root.is_alive()

    def _time_limit(self) -> asyncio.Task[None] | None:
        """Stop the trainer gracefully once it has run `max_runtime_s` (counted from its keeper's
        start, so an agent restart does not reset the clock)."""
        limit = self.command.spec.max_runtime_s
        if limit is None or self.root is None:
            return None

        async def at_limit() -> None:
            assert self.root is not None
            await asyncio.sleep(max(0.0, self.root.create_time + limit - time.time()))
            if not self.stop_requested and self.alive():
                self.fail_reason = f"time limit of {limit:g}s reached"
                self.reporter.system(f"{self.fail_reason}: stopping it", "WARNING")
                self.stop(False, self.command.spec.stop_grace_s)

        return asyncio.create_task(at_limit(), name=f"{self.job_id}-time-limit")

    def anomaly(self, found: Anomaly) -> None:
        """What the watchdog found: an `anomaly` event and a log line; with the action `stop`, a
        graceful stop after which the attempt fails with the finding as its reason. Once a stop
        is under way, a stall or idle GPUs are its doing: not reported."""
        if self.stop_requested and found.kind != "nan":
            return
        stopping = found.action == "stop" and not self.stop_requested and self.alive()
        self.reporter.system(f"anomaly: {found.detail}" + ("; stopping it" if stopping else ""), "WARNING")
        self.reporter.note(ev.JobAnomaly(
            job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), host=self.host, kind=found.kind,
            action=found.action, detail=found.detail, metric=found.metric, step=found.step, value=found.value,
            gpus=list(found.gpus)), unique=found.kind)
        if stopping:
            self.fail_reason = found.detail
            self.stop(False, self.command.spec.stop_grace_s)

    def stop(self, force: bool, grace_s: float) -> None:
        """Graceful: the trainer's own way if it has one (diffusion-pipe: a `save_quit` file),
        with SIGTERM to the group after half the grace period; else SIGTERM now. SIGKILL to
        everything recorded after `grace_s`. Force: SIGKILL now. Safe to call again (a force
        after a graceful stop escalates)."""
        if self.stop_requested and not force and self._kill_deadline_task is not None:
            return  # the same graceful stop again (the gateway's and the leader's): it is under way
        self.stop_requested = True
        self.stop_asked = (force, grace_s)
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
        own_way = self.adapter if isinstance(self.adapter, StopsGracefully) else None
        first_stop = self._kill_deadline_task is None
        done = own_way.request_stop(self.command.spec, self.ctx) if own_way and first_stop else None
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
            assert self.root is not None
            process.signal_group(self.root.pid, signal.SIGTERM)

    async def _kill_after(self, grace_s: float) -> None:
        if await self._still_running_after(grace_s, f"grace period of {grace_s:g}s over: SIGKILL"):
            assert self.root is not None
            self.killed = True
            process.kill_all(self.root.pid, self.recorded)

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
            self.reporter.system(
                f"killing processes that left the trainer's session: pids "
                f"{', '.join(str(r.pid) for r in sorted(escaped - self.recorded, key=lambda r: r.pid))}",
                "WARNING",
            )
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
            held = asyncio.create_task(self._release_when_gone(alive), name=f"{self.job_id}-held")
            self.lingering.add(held)
            held.add_done_callback(self.lingering.discard)
            return
        self.released = True

    async def _release_when_gone(self, alive: list[process.ProcRef]) -> None:
        while any(ref.is_alive() for ref in alive):
            await asyncio.sleep(1.0)
        self.released = True
        await self._note("gpus_released", "the processes that survived SIGKILL are gone; GPUs free again")

    async def _note(self, what: str, detail: str) -> None:
        note = ev.AgentNote(job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), host=self.host,
                            what=what, detail=detail)
        await publish(self.js, note, host=self.host, unique=what)

    # ---- how it ended ---------------------------------------------------------------------------
    def _latest_checkpoint(self) -> str | None:
        """The attempt's latest checkpoint as a path the next attempt can open (a preempted job
        resumes from it): a relative one is the trainer's, from its run dir, and the next
        attempt has another run dir."""
        saved = self.reporter.last_checkpoint
        if saved is None or os.path.isabs(saved):
            return saved
        return str(self.ctx.run_dir / saved)

    async def _report_lost(self) -> None:
        reason = ("its exit status is unknown: the trainer ended while no agent watched it and its "
                  "keeper did not record it")
        self.reporter.system(reason, "ERROR")
        await self.reporter.drained()
        await publish(self.js, ev.JobLost(job_id=self.job_id, attempt=self.attempt, ts_s=now_s(),
                                       host=self.host, reason=reason), host=self.host)
        self._save_state(reported=True)

    async def _report_exit(
        self, exit_code: int | None, sig: int | None, words: str, parser: OutputParser | None = None
    ) -> None:
        if self.fail_reason:
            outcome, reason = "failed", f"{self.fail_reason} ({words})"
        elif self.stop_requested:
            outcome, reason = "stopped", f"stopped on request ({words})"
        else:
            ok, why = self.adapter.succeeded(exit_code, parser)
            outcome, reason = ("succeeded", "") if ok else ("failed", why or words)
            if sig is not None and not ok:
                reason = words
            if ok:
                self.reporter.progress_complete()
        self.reporter.system(f"{words}; {outcome}", "INFO" if outcome != "failed" else "ERROR")
        if self.root is None:
            self.released = True  # never started
        await self.reporter.drained()
        await publish(
            self.js,
            ev.JobExited(
                job_id=self.job_id, attempt=self.attempt, ts_s=now_s(), outcome=outcome,  # type: ignore[arg-type]
                exit_code=exit_code, signal=sig, reason=reason,
                last_lines=list(self.reporter.last_lines) if outcome == "failed" else [],
                log_stream_seq=self.reporter.log_batcher.last_stream_seq,
                checkpoint=self._latest_checkpoint(),
            ),
            host=self.host,
        )
        if self.root is not None:
            self._save_state(reported=True)
