"""Walk every (status, event) pair of the transition table: legal ones land where the table
says, everything else raises IllegalTransition."""

from __future__ import annotations

import itertools

import pytest

from shared import events as ev
from shared.jobspec import CommandJob
from shared.jobstate import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    JobStatus,
    StaleAttempt,
    check,
    evolve,
    next_status,
)

J = "job_1"
SPEC = CommandJob(command=["true"])


def sample(event_type: type, attempt: int = 1, **extra) -> ev.JobEvent:
    base = dict(job_id=J, attempt=attempt, ts_s=1.0)
    fields = {
        ev.JobSubmitted: dict(spec=SPEC),
        ev.JobHeld: {},
        ev.JobReleased: {},
        ev.JobScheduled: dict(host="h", gpu_ids=[0]),
        ev.JobRefused: dict(host="h", reason="busy"),
        ev.JobStarted: dict(host="h", pid=1, run_dir="/r", stdout_path="/r/o", stderr_path="/r/e"),
        ev.JobStopRequested: {},
        ev.JobCancelled: dict(reason="x"),
        ev.JobExited: dict(outcome="failed", exit_code=1),
        ev.JobLost: dict(reason="gone"),
        ev.JobPreempted: dict(by="job_2", host="h"),
        ev.JobRetried: dict(
            resume_from="latest"
        ),  # allowed from every ended status (a plain retry: not from succeeded)
    }[event_type]
    return event_type(**base, **{**fields, **extra})


def state(status: JobStatus) -> JobState:
    return JobState(job_id=J, status=status, attempt=1, host="h")


LIFECYCLE_NO_SUBMIT = [t for t in ev.LIFECYCLE if t is not ev.JobSubmitted]


@pytest.mark.parametrize(("status", "event_type"), list(itertools.product(JobStatus, LIFECYCLE_NO_SUBMIT)))
def test_every_pair(status: JobStatus, event_type: type) -> None:
    event = sample(event_type)
    target = TRANSITIONS[status].get(event_type)
    if target is None:
        with pytest.raises(IllegalTransition) as err:
            evolve(state(status), event)
        assert status.value in str(err.value)
        return
    after = evolve(state(status), event)
    expected = JobStatus.FAILED if event_type is ev.JobExited else target
    assert after.status == expected


@pytest.mark.parametrize("status", list(JobStatus))
def test_submit_only_creates(status: JobStatus) -> None:
    with pytest.raises(IllegalTransition):
        evolve(state(status), sample(ev.JobSubmitted, attempt=0))


def test_submit_creates_queued_or_pending() -> None:
    assert evolve(None, sample(ev.JobSubmitted, attempt=0)).status is JobStatus.QUEUED
    held = ev.JobSubmitted(job_id=J, attempt=0, ts_s=1.0, spec=CommandJob(command=["x"], hold=True))
    assert evolve(None, held).status is JobStatus.PENDING


@pytest.mark.parametrize("event_type", LIFECYCLE_NO_SUBMIT)
def test_nothing_happens_to_an_unknown_job(event_type: type) -> None:
    with pytest.raises(IllegalTransition):
        evolve(None, sample(event_type))


def test_exit_outcome_decides_terminal_status() -> None:
    for outcome in ("succeeded", "failed", "stopped"):
        after = evolve(state(JobStatus.RUNNING), sample(ev.JobExited, outcome=outcome))
        assert after.status.value == outcome and after.is_terminal


def test_stale_attempt_is_fenced() -> None:
    running_2 = JobState(job_id=J, status=JobStatus.RUNNING, attempt=2, host="h")
    with pytest.raises(StaleAttempt):
        next_status(running_2, sample(ev.JobExited, attempt=1))


def test_full_life_keeps_facts() -> None:
    s = evolve(None, sample(ev.JobSubmitted, attempt=0))
    s = evolve(s, sample(ev.JobScheduled))
    assert (s.host, s.gpu_ids, s.attempt) == ("h", (0,), 1)
    s = evolve(s, sample(ev.JobStarted))
    assert s.pid == 1 and s.run_dir == "/r"
    s = evolve(s, sample(ev.JobExited, outcome="failed", exit_code=7, last_lines=["boom"]))
    assert (s.status, s.exit_code, s.last_lines) == (JobStatus.FAILED, 7, ("boom",))


