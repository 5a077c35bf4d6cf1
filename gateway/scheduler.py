"""The scheduler: places queued jobs on hosts' free GPUs by priority (DESIGN §4).

`plan()` is pure: queue + hosts + what is busy -> assignments, plus why each other job waits.
`Scheduler` runs it whenever the projection changes (and on a slow timer as a safety net),
publishes `JobScheduled` and the host's `start` command, and remembers what it assigned until
the projection shows it, so a job is never placed twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from shared import events as ev
from shared import subjects
from shared.clock import now_s
from shared.commands import StartJob
from shared.jobstate import ON_HOST, JobStatus

from gateway.projector import JobNeeds, Projector

log = logging.getLogger("trainyard.scheduler")


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    attempt: int  # the attempt the job is on now; placing it starts attempt + 1
    needs: JobNeeds


@dataclass
class HostView:
    host: str
    gpu_memory_mb: dict[int, int]  # index -> total memory
    busy: set[int] = field(default_factory=set)
    running: int = 0

    def free(self) -> list[int]:
        return sorted(set(self.gpu_memory_mb) - self.busy)


@dataclass(frozen=True)
class Assignment:
    job_id: str
    attempt: int
    host: str
    gpu_ids: tuple[int, ...]


def _fits(job: JobNeeds, host: HostView, usable: list[int]) -> tuple[int, ...] | None:
    if job.host and job.host != host.host:
        return None
    if job.min_gpu_memory_gb:
        floor_mb = job.min_gpu_memory_gb * 1024
        usable = [g for g in usable if host.gpu_memory_mb[g] >= floor_mb]
    if job.gpu_ids:
        return job.gpu_ids if set(job.gpu_ids) <= set(usable) else None
    if job.gpus == 0:
        return ()
    return tuple(usable[: job.gpus]) if len(usable) >= job.gpus else None


def plan(queue: list[QueuedJob], hosts: dict[str, HostView]) -> tuple[list[Assignment], dict[str, str]]:
    """Assignments for this pass and, for each job left waiting, the reason.

    Priority first, FIFO within a priority. The first GPU job that cannot be placed reserves the
    host where it fits best; later jobs may only use GPUs it cannot use (backfill), so a large
    job is never starved by a stream of small ones.
    """
    ordered = sorted(queue, key=lambda q: (-q.needs.priority, q.needs.submit_seq))
    reserved: dict[str, set[int]] = {}
    assignments: list[Assignment] = []
    waiting: dict[str, str] = {}
    for q in ordered:
        best: tuple[int, str, tuple[int, ...]] | None = None
        for view in hosts.values():
            usable = [g for g in view.free() if g not in reserved.get(view.host, set())]
            gpus = _fits(q.needs, view, usable)
            if gpus is None:
                continue
            # Best fit: the host left with the fewest free GPUs, then the least loaded.
            score = (len(usable) - len(gpus)) * 1000 + view.running
            if best is None or score < best[0]:
                best = (score, view.host, gpus)
        if best is not None:
            _, host, gpus = best
            hosts[host].busy |= set(gpus)
            hosts[host].running += 1
            assignments.append(Assignment(q.job_id, q.attempt + 1, host, gpus))
            continue
        waiting[q.job_id] = _why_waiting(q.needs, hosts)
        if q.needs.gpus > 0 and not reserved:
            for view in hosts.values():
                if _fits(q.needs, view, sorted(view.gpu_memory_mb)) is not None:
                    reserved[view.host] = set(view.free())
                    break
    return assignments, waiting


def _why_waiting(job: JobNeeds, hosts: dict[str, HostView]) -> str:
    if not hosts:
        return "no agent is online"
    if job.host and job.host not in hosts:
        return f"host {job.host} is not online"
    need = f"{job.gpus} GPU{'s' if job.gpus != 1 else ''}"
    if job.min_gpu_memory_gb:
        need += f" with >= {job.min_gpu_memory_gb:g} GB"
    if job.gpu_ids:
        need = f"GPUs {','.join(map(str, job.gpu_ids))}" + (f" on {job.host}" if job.host else "")
    largest = max(hosts.values(), key=lambda h: len(h.free()))
    return f"needs {need}; largest free set is {len(largest.free())} on host {largest.host}"


class Scheduler:
    def __init__(self, js: JetStreamContext, projector: Projector, *, host_timeout_s: float,
                 interval_s: float) -> None:
        self.js = js
        self.projector = projector
        self.host_timeout_s = host_timeout_s
        self.interval_s = interval_s
        self.paused = False
        self.waiting: dict[str, str] = {}
        self._inflight: dict[str, Assignment] = {}
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        projector.on_jobs_changed.append(self.kick)

    def placement(self, job_id: str) -> Assignment | None:
        """An assignment published but not yet visible in the projection."""
        return self._inflight.get(job_id)

    def queue_position(self, job_id: str) -> int | None:
        """1-based place in the order the scheduler will consider queued jobs."""
        needs = self.projector.needs
        queued = [j for j, s in self.projector.live_states.items()
                  if s.status is JobStatus.QUEUED and j not in self._inflight]
        if job_id not in queued:
            return None
        queued.sort(key=lambda j: (-needs[j].priority, needs[j].submit_seq))
        return queued.index(job_id) + 1

    def kick(self) -> None:
        self._kick.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), self.interval_s)
            except TimeoutError:
                pass
            self._kick.clear()
            if self.paused:
                continue
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed; next pass retries")

    def online_hosts(self) -> dict[str, HostView]:
        now = now_s()
        views = {
            b.host: HostView(b.host, {g.index: g.memory_total_mb for g in b.gpus})
            for b in self.projector.heartbeats.values()
            if now - b.ts_s <= self.host_timeout_s
        }
        return views

    def snapshot(self) -> tuple[list[QueuedJob], dict[str, HostView]]:
        hosts = self.online_hosts()
        queue: list[QueuedJob] = []
        states = self.projector.live_states
        for job_id in list(self._inflight):
            if states[job_id].status is not JobStatus.QUEUED:
                del self._inflight[job_id]  # the projection shows it now
        placed = {a.job_id: a for a in self._inflight.values()}
        for job_id, state in list(states.items()):
            placement = placed.get(job_id)
            if placement is None and state.status in ON_HOST and state.host is not None:
                host, gpus = state.host, state.gpu_ids
            elif placement is not None:
                host, gpus = placement.host, placement.gpu_ids
            else:
                if state.status is JobStatus.QUEUED:
                    queue.append(QueuedJob(job_id, state.attempt, self.projector.needs[job_id]))
                continue
            if host in hosts:
                hosts[host].busy |= set(gpus)
                hosts[host].running += 1
        return queue, hosts

    async def run_pass(self) -> list[Assignment]:
        queue, hosts = self.snapshot()
        if not queue:
            self.waiting = {}
            return []
        assignments, self.waiting = plan(queue, hosts)
        for a in assignments:
            self._inflight[a.job_id] = a
            await self._dispatch(a)
        return assignments

    async def _dispatch(self, a: Assignment) -> None:
        ts = now_s()
        scheduled = ev.JobScheduled(job_id=a.job_id, attempt=a.attempt, ts_s=ts, host=a.host,
                                    gpu_ids=list(a.gpu_ids))
        await self.js.publish(
            subjects.job_event(a.job_id, "scheduled"), ev.encode(scheduled),
            headers={"Nats-Msg-Id": f"{a.job_id}:{a.attempt}:scheduled"},
        )
        start = StartJob(job_id=a.job_id, attempt=a.attempt, ts_s=ts,
                         spec=self.projector.needs[a.job_id].spec, gpu_ids=list(a.gpu_ids))
        await self.js.publish(
            subjects.cmd(a.host, "start"), ev.encode(start),
            headers={"Nats-Msg-Id": f"{a.job_id}:{a.attempt}:start"},
        )
