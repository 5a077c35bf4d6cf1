"""The service layer: what every route set (main API, seed compatibility, CLI) calls.

Writes become events on JetStream; the service then waits (briefly) until the projector shows
them, so a client that submits and immediately reads sees its own write.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import msgspec

from gateway import schemas as views
from gateway.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidField,
    NotFound,
    job_not_found,
    refuse_unless_allowed,
)
from gateway.projection.projector import Projector
from gateway.read.queries import LogFilter, Reader
from gateway.scheduling.scheduler import LeaderUnavailable, Scheduler
from gateway.services.arrays import ArrayJobs, refuse_array_fields
from gateway.services.cache import VersionedCache
from gateway.services.cluster import ClusterService
from gateway.services.lookup import shown_state
from gateway.services.redaction import may_see_secrets, redacted_spec
from gateway.services.submission import PathChecks, check_request, decode_job_request
from gateway.services.workdirs import Workdirs
from gateway.webhook_policy import Unresolvable, WebhookPolicy, WebhookRefused
from gateway.writer import EventWriter
from shared import events as ev
from shared import subjects, wire
from shared.clock import now_s
from shared.commands import ExportJob, StopJob
from shared.ids import new_job_id
from shared.jobspec import JobRequest, SwiftJob
from shared.jobstate import JobState, JobStatus
from shared.watch import WatchPolicy

MAX_BODY_BYTES = 1024 * 1024


def _checkpoint_named(job_id: str, name: str, saved: list[dict]) -> dict:
    """The checkpoint `name` (a path or a directory name) among `saved`, or 404 listing them."""
    for c in saved:
        if name in (c["path"], os.path.basename(c["path"])):
            return c
    have = ", ".join(sorted({os.path.basename(c["path"]) for c in saved})) or "none"
    raise NotFound(f"job {job_id} has no checkpoint {name!r}; it has: {have}")


def _submitted_words(job_id: str, state: JobState | None, position: int | None) -> str:
    """What became of a job just submitted, in words that agree with its status."""
    if state is None or state.status is JobStatus.QUEUED:
        return f"job queued at position {position}" if position else "job queued"
    if state.status is JobStatus.PENDING:
        return f"job accepted and held: POST /jobs/{job_id}/start releases it"
    if state.status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
        return f"job accepted; starting on {state.host}" if state.host else "job accepted; starting"
    return f"job accepted, but it is {state.status.value} already" + (f": {state.reason}" if state.reason else "")


def _wait_words(seconds: float | None, paused: bool) -> str:
    """Seed 002's `estimated_wait_time`, in words."""
    if paused:
        return "unknown: the queue processor is stopped (POST /queue/processor/start resumes it)"
    if seconds is None:
        return ("unknown: the jobs it waits for report no ETA, and its trainer has no finished runs to "
                "go by yet")
    if seconds < 90:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.0f} min" if seconds < 5400 else f"about {seconds / 3600:.1f} h"