def test_observations_do_not_move_state() -> None:
    s = state(JobStatus.RUNNING)
    assert evolve(s, ev.JobProgress(job_id=J, attempt=1, ts_s=2.0, step=3)) is s


def run_attempt(s: JobState, attempt: int) -> JobState:
    s = evolve(s, sample(ev.JobScheduled, attempt=attempt))
    return evolve(s, sample(ev.JobStarted, attempt=attempt))


def test_a_failed_attempt_is_retried_until_max_retries_is_used_up() -> None:
    s = evolve(None, ev.JobSubmitted(job_id=J, ts_s=0.0, spec=CommandJob(command=["x"], max_retries=2)))
    s = run_attempt(s, 1)
    s = evolve(s, sample(ev.JobExited, attempt=1, reason="exited with code 1", last_lines=["boom"]))
    assert (s.status, s.failures, s.host, s.gpu_ids) == (JobStatus.QUEUED, 1, None, ())
    assert s.reason == "attempt 1: exited with code 1; retry 1 of 2" and s.last_lines == ("boom",)
    s = run_attempt(s, 2)
    s = evolve(s, sample(ev.JobLost, attempt=2, reason="host h stopped heartbeating"))
    assert (s.status, s.failures) == (JobStatus.QUEUED, 2)
    s = run_attempt(s, 3)
    s = evolve(s, sample(ev.JobExited, attempt=3, reason="exited with code 1"))
    assert (s.status, s.attempt, s.failures) == (JobStatus.FAILED, 3, 2)


def test_a_stopped_or_succeeded_attempt_is_never_retried() -> None:
    s = evolve(None, ev.JobSubmitted(job_id=J, ts_s=0.0, spec=CommandJob(command=["x"], max_retries=3)))
    s = run_attempt(s, 1)
    done = evolve(s, sample(ev.JobExited, attempt=1, outcome="succeeded", exit_code=0))
    assert done.status is JobStatus.SUCCEEDED
    s = evolve(s, sample(ev.JobStopRequested, attempt=1))
    assert evolve(s, sample(ev.JobLost, attempt=1)).status is JobStatus.LOST
    assert evolve(s, sample(ev.JobExited, attempt=1)).status is JobStatus.FAILED


def test_a_report_from_an_attempt_that_was_retried_is_fenced() -> None:
    s = evolve(None, ev.JobSubmitted(job_id=J, ts_s=0.0, spec=CommandJob(command=["x"], max_retries=1)))
    s = run_attempt(s, 1)
    s = evolve(s, sample(ev.JobLost, attempt=1))
    s = run_attempt(s, 2)
    with pytest.raises(StaleAttempt):
        evolve(s, sample(ev.JobExited, attempt=1, outcome="succeeded", exit_code=0))


def test_rules_the_gateway_asks_before_publishing() -> None:
    """The gateway's 409s come from the table: each refusal in the rule's own words."""
    plain_retry = sample(ev.JobRetried, resume_from=None)
    with pytest.raises(IllegalTransition, match="succeeded; use resume"):
        check(state(JobStatus.SUCCEEDED), plain_retry)
    check(state(JobStatus.FAILED), plain_retry)
    with pytest.raises(IllegalTransition, match="only an ended job can be retried"):
        check(state(JobStatus.RUNNING), plain_retry)
    deleted = ev.JobDeleted(job_id=J, attempt=1, ts_s=1.0)
    with pytest.raises(IllegalTransition, match="stop it before deleting it"):
        check(state(JobStatus.RUNNING), deleted)
    for ended in TERMINAL:
        check(state(ended), deleted)
    with pytest.raises(IllegalTransition, match="already ended \\(stopped\\); nothing to stop"):
        check(state(JobStatus.STOPPED), sample(ev.JobStopRequested))
    with pytest.raises(IllegalTransition, match="not waiting in the queue"):
        check(state(JobStatus.RUNNING), sample(ev.JobCancelled))
