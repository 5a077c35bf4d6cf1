"""The job state machine: a pure `evolve(state, event) -> state` over a transition table.

The projector and the scheduler derive every job's status with it; the gateway asks `check`
before publishing a lifecycle event, so that an impossible request is refused (409, with the
rule's own words) instead of written. Every rule lives here, in TRANSITIONS and next_status.
"""

from __future__ import annotations

import enum

import msgspec

from shared import events as ev


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.LOST})
ON_HOST = frozenset({JobStatus.SCHEDULED, JobStatus.RUNNING, JobStatus.STOPPING})
ACTIVE = frozenset(JobStatus) - TERMINAL

S = JobStatus
# Marker: the target status is the outcome the event carries (JobExited).
FROM_OUTCOME = "from-outcome"
# Marker: the job leaves every view (JobDeleted); its status is what it was.
REMOVED = "removed"

# status -> {event type -> next status}. Anything not listed is illegal.
TRANSITIONS: dict[JobStatus, dict[type, JobStatus | str]] = {
    # A stop holds in whatever state it meets when it is applied (the stream orders it against
    # the scheduler's placement): before a start it ends the job, after one it stops the trainer.
    S.PENDING: {
        ev.JobReleased: S.QUEUED,
        ev.JobCancelled: S.STOPPED,
        ev.JobStopRequested: S.STOPPED,
    },
    S.QUEUED: {
        ev.JobHeld: S.PENDING,
        ev.JobScheduled: S.SCHEDULED,
        ev.JobCancelled: S.STOPPED,
        ev.JobStopRequested: S.STOPPED,
    },
    S.SCHEDULED: {
        ev.JobStarted: S.RUNNING,
        ev.JobRefused: S.QUEUED,
        ev.JobStopRequested: S.STOPPING,
        ev.JobExited: FROM_OUTCOME,  # e.g. the executable is missing on the host
        ev.JobLost: S.LOST,
    },
    S.RUNNING: {
        ev.JobStopRequested: S.STOPPING,
        ev.JobPreempted: S.STOPPING,  # its exit puts it back in the queue (next_status)
        ev.JobExited: FROM_OUTCOME,
        ev.JobLost: S.LOST,
    },
    S.STOPPING: {
        ev.JobStarted: S.STOPPING,  # the start raced the stop; the agent stops it at once
        ev.JobStopRequested: S.STOPPING,  # escalation: graceful, then force
        ev.JobRefused: S.STOPPED,
        ev.JobExited: FROM_OUTCOME,
        ev.JobLost: S.LOST,
    },
    # A succeeded job is retried only to resume: train further from a checkpoint (next_status).
    S.SUCCEEDED: {ev.JobRetried: S.QUEUED, ev.JobDeleted: REMOVED},
    S.FAILED: {ev.JobRetried: S.QUEUED, ev.JobDeleted: REMOVED},
    S.STOPPED: {ev.JobRetried: S.QUEUED, ev.JobDeleted: REMOVED},
    S.LOST: {ev.JobRetried: S.QUEUED, ev.JobDeleted: REMOVED},
}

# How a refusal reads, by event and by whether the job has ended; the default says the rule.
_REFUSALS: dict[tuple[type, bool], str] = {
    (ev.JobStopRequested, True): "already ended ({status}); nothing to stop",
    (ev.JobStopRequested, False): "is {status}; nothing to stop",
    (ev.JobCancelled, True): "already ended ({status}); it is not waiting in the queue",
    (ev.JobCancelled, False): "is {status}, not waiting in the queue; use POST /jobs/{job_id}/stop to stop it",
    (ev.JobReleased, True): "already ended ({status}); submit it again to rerun it",
    (ev.JobRetried, False): "is {status}; only an ended job can be retried",
    (ev.JobRetried, True): "{status}; use resume to train further from a checkpoint",
    (ev.JobDeleted, False): "is {status}; stop it before deleting it",
}

# Events an agent sends about one attempt; a stale attempt's report must not move a newer one.
ATTEMPT_BOUND = (ev.JobStarted, ev.JobRefused, ev.JobExited, ev.JobLost)


class JobStateError(Exception):
    """Base of the state machine's errors."""


class IllegalTransition(JobStateError):
    """The event cannot happen in the job's current status."""

    def __init__(self, status: JobStatus | None, event: msgspec.Struct) -> None:
        self.status = status
        self.event_type = ev.tag_of(type(event))
        template = _REFUSALS.get((type(event), status in TERMINAL)) if status is not None else None
        if status is not None and template is not None and isinstance(event, ev.JobEvent):
            message = f"job {event.job_id} " + template.format(status=status.value, job_id=event.job_id)
        else:
            message = f"'{self.event_type}' is not allowed when the job is {status.value if status else 'no job'}"
        super().__init__(message)