class JobService(ArrayJobs):
    def __init__(self, writer: EventWriter, projector: Projector, scheduler: Scheduler,
                 cluster: ClusterService, reader: Reader, *, allowed_roots: list[str],
                 webhook_policy: WebhookPolicy, ryw_timeout_s: float,
                 watch: WatchPolicy | None = None, workdirs: Workdirs | None = None) -> None:
        self.writer = writer
        self.projector = projector
        self.scheduler = scheduler
        self.cluster = cluster
        self.reader = reader
        self.paths = PathChecks(allowed_roots)
        self.webhook_policy = webhook_policy
        self.ryw_timeout_s = ryw_timeout_s
        self.watch = watch or WatchPolicy()  # fills the watch fields a job leaves out
        self.workdirs = workdirs
        self._details: VersionedCache[views.JobDetail] = VersionedCache()
        self._lists: VersionedCache[views.JobList] = VersionedCache(256)

    # ---- writes ------------------------------------------------------------------------------
    def _refuse_if_pinned_gpus_busy(self, spec: JobRequest) -> None:
        """`if_busy: reject` with pinned GPUs: 409 now instead of waiting (seed 000's way)."""
        if spec.if_busy != "reject" or not spec.gpu_ids:
            return
        _, hosts = self.scheduler.snapshot()
        candidates = [h for h in hosts.values() if spec.host in (None, h.host)]
        if not candidates:
            raise Conflict(f"GPUs {spec.gpu_ids} requested with if_busy=reject, but "
                           f"{'host ' + spec.host if spec.host else 'no host'} is online")
        for view in candidates:
            if set(spec.gpu_ids) <= set(view.gpu_memory_mb) and not set(spec.gpu_ids) & view.busy:
                return
        busy = sorted({(h.host, g) for h in candidates for g in spec.gpu_ids if g in h.busy})
        where = ", ".join(f"GPU {g} on {h}" for h, g in busy) or "the GPUs do not exist there"
        raise Conflict(f"requested GPUs are busy ({where}) and if_busy is 'reject'")

    async def submit(self, body: bytes, *, role: str, user: str = "") -> views.SubmitResponse:
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest("body too large")
        spec = decode_job_request(body)
        check_request(spec, role)
        refuse_array_fields(spec)
        if spec.webhook_url:
            await self._check_webhook(spec.webhook_url)
        self._check_dependencies(spec)
        if spec.workdir and self.workdirs is not None:
            await self.workdirs.require(spec.workdir)
        if spec.array is not None or spec.sweep:
            return await self._submit_array(spec, role, user)
        spec = self.watch.filled_in(self.paths.check(spec))
        self._refuse_if_pinned_gpus_busy(spec)
        job_id = new_job_id()
        event = ev.JobSubmitted(job_id=job_id, attempt=0, ts_s=now_s(), spec=spec, submitted_by=user)
        await self.writer.publish_and_wait(event)
        state = self.projector.live_states.get(job_id)
        status = state.status.value if state else "queued"
        position = self.scheduler.queue_position(job_id) if status == "queued" else None
        wait = (await self.cluster.estimated_waits()).get(job_id) if position else None
        return views.SubmitResponse(
            job_id=job_id, status=status, queue_position=position, estimated_wait_s=wait,
            estimated_wait_time=_wait_words(wait, self.scheduler.paused) if position else None,
            message=_submitted_words(job_id, state, position),
        )

    def _check_dependencies(self, spec: JobRequest) -> None:
        """A job may wait only for jobs that exist (so no cycle can form), each named once."""
        for i, dep in enumerate(spec.depends_on):
            if dep not in self.projector.live_states:
                raise InvalidField(f"depends_on[{i}]: no job {dep}", field=f"depends_on[{i}]")
            if dep in spec.depends_on[:i]:
                raise InvalidField(f"depends_on[{i}]: {dep} is named twice", field=f"depends_on[{i}]")

    async def stop(self, job_id: str, *, force: bool, grace_s: float | None, user: str = "") -> views.StopResponse:
        state = self.state(job_id)
        placed = self.scheduler.placement(job_id)
        grace = grace_s if grace_s is not None else self.projector.needs[job_id].spec.stop_grace_s
        ts = now_s()
        attempt = placed.attempt if placed else state.attempt
        request = ev.JobStopRequested(job_id=job_id, attempt=attempt, ts_s=ts, force=force,
                                      grace_s=grace, requested_by=user)
        refuse_unless_allowed(self.scheduler.as_placed(state), request)
        # One stop, resolved where the order is known: the projector applies it to whatever state
        # it meets in the stream (before a start it ends the job, after one the job is stopping,
        # and the leading scheduler makes sure the host hears it). A view that was stale when
        # this request looked cannot lose it; a job that ended first makes it a 409.
        nonce = wire.nonce()
        await self.writer.publish_checked(request, unique=nonce)
        now = self.projector.live_states.get(job_id)
        if now is not None and now.status is JobStatus.STOPPING and now.host is not None:
            command = StopJob(job_id=job_id, attempt=now.attempt, ts_s=ts, force=force, grace_s=grace)
            await self.writer.publish(command, host=now.host, unique=nonce)  # at once, not at the next pass
            moving = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING)
            try:
                await self.projector.wait_until(lambda: self.state(job_id).status not in moving,
                                                self.ryw_timeout_s)
            except TimeoutError:
                pass
        now = self.state(job_id)
        if now.status is JobStatus.STOPPING:
            message = "force stop sent" if force else f"stop sent (SIGKILL after {grace:g}s)"
        else:
            message = now.reason or f"it is {now.status.value}"
        return views.StopResponse(job_id=job_id, status=now.status.value, message=message)

    async def _check_webhook(self, url: str) -> None:
        """422 for a webhook that leads inside the network; a host that does not resolve now is
        let through (each delivery checks again, and connects only to what it checked)."""
        try:
            await self.webhook_policy.addresses(url)
        except Unresolvable:
            return
        except WebhookRefused as exc:
            raise InvalidField(f"webhook_url {exc}", field="webhook_url") from None

    def check_owner(self, job_id: str, role: str, user: str) -> None:
        """Operators act on their own jobs; admins on any (DESIGN §10)."""
        self.state(job_id)
        owner = self._owner(job_id)
        if role != "admin" and owner != user:
            raise Forbidden(f"job {job_id} was submitted by {owner or 'someone else'}; "
                            f"an operator acts on their own jobs only")

    # ---- reads -------------------------------------------------------------------------------
    def state(self, job_id: str) -> JobState:
        return shown_state(self.projector, job_id)

    def status_view(self, job_id: str) -> views.JobStatusView:
        s = self.state(job_id)
        return views.JobStatusView(
            job_id=job_id, status=s.status.value, attempt=s.attempt, host=s.host,
            gpu_ids=list(s.gpu_ids), exit_code=s.exit_code, signal=s.signal, reason=s.reason,
            started_s=s.started_s, finished_s=s.finished_s,
            queue_position=self.scheduler.queue_position(job_id) if s.status is JobStatus.QUEUED else None,
            waiting_reason=self.scheduler.preview()[1].get(job_id) if s.status is JobStatus.QUEUED else None,
        )

    async def progress(self, job_id: str) -> views.ProgressView:
        s = self.state(job_id)
        stored = await self.reader.progress(job_id)
        latest = await self.reader.latest_metrics(job_id, s.attempt)
        if stored is None or stored[0] != s.attempt:
            return views.ProgressView(job_id=job_id, status=s.status.value, attempt=s.attempt,
                                      latest_metrics=latest)
        attempt, updated_s, reading = stored
        return views.ProgressView(job_id=job_id, status=s.status.value, attempt=attempt, updated_s=updated_s,
                                  latest_metrics=latest, **msgspec.structs.asdict(reading))

    async def detail(self, job_id: str, *, role: str, user: str) -> views.JobDetail:
        """The job's detail; its request's secrets redacted unless the caller submitted it or is
        an admin."""
        self.state(job_id)
        version = self.projector.job_versions.get(job_id, 0)
        detail = await self._details.get(job_id, version, lambda: self._detail(job_id))
        if (mean := self.projector.gpu_utilisation_mean(job_id)) != detail.gpu_utilization_mean_pct:
            detail = msgspec.structs.replace(detail, gpu_utilization_mean_pct=mean)  # (samples move on their own)
        if self._may_see_secrets(job_id, role, user):
            return detail
        return msgspec.structs.replace(detail, spec=redacted_spec(detail.spec))

    async def events(self, job_id: str, limit: int, after_seq: int | None, *, role: str,
                     user: str) -> list[views.EventView]:
        """The job's events; the request inside its `submitted` event redacted as in `detail`."""
        self.state(job_id)
        events = await self.reader.events(job_id, limit, after_seq)
        if self._may_see_secrets(job_id, role, user):
            return events
        return [msgspec.structs.replace(e, data={**e.data, "spec": redacted_spec(e.data["spec"])})
                if isinstance(e.data, dict) and isinstance(e.data.get("spec"), dict) else e for e in events]

    def _may_see_secrets(self, job_id: str, role: str, user: str) -> bool:
        return may_see_secrets(role, user, self._owner(job_id))

    def _owner(self, job_id: str) -> str:
        """Who submitted the job (its token's name); "" if unknown."""
        needs = self.projector.needs.get(job_id)
        return needs.submitted_by if needs else ""

    async def logs(self, job_id: str, chosen: LogFilter, *, tail: int | None, limit: int) -> list[views.LogLine]:
        """A page of the job's log (Reader.logs), told where its log ends so a tail is quick."""
        return await self.reader.logs(job_id, chosen, tail=tail, limit=limit, latest=self._log_end(job_id))

    def log_text(self, job_id: str, chosen: LogFilter, tail: int | None) -> AsyncIterator[bytes]:
        """The job's log as text (Reader.log_text), told where its log ends so a tail is quick."""
        return self.reader.log_text(job_id, chosen, tail, latest=self._log_end(job_id))

    def _log_end(self, job_id: str) -> tuple[int, int]:
        """(the job's attempt, its last line in DuckDB)."""
        attempt = self.state(job_id).attempt
        return attempt, self.projector.live_logs.stored_through(job_id, attempt)

    async def list_jobs(self, **filters: object) -> views.JobList:
        """A list page; the same page is computed once per change of the job stream."""
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in filters.items()))
        version = self.projector.applied[subjects.JOB_STREAM]
        return await self._lists.get(key, version, lambda: self._list_page(filters))

    async def _list_page(self, filters: dict[str, object]) -> views.JobList:
        page = await self.reader.list_jobs(**filters)  # type: ignore[arg-type]
        anomalies, percent, latest = self.projector.anomalies, self.projector.percent, self.projector.latest_progress
        for i, job in enumerate(page.jobs):
            found = anomalies.get(job.job_id)
            progress = latest.get(job.job_id)
            page.jobs[i] = msgspec.structs.replace(
                job, anomaly_kinds=sorted({a.kind for a in found}) if found else [],
                percent=progress.percent if progress is not None else percent.get(job.job_id),
                eta_s=progress.eta_s if progress is not None and job.status == "running" else None)
        return page

    async def _detail(self, job_id: str) -> views.JobDetail:
        job = await self.reader.job_detail_rows(job_id)
        if job is None:
            raise job_not_found(job_id, self.projector.catching_up())
        progress = await self.progress(job_id)
        anomalies = self.projector.anomalies.get(job_id, [])
        return views.JobDetail(
            job_id=job_id, name=job["name"] or "", description=job["description"] or "",
            trainer=job["trainer"], status=job["status"], priority=job["priority"], gpus=job["gpus"],
            attempt=job["attempt"], host=job["host"], gpu_ids=list(job["gpu_ids"] or []),
            submitted_s=job["submitted_s"], started_s=job["started_s"], finished_s=job["finished_s"],
            exit_code=job["exit_code"], signal=job["signal"], reason=job["reason"] or "",
            submitted_by=job["submitted_by"] or "",
            last_lines=list(job["last_lines"] or []), pid=job["pid"], run_dir=job["run_dir"],
            stdout_path=job["stdout_path"], stderr_path=job["stderr_path"],
            spec=msgspec.json.decode(job["spec"]), status_history=job["history"],
            progress=progress, checkpoints=job["checkpoints"], exports=job["exports"],
            anomaly_kinds=sorted({a.kind for a in anomalies}), anomalies=[msgspec.to_builtins(a) for a in anomalies],
            preemptions=job["preemptions"] or 0, resume_from=job["resume_from"],
        )

    async def delete(self, job_id: str, *, user: str = "") -> None:
        """Remove an ended job from every view; its events stay (the history is auditable)."""
        state = self.state(job_id)
        event = ev.JobDeleted(job_id=job_id, attempt=state.attempt, ts_s=now_s(), requested_by=user)
        refuse_unless_allowed(state, event)
        await self.writer.publish_and_wait(event)

    async def start(self, job_id: str, *, user: str = "") -> views.StopResponse:
        """Seed 002's `start`: release a held job; a queued one is placed as soon as GPUs allow
        (this asks for a scheduling pass now); one already placed or running is left alone."""
        state = self.state(job_id)
        if state.status is JobStatus.PENDING or state.is_terminal:
            event = ev.JobReleased(job_id=job_id, attempt=state.attempt, ts_s=now_s())
            refuse_unless_allowed(state, event)
            await self.writer.publish_and_wait(event, unique=wire.nonce())
            message = "released into the queue"
        elif state.status is JobStatus.QUEUED:
            message = "queued; it starts as soon as the GPUs it needs are free"
        else:
            message = f"already {state.status.value}"
        if self.state(job_id).status is JobStatus.QUEUED:
            try:
                await self.scheduler.process_now()
            except LeaderUnavailable:
                pass  # the leader's next pass places it
        return views.StopResponse(job_id=job_id, status=self.state(job_id).status.value, message=message)

    async def retry(self, job_id: str, *, resume_from: str | None = None, user: str = "") -> views.StopResponse:
        """An ended job back to the queue for a new attempt (its history stays)."""
        state = self.state(job_id)
        event = ev.JobRetried(job_id=job_id, attempt=state.attempt, ts_s=now_s(), resume_from=resume_from,
                              requested_by=user)
        refuse_unless_allowed(state, event)
        await self.writer.publish_and_wait(event, unique=wire.nonce())
        now = self.state(job_id)
        verb = f"resuming from {resume_from}" if resume_from else "retrying"
        return views.StopResponse(job_id=job_id, status=now.status.value, message=f"{verb} as a new attempt")

    async def resume(self, job_id: str, checkpoint: str | None, *, user: str = "") -> views.StopResponse:
        """A new attempt that starts from a checkpoint: the latest, or the one named (by path or
        name, from any attempt)."""
        self.state(job_id)
        detail = await self.reader.job_detail_rows(job_id)
        saved = detail["checkpoints"] if detail else []
        if not saved:
            raise Conflict(f"job {job_id} saved no checkpoint to resume from")
        # The latest is named by its path, as any other: the trainer (a command or hf script
        # reading TRAINYARD_RESUME_FROM) is given a checkpoint it can open, never "latest".
        chosen = saved[-1] if checkpoint is None else _checkpoint_named(job_id, checkpoint, saved)
        return await self.retry(job_id, resume_from=chosen["path"], user=user)

    async def checkpoints(self, job_id: str) -> list[dict]:
        self.state(job_id)
        detail = await self.reader.job_detail_rows(job_id)
        return detail["checkpoints"] if detail else []

    async def export(self, job_id: str, checkpoint: str | None, *, user: str = "") -> views.ExportResponse:
        """The job's export step, tracked like the job: swift merges the LoRA of a checkpoint
        (the latest, unless one is named) into the base model, on the host that holds it."""
        state = self.state(job_id)
        spec = self.projector.needs[job_id].spec
        if not isinstance(spec, SwiftJob):
            raise BadRequest(f"job {job_id} is a {spec.trainer} job; only swift jobs have an export step",
                             field="trainer")
        if not state.is_terminal:
            raise Conflict(f"job {job_id} is {state.status.value}; export it once it has ended")
        detail = await self.reader.job_detail_rows(job_id)
        assert detail is not None
        if any(e["status"] == "running" for e in detail["exports"]):
            raise Conflict(f"an export of job {job_id} is already running")
        saved = [c for c in detail["checkpoints"] if c["attempt"] == state.attempt]
        if checkpoint is not None:
            chosen = _checkpoint_named(job_id, checkpoint, saved)
        elif saved:
            chosen = max(saved, key=lambda c: (c["step"] or -1, c["ts_s"]))
        else:
            raise Conflict(f"job {job_id} saved no checkpoint to export")
        if state.host is None:
            raise Conflict(f"job {job_id} never ran on a host")
        done = [e for e in detail["exports"] if e["checkpoint"] == chosen["path"] and e["status"] == "succeeded"]
        if done:  # swift would fail on the existing directory; say so now rather than later
            raise Conflict(f"checkpoint {chosen['path']} of job {job_id} is exported already, to {done[-1]['path']}")
        export_id = f"exp_{wire.nonce():x}"
        requested = ev.ExportRequested(job_id=job_id, attempt=state.attempt, ts_s=now_s(), export_id=export_id,
                                       host=state.host, checkpoint=chosen["path"], requested_by=user)
        await self.writer.publish_and_wait(requested, unique=export_id)
        command = ExportJob(job_id=job_id, attempt=state.attempt, ts_s=requested.ts_s,
                            export_id=export_id, spec=spec, checkpoint=chosen["path"])
        await self.writer.publish(command, host=state.host, unique=export_id)
        return views.ExportResponse(job_id=job_id, export_id=export_id, status="running",
                                    checkpoint=chosen["path"], host=state.host,
                                    message=f"exporting {os.path.basename(chosen['path'])} on {state.host}")