class StaleAttempt(IllegalTransition):
    """An agent reported on an attempt the job has already moved past."""

    def __init__(self, status: JobStatus, event: ev.JobEvent, current_attempt: int) -> None:
        super().__init__(status, event)
        self.args = (
            f"'{self.event_type}' for attempt {event.attempt} ignored: the job is on attempt "
            f"{current_attempt}",
        )


class JobState(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus
    attempt: int = 0
    host: str | None = None
    gpu_ids: tuple[int, ...] = ()
    submitted_s: float = 0.0
    started_s: float | None = None
    finished_s: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    stop_requested: bool = False
    pid: int | None = None
    run_dir: str | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None
    last_lines: tuple[str, ...] = ()
    changed_s: float = 0.0  # time of the last lifecycle event applied
    max_retries: int = 0
    failures: int = 0  # attempts that failed or were lost; each one retried uses one of max_retries
    retry_backoff_s: float = 10.0  # the job's; the wait before an automatic retry doubles each time
    # Set when a failed or lost attempt put the job back in the queue: not placed before then.
    retry_after_s: float | None = None
    # The latest stop asked for (the scheduler repeats it to the host of a stopping job).
    stop_force: bool = False
    stop_grace_s: float = 30.0
    # The last agent refusal: the scheduler avoids that host for a moment (not projected).
    refused_host: str | None = None
    refused_s: float | None = None
    resume_from: str | None = None  # what the next attempt starts from (set by retry/resume)
    # Preemption: the job whose start stops this attempt (until the attempt ends), and how many
    # attempts were preempted so far (at most the spec's max_preemptions).
    preempted_by: str | None = None
    preemptions: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


def initial(event: ev.JobSubmitted) -> JobState:
    return JobState(
        job_id=event.job_id,
        status=JobStatus.PENDING if event.spec.hold else JobStatus.QUEUED,
        submitted_s=event.ts_s,
        changed_s=event.ts_s,
        max_retries=event.spec.max_retries,
        retry_backoff_s=event.spec.retry_backoff_s,
    )


RETRY_BACKOFF_CAP_S = 3600.0
# How an automatic retry's reason begins (evolve writes it; a restarted projector reads it).
AUTO_RETRY_REASON = "attempt "
PREEMPTED_REASON = "preempted by "


def retry_wait_s(backoff_s: float, failures: int) -> float:
    """The wait before the retry that follows the `failures`-th failed or lost attempt."""
    return min(RETRY_BACKOFF_CAP_S, backoff_s * 2.0 ** max(0, failures - 1))


def _retries(state: JobState, target: JobStatus) -> bool:
    """A failed or lost attempt goes back to the queue while retries remain (not when the user
    asked it to stop)."""
    return (
        target in (JobStatus.FAILED, JobStatus.LOST)
        and not state.stop_requested
        and state.failures < state.max_retries
    )


def _requeued_by_preemption(state: JobState, event: ev.JobEvent) -> bool:
    """A preempted attempt's end puts the job back in the queue, without using a retry, unless
    it finished its training meanwhile or the user asked it to stop."""
    return (isinstance(event, ev.JobExited) and state.preempted_by is not None
            and not state.stop_requested and event.outcome != "succeeded")


def next_status(state: JobState | None, event: ev.JobEvent) -> JobStatus:
    """The status `event` leads to, or IllegalTransition. Pure; touches nothing."""
    if isinstance(event, ev.JobSubmitted):
        if state is not None:
            raise IllegalTransition(state.status, event)
        return initial(event).status
    if state is None:
        raise IllegalTransition(None, event)
    target = TRANSITIONS[state.status].get(type(event))
    if target is None:
        raise IllegalTransition(state.status, event)
    if isinstance(event, ATTEMPT_BOUND) and event.attempt != state.attempt:
        raise StaleAttempt(state.status, event, state.attempt)
    if isinstance(event, ev.JobRetried) and state.status is S.SUCCEEDED and event.resume_from is None:
        raise IllegalTransition(state.status, event)
    if target == REMOVED:
        return state.status
    if target == FROM_OUTCOME:
        assert isinstance(event, ev.JobExited)
        if _requeued_by_preemption(state, event):
            return JobStatus.QUEUED
        target = JobStatus(event.outcome)
    if _retries(state, JobStatus(target)):
        return JobStatus.QUEUED
    return JobStatus(target)


def check(state: JobState | None, event: ev.JobEvent) -> None:
    """IllegalTransition if `event` cannot happen to a job in `state` (what the gateway asks
    before it publishes one); nothing otherwise."""
    next_status(state, event)


def evolve(state: JobState | None, event: ev.JobEvent) -> JobState:
    """Apply one lifecycle event. Observations (progress, metrics, logs) leave state alone."""
    if not isinstance(event, ev.LIFECYCLE):
        if state is None:
            raise IllegalTransition(None, event)
        return state
    status = next_status(state, event)
    if isinstance(event, ev.JobSubmitted):
        return initial(event)
    assert state is not None
    state = msgspec.structs.replace(state, changed_s=event.ts_s)
    replace = msgspec.structs.replace
    match event:
        case ev.JobScheduled(host=host, gpu_ids=gpu_ids, attempt=attempt):
            return replace(
                state, status=status, host=host, gpu_ids=tuple(gpu_ids), attempt=attempt,
                reason="", stop_requested=False, pid=None, run_dir=None, exit_code=None,
                signal=None, started_s=None, finished_s=None, last_lines=(), retry_after_s=None,
                preempted_by=None,
            )
        case ev.JobRefused(reason=reason, host=host, ts_s=ts):
            return replace(state, status=status, host=None, gpu_ids=(), reason=reason,
                           refused_host=host, refused_s=ts)
        case ev.JobStarted(ts_s=ts, pid=pid, run_dir=run_dir):
            return replace(
                state, status=status, started_s=ts, pid=pid, run_dir=run_dir,
                stdout_path=event.stdout_path, stderr_path=event.stderr_path,
            )
        case ev.JobStopRequested(force=force, grace_s=grace_s, ts_s=ts) if status is JobStatus.STOPPED:
            return replace(state, status=status, stop_requested=True, stop_force=force, stop_grace_s=grace_s,
                           reason=f"stopped by {event.requested_by or 'request'} before it started", finished_s=ts)
        case ev.JobStopRequested(force=force, grace_s=grace_s):
            return replace(state, status=status, stop_requested=True, stop_force=force, stop_grace_s=grace_s)
        case ev.JobPreempted(by=by, grace_s=grace_s, reason=reason):
            return replace(state, status=status, preempted_by=by, stop_force=False, stop_grace_s=grace_s,
                           reason=reason or f"preempted by {by}: saving and stopping")
        case ev.JobExited(checkpoint=checkpoint) if _requeued_by_preemption(state, event):
            resume = checkpoint or state.resume_from
            count = state.preemptions + 1
            return replace(
                state, status=status, host=None, gpu_ids=(), preempted_by=None, preemptions=count,
                resume_from=resume, retry_after_s=None, exit_code=event.exit_code, signal=event.signal,
                reason=(f"{PREEMPTED_REASON}{state.preempted_by} (preemption {count}); back in the queue, "
                        + (f"resumes from {resume}" if resume else "no checkpoint saved: starts over")),
            )
        case ev.JobExited(reason=reason) | ev.JobLost(reason=reason) if status is JobStatus.QUEUED:
            failures = state.failures + 1
            return replace(
                state, status=status, host=None, gpu_ids=(), failures=failures,
                retry_after_s=event.ts_s + retry_wait_s(state.retry_backoff_s, failures),
                reason=f"{AUTO_RETRY_REASON}{state.attempt}: {reason}; retry {failures} of {state.max_retries}",
                last_lines=tuple(event.last_lines) if isinstance(event, ev.JobExited) else state.last_lines,
                exit_code=event.exit_code if isinstance(event, ev.JobExited) else None,
                signal=event.signal if isinstance(event, ev.JobExited) else None,
            )
        case ev.JobExited(exit_code=code, signal=sig, reason=reason, ts_s=ts):
            return replace(
                state, status=status, exit_code=code, signal=sig, reason=reason, finished_s=ts,
                last_lines=tuple(event.last_lines), preempted_by=None,
            )
        case ev.JobRetried(resume_from=resume_from):
            return replace(state, status=status, host=None, gpu_ids=(), stop_requested=False,
                           resume_from=resume_from, retry_after_s=None, preempted_by=None,
                           reason=f"retried by request{f', resuming from {resume_from}' if resume_from else ''}")
        case ev.JobCancelled(reason=reason, ts_s=ts) | ev.JobLost(reason=reason, ts_s=ts):
            return replace(state, status=status, reason=reason, finished_s=ts)
        case _:
            return replace(state, status=status)
